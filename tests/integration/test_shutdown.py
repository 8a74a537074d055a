"""Graceful stop on SIGTERM: stop admitting (503 in the error format, /ready 503), let running
executions finish within the grace period, then kill the rest and record them in the store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
from typing import Any

import httpx

from conftest import Server

EXECUTE = "/v1/sandbox/execute"
GRACE_S = 4


def rows(server: Server, trace_id: str) -> dict[str, Any]:
    """The execution's row, its output as stored since 0006: the output events' text, then
    the row's own stdout/stderr (what came after the last output event)."""
    with contextlib.closing(sqlite3.connect(server.data_dir / "sandboxd.db", timeout=30)) as conn:
        conn.row_factory = sqlite3.Row
        row = dict(conn.execute("SELECT * FROM executions WHERE trace_id = ?", (trace_id,)).fetchone())
        if row["output_in_events"]:
            for stream in ("stdout", "stderr"):
                query = "SELECT data FROM execution_events WHERE trace_id = ? AND type = 'output' AND stream = ? ORDER BY seq"
                logged = b"".join(r["data"] for r in conn.execute(query, (trace_id, stream)))
                row[stream] = logged.decode() + (row[stream] or "")
        return row


async def first_output(c: httpx.AsyncClient, trace_id: str) -> None:
    async with c.stream("GET", f"/v1/executions/{trace_id}/output") as response:
        async for line in response.aiter_lines():
            if line and json.loads(line)["type"] == "output":
                return


async def test_sigterm_drains_then_kills_and_records(server_factory) -> None:
    server: Server = server_factory(shutdown_grace_s=GRACE_S)
    key = await server.create_key()
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        r = await c.post(EXECUTE, json={"code": "echo started; sleep 60; echo finished", "language": "bash"},
                         headers={"Prefer": "respond-async"})
        long_id = r.json()["trace_id"]
        await first_output(c, long_id)

        async def short_stream() -> list[dict[str, Any]]:
            async with c.stream("POST", EXECUTE, headers={"Accept": "application/x-ndjson"},
                                json={"code": "echo begun; sleep 2; echo done", "language": "bash"}) as s:
                return [json.loads(line) async for line in s.aiter_lines() if line]

        short = asyncio.create_task(short_stream())
        await asyncio.sleep(0.5)  # the short run is under way
        stopped = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)

        # draining: new executions are refused in the API's error format; the API still answers
        deadline = time.monotonic() + 3
        while (r := await c.post(EXECUTE, json={"code": "print(1)"}, headers={"Prefer": "respond-async"})).status_code != 503:
            assert r.status_code == 202 and time.monotonic() < deadline, r.text
            await asyncio.sleep(0.05)
        assert r.json() == {"error": "unavailable", "message": "the server is shutting down; retry shortly"}
        ready = await c.get("/ready")
        assert ready.status_code == 503 and ready.json()["error"] == "unavailable"
        assert (await c.get(f"/v1/executions/{long_id}")).json()["status"] == "running"

        # the run that fits in the grace period finishes, and its stream gets the result
        events = await short
        assert events[-1]["type"] == "result", events
        assert events[-1]["result"]["success"] is True and events[-1]["result"]["stdout"] == "begun\ndone\n"
        short_id = events[0]["trace_id"]

    assert server.proc.wait(timeout=60) is not None
    took = time.monotonic() - stopped
    assert GRACE_S - 0.5 < took < GRACE_S + 30, took  # waited for the grace period, not for the 60 s run

    # recorded by the stopping server itself (no restart here): killed, with its output so far
    killed = rows(server, long_id)
    assert killed["status"] == "failed" and killed["error"] == "interrupted", killed
    assert killed["completed_at"] is not None and killed["stdout"] == "started\n"
    assert rows(server, short_id)["status"] == "success"


async def test_a_stopped_server_leaves_no_cgroup_mount_or_sandbox(server_factory) -> None:
    """After runs of every kind (stateless, pooled, a thread's warm sandbox), SIGTERM leaves
    nothing on the host: no process of its sandbox uids, no home slot, no cgroup of its own."""
    import hashlib
    from pathlib import Path

    server: Server = server_factory()
    key = await server.create_key()
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        for body in ({"code": "print(1)"}, {"code": "print(2)"}, {"code": "echo t", "language": "bash", "thread_id": "t1"}):
            assert (await c.post(EXECUTE, json=body)).json()["success"] is True
    instance = hashlib.sha256(server.settings.instance_id.encode()).hexdigest()[:12]
    cgroups = lambda: list(Path("/sys/fs/cgroup").glob(f"*/**/sandboxd/{instance}")) + list(  # noqa: E731
        Path("/sys/fs/cgroup").glob(f"**/sandboxd-{instance}")
    )
    assert cgroups(), "the running server's cgroups should be found where this test looks"
    homes = server.settings.run_dir / "homes"
    assert homes.is_dir()  # the thread's next sandbox waits with its slot
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(timeout=30) == 0
    assert cgroups() == []
    assert not homes.exists()
    with open("/proc/self/mountinfo") as f:
        assert not [line for line in f if str(server.settings.run_dir) in line.split()[4]]
