async def test_inline_execute_python(client) -> None:
    r = await client.post("/v1/sandbox/execute", json={"code": "print(6*7)"})
    assert r.status_code == 200
    body = r.json()
    assert body["stdout"] == "42\n" and body["success"] is True and body["exit_code"] == 0
