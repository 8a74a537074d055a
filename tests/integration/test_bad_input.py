"""Bad input of any shape, on every JSON endpoint: a 4xx in the API's error format, never a 5xx.

test_api_validation.py has every field rule of the execute body; this is about bodies that are
not JSON objects at all, or are JSON no validator should have to walk: bytes that are not
UTF-8, nesting thousands deep, numbers Python cannot hold, the wrong Content-Type, and bodies
over the size limit, which are refused by their announced length before a byte is read.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

#: Every endpoint that takes a JSON body, with a body it would accept.
JSON_ENDPOINTS = [
    pytest.param("POST", "/v1/sandbox/execute", {"code": "print(1)"}, id="execute"),
    pytest.param("POST", "/v1/files/list", {"id": "t"}, id="files-list"),
    pytest.param(
        "POST",
        "/v1/files/upload_url",
        {"id": "t", "path": "a", "content_length": 1},
        id="upload-url",
    ),
    pytest.param("POST", "/v1/files/download_url", {"id": "t", "path": "a"}, id="download-url"),
    pytest.param("DELETE", "/v1/files", {"id": "t", "path": "a"}, id="files-delete"),
]

#: The integer field of each body (the others have none: their id gets the number).
NUMBER_FIELDS = {"/v1/sandbox/execute": "timeout", "/v1/files/upload_url": "content_length"}


def assert_error(r: httpx.Response, status: int, code: str, *message_parts: str) -> str:
    assert r.status_code == status, r.text[:300]
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert isinstance(body, dict) and set(body) == {"error", "message"}, body
    assert body["error"] == code
    for part in message_parts:
        assert part.lower() in body["message"].lower(), body["message"]
    return body["message"]  # type: ignore[no-any-return]


async def send(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    content: bytes,
    content_type: str | None = "application/json",
) -> httpx.Response:
    headers = {"Content-Type": content_type} if content_type else {}
    return await client.request(method, path, content=content, headers=headers)


@pytest.mark.parametrize(("method", "path", "valid"), JSON_ENDPOINTS)
async def test_body_that_is_not_utf8(
    client: httpx.AsyncClient, method: str, path: str, valid: dict[str, Any]
) -> None:
    good = json.dumps(valid).encode()
    for raw in (
        good.replace(b'"t"', b'"t\xff"').replace(b'"print(1)"', b'"print(\xfe\xff)"'),
        b'{"id": "\xc3\x28"}',
        b"\x80",
    ):
        assert_error(await send(client, method, path, raw), 400, "validation_error", "UTF-8")


@pytest.mark.parametrize(("method", "path", "valid"), JSON_ENDPOINTS)
@pytest.mark.parametrize("depth", [100, 500, 990, 5000, 200_000])
async def test_deeply_nested_json(
    client: httpx.AsyncClient, method: str, path: str, valid: dict[str, Any], depth: int
) -> None:
    """Nested arrays in the first field, then as the whole body: refused, whatever the depth."""
    field = next(iter(valid))
    nested = b"[" * depth + b"]" * depth
    inside = json.dumps({**valid, field: None}).encode().replace(b"null", nested, 1)
    message = assert_error(await send(client, method, path, inside), 400, "validation_error")
    assert field in message or "nested too deeply" in message, message
    assert_error(await send(client, method, path, nested), 400, "validation_error")


async def test_deep_values_in_every_execute_field(client: httpx.AsyncClient) -> None:
    """Each execute field is walked before it is type-checked (for lone surrogates)."""
    for field in ("metadata", "sub_paths", "env_vars", "thread_id", "timeout", "language"):
        deep: Any = ["x"]
        for _ in range(900):
            deep = [deep]
        r = await client.post("/v1/sandbox/execute", json={"code": "print(1)", field: deep})
        assert_error(r, 400, "validation_error", field)
        r = await client.post("/v1/sandbox/execute", json={"code": "print(1)", field: {"A": deep}})
        assert_error(r, 400, "validation_error", field)


@pytest.mark.parametrize(("method", "path", "valid"), JSON_ENDPOINTS)
@pytest.mark.parametrize(
    "number", [b"NaN", b"Infinity", b"-Infinity", b"1e999", b"9" * 5000, b"-1e308"]
)
async def test_numbers_no_field_takes(
    client: httpx.AsyncClient, method: str, path: str, valid: dict[str, Any], number: bytes
) -> None:
    """Tokens Python's json reads as floats (NaN, inf) or cannot read (over 4300 digits)."""
    field = NUMBER_FIELDS.get(path, "id")
    body = json.dumps({**valid, field: None}).encode().replace(b"null", number)
    assert_error(await send(client, method, path, body), 400, "validation_error")


