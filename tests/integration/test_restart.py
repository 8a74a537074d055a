"""Restart safety: executions a stopped or killed server left unfinished end as failed/interrupted,
stay retrievable, and their /output replay still ends with a result event."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from typing import Any

import baponi
import httpx
import pytest
from conftest import start_server

EXECUTE = "/v1/sandbox/execute"
NDJSON = "application/x-ndjson"
TERMINAL = {"success", "failed", "timeout", "cancelled", "blocked", "oom", "seccomp", "deepguard"}
LONG = "echo started; sleep 50; echo finished"


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def get(client: httpx.AsyncClient, trace_id: str) -> dict[str, Any]:
    r = await client.get(f"/v1/executions/{trace_id}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def wait_for(client: httpx.AsyncClient, trace_id: str, predicate: Any, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while not predicate(status := await get(client, trace_id)):
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.1)
    return status


async def replay(client: httpx.AsyncClient, trace_id: str, after_seq: int = 0) -> list[dict[str, Any]]:
    async with client.stream("GET", f"/v1/executions/{trace_id}/output", params={"after_seq": after_seq},
                             headers={"Accept": NDJSON}, timeout=httpx.Timeout(30, connect=10)) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith(NDJSON)
        return [json.loads(line) async for line in r.aiter_lines() if line]


def check_replay(events: list[dict[str, Any]], trace_id: str, first_seq: int = 1) -> dict[str, Any]:
    assert events, "the replay of an ended execution must not be empty"
    assert [e["seq"] for e in events] == list(range(first_seq, first_seq + len(events)))
    assert {e["type"] for e in events} <= {"status", "output", "keepalive", "result"}
    if first_seq == 1:
        assert events[0]["type"] == "status" and events[0]["trace_id"] == trace_id
    result = events[-1]
    assert result["type"] == "result", events
    assert [e for e in events if e["type"] == "result"] == [result]
    assert result["trace_id"] == trace_id
    assert set(result["result"]) >= {"success", "stdout", "stderr", "exit_code", "error"}
    assert isinstance(result["result"]["stdout"], str) and isinstance(result["result"]["stderr"], str)
    return result


def restart(data_dir: Any, settings: dict[str, Any]) -> Any:
    return start_server(data_dir, **settings)


async def test_killed_server_reports_running_execution_interrupted(server_factory) -> None:
    settings = {"keepalive_interval_s": 0.5}
    first = server_factory(**settings)
    key = await first.create_key()
    async with httpx.AsyncClient(base_url=first.url, headers=auth(key), timeout=60) as c:
        # one streaming run (its client connected when the server dies) and one webhook-mode run
        streamed_events: list[dict[str, Any]] = []
        stream_ctx = c.stream("POST", EXECUTE, json={"code": LONG, "language": "bash"}, headers={"Accept": NDJSON})
        response = await stream_ctx.__aenter__()
        try:
            lines = response.aiter_lines()
            async for line in lines:
                if line:
                    streamed_events.append(json.loads(line))
                    if streamed_events[-1]["type"] == "output":
                        break
            streamed = streamed_events[0]["trace_id"]
            r = await c.post(EXECUTE, json={"code": LONG, "language": "bash"}, headers={"Prefer": "respond-async"})
            polled = r.json()["trace_id"]
            await wait_for(c, polled, lambda s: s["status"] == "running")

            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(30)
            with pytest.raises(httpx.HTTPError):  # the stream breaks; it does not end with a result
                async for line in lines:
                    if line:
                        streamed_events.append(json.loads(line))
                        assert streamed_events[-1]["type"] != "result"
        finally:
            await stream_ctx.__aexit__(None, None, None)

    second = restart(first.data_dir, settings)
    try:
        async with httpx.AsyncClient(base_url=second.url, headers=auth(key), timeout=60) as c:
            for trace_id, mode in ((streamed, "streaming"), (polled, "webhook")):
                status = await get(c, trace_id)
                assert status["status"] == "failed", status
                assert status["error"] == "interrupted"
                assert status["delivery_mode"] == mode
                assert status["completed_at"]
                assert isinstance(status["stdout"], str) and isinstance(status["stderr"], str)
                assert status["exit_code"] == -1
                assert "finished" not in status["stdout"]
                events = await replay(c, trace_id)
                result = check_replay(events, trace_id)
                assert result["status"] == "failed"
                assert result["result"]["success"] is False
                assert result["result"]["error"] == "interrupted"
                # a reconnect from where the broken stream stopped also ends with the result
                tail = await replay(c, trace_id, after_seq=1)
                assert tail == events[1:]
                r = await c.post(f"/v1/executions/{trace_id}/cancel", content=b"",
                                 headers={"Content-Type": "application/json"})
                assert r.json() == {"trace_id": trace_id, "status": "failed"}
            # the restarted server runs new executions normally
            r = await c.post(EXECUTE, json={"code": "print('alive')"})
            assert r.status_code == 200 and r.json()["stdout"] == "alive\n"
        with baponi.Baponi(api_key=key, base_url=second.url) as sdk:
            with sdk.reconnect_stream(streamed) as stream:
                list(stream)
                final = stream.get_final_result()
            assert final.success is False and final.error == "interrupted"
            assert sdk.get_execution(polled).error == "interrupted"
    finally:
        second.stop()


async def test_graceful_stop_keeps_the_log_and_ends_runs_interrupted(server_factory) -> None:
    settings = {"shutdown_grace_s": 0.5}
    first = server_factory(**settings)
    key = await first.create_key()
    async with httpx.AsyncClient(base_url=first.url, headers=auth(key), timeout=60) as c:
        r = await c.post(EXECUTE, json={"code": LONG, "language": "bash"}, headers={"Prefer": "respond-async"})
        trace_id = r.json()["trace_id"]
        async with c.stream("GET", f"/v1/executions/{trace_id}/output") as response:
            async for line in response.aiter_lines():
                if line and json.loads(line)["type"] == "output":
                    break
    stopped = time.monotonic()
    first.stop()  # SIGTERM
    assert first.proc.returncode is not None
    assert time.monotonic() - stopped < 40, "the stop must not wait for the 50 s program"

    second = restart(first.data_dir, settings)
    try:
        async with httpx.AsyncClient(base_url=second.url, headers=auth(key), timeout=60) as c:
            status = await get(c, trace_id)
            assert status["status"] == "failed" and status["error"] == "interrupted", status
            assert status["completed_at"]
            events = await replay(c, trace_id)
            result = check_replay(events, trace_id)
            assert result["status"] == "failed" and result["result"]["error"] == "interrupted"
            assert [e["status"] for e in events if e["type"] == "status"][:2] == ["queued", "running"]
            assert "".join(e["data"] for e in events if e["type"] == "output") == "started\n"
            assert result["result"]["stdout"] == "started\n"
    finally:
        second.stop()


async def test_finished_executions_and_their_logs_survive_a_restart(server_factory) -> None:
    first = server_factory()
    key = await first.create_key()
    async with httpx.AsyncClient(base_url=first.url, headers=auth(key), timeout=60) as c:
        async with c.stream("POST", EXECUTE, json={"code": "print('kept')"}, headers={"Accept": NDJSON}) as r:
            live = [json.loads(line) async for line in r.aiter_lines() if line]
        trace_id = live[0]["trace_id"]
        before = await get(c, trace_id)
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(30)
    second = restart(first.data_dir, {})
    try:
        async with httpx.AsyncClient(base_url=second.url, headers=auth(key), timeout=60) as c:
            assert await get(c, trace_id) == before
            assert before["status"] == "success"
            assert await replay(c, trace_id) == live
            check_replay(live, trace_id)
    finally:
        second.stop()


async def test_reconnect_after_a_crash_gets_the_rest_and_the_result(server_factory) -> None:
    """Issue #12 item 11: a client saw seq 1..k, the server was SIGKILLed; after the restart a
    reconnect with after_seq=k gets seq k+1.. ending with the result, which keeps the output seen."""
    first = server_factory()
    key = await first.create_key()
    code = 'for i in $(seq 1 600); do echo "line $i"; sleep 0.05; done'
    seen: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=first.url, headers=auth(key), timeout=60) as c:
        async with c.stream("POST", EXECUTE, json={"code": code, "language": "bash"}, headers={"Accept": NDJSON}) as r:
            async for line in r.aiter_lines():
                if line:
                    seen.append(json.loads(line))
                    if sum(e["type"] == "output" for e in seen) == 3:
                        break
        trace_id, last_seq = seen[0]["trace_id"], seen[-1]["seq"]
        seen_text = "".join(e["data"] for e in seen if e["type"] == "output")
        await asyncio.sleep(0.3)  # more output the client never saw
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(30)

    second = restart(first.data_dir, {})
    try:
        async with httpx.AsyncClient(base_url=second.url, headers=auth(key), timeout=60) as c:
            rest = await replay(c, trace_id, after_seq=last_seq)
            result = check_replay(rest, trace_id, first_seq=last_seq + 1)
            assert result["status"] == "failed" and result["result"]["error"] == "interrupted"
            stdout = result["result"]["stdout"]
            assert stdout == seen_text + "".join(e["data"] for e in rest if e["type"] == "output")
            assert stdout.startswith("line 1\nline 2\n") and "line 600" not in stdout
            status = await get(c, trace_id)
            assert status["stdout"] == stdout and status["error"] == "interrupted"
            whole = await replay(c, trace_id)
            assert whole[:len(seen)] == seen and whole[len(seen):] == rest
            check_replay(whole, trace_id)
    finally:
        second.stop()