@pytest.mark.parametrize(("method", "path", "valid"), JSON_ENDPOINTS)
@pytest.mark.parametrize(
    "content_type",
    [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/xml",
        "application/octet-stream",
        "application/jsonx",
        None,
    ],
)
async def test_wrong_content_type(
    client: httpx.AsyncClient,
    method: str,
    path: str,
    valid: dict[str, Any],
    content_type: str | None,
) -> None:
    r = await send(client, method, path, json.dumps(valid).encode(), content_type)
    assert_error(r, 400, "validation_error", "Content-Type: application/json")


async def test_json_content_types_are_accepted(client: httpx.AsyncClient) -> None:
    for content_type in (
        "application/json",
        "application/json; charset=utf-8",
        "application/vnd.api+json",
    ):
        r = await send(client, "POST", "/v1/sandbox/execute", b'{"code": "print(7)"}', content_type)
        assert r.status_code == 200 and r.json()["stdout"] == "7\n", r.text


async def _raw_request(
    url: str, head: str, body: bytes = b"", timeout: float = 10
) -> tuple[int, bytes]:
    """One request on a fresh socket; the status and body of the answer, read until it closes."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head.encode() + body)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
    status_line, _, rest = answer.partition(b"\r\n")
    return int(status_line.split()[1]), rest.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize(("method", "path", "valid"), JSON_ENDPOINTS)
async def test_huge_body_is_refused_by_its_length_before_it_is_read(
    server: Any, api_key: str, method: str, path: str, valid: dict[str, Any]
) -> None:
    """A Content-Length of 1 TB and no body at all: the 413 comes at once, nothing is awaited."""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {10**12}\r\nConnection: close\r\n\r\n"
    )
    status, raw = await _raw_request(server.url, head, timeout=10)
    body = json.loads(raw)
    assert status == 413 and set(body) == {"error", "message"}, body
    assert body["error"] == "payload_too_large" and "exceeds" in body["message"]


@pytest.mark.parametrize(("method", "path", "valid"), JSON_ENDPOINTS)
async def test_huge_streamed_body_is_refused_while_it_streams(
    client: httpx.AsyncClient, method: str, path: str, valid: dict[str, Any]
) -> None:
    """No Content-Length: the limit (8 MiB by default) is counted as the chunks arrive."""

    async def chunks() -> Any:
        yield b'{"id": "'
        for _ in range(64):  # 64 MiB: never buffered, never parsed
            yield b"x" * (1024 * 1024)
        yield b'"}'

    r = await client.request(
        method, path, content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert_error(r, 413, "payload_too_large", "exceeds")


async def test_after_seq_out_of_range(client: httpx.AsyncClient) -> None:
    """An after_seq past any seq an event can have is a 400, not a database overflow."""
    r = await client.post("/v1/sandbox/execute", json={"code": "print(1)"})
    trace_id = r.json()["trace_id"]
    for after in ("-1", "2147483648", "9223372036854775808", "99999999999999999999999", "1.5", "x"):
        r = await client.get(f"/v1/executions/{trace_id}/output", params={"after_seq": after})
        assert_error(r, 400, "validation_error", "after_seq")
    r = await client.get(f"/v1/executions/{trace_id}/output", params={"after_seq": "2147483647"})
    assert r.status_code == 200 and r.text == ""


async def test_wrong_method_allow_lists_every_route_of_the_path(client: httpx.AsyncClient) -> None:
    r = await client.request("PATCH", "/v1/files/blob/some-token")
    assert_error(r, 405, "method_not_allowed")
    assert {m.strip() for m in r.headers["allow"].split(",")} >= {"GET", "PUT"}
    r = await client.request("PUT", "/v1/sandbox/execute", json={"code": "print(1)"})
    assert_error(r, 405, "method_not_allowed")
    assert r.headers["allow"] == "POST"
