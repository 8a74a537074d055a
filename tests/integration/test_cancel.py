"""POST /v1/executions/{id}/cancel on a real server, in all three delivery modes.

The programs ignore SIGTERM, so only a real kill ends them; after a cancel nothing of the run
may stay under the server's process tree.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import baponi
import httpx
import pytest

from sandboxd.runtime import keeper

EXECUTE = "/v1/sandbox/execute"
NDJSON = "application/x-ndjson"
TERMINAL = {"success", "failed", "timeout", "cancelled", "blocked", "oom", "seccomp", "deepguard"}

# Ignore SIGTERM, say "ready", then sleep far longer than any cancel should take (but under the
# 60 s timeout cap, so a cancel that does nothing ends as success, not as a timeout).
PY_STUBBORN = (
    "import signal, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "print('ready', flush=True)\n"
    "time.sleep(45)\n"
    "print('not cancelled')\n"
)
BASH_STUBBORN = "trap '' TERM; (trap '' TERM; sleep 45) & setsid sleep 45 & echo ready; sleep 45; echo not cancelled"
PROMPT_S = 25  # a cancel that works ends the run well within this; the programs run 45 s


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def box(server_factory) -> Any:
    """A server of this module's own, so its process tree holds only these tests' sandboxes.

    No pre-spawned sandboxes: they would wait under the server, and an empty tree is what these
    tests assert. Cancel on the pooled path is tried in tests/security (every attack there runs
    cold and pooled, and the host is searched for leftovers by uid).
    """
    return server_factory(auth_failures_allowed=100_000, pool_enabled=False)


@pytest.fixture(scope="module")
async def key(box) -> str:
    return await box.create_key()


@pytest.fixture(scope="module")
async def other_key(box) -> str:
    return await box.create_key(org="cancel-other")


@pytest.fixture
async def http(box, key: str) -> Any:
    async with httpx.AsyncClient(base_url=box.url, headers=auth(key), timeout=httpx.Timeout(120, connect=10)) as c:
        yield c


@pytest.fixture(scope="module")
def sdk(box, key: str) -> Iterator[baponi.Baponi]:
    with baponi.Baponi(api_key=key, base_url=box.url) as client:
        yield client


# --- helpers -----------------------------------------------------------------------------------


def _is_keeper(pid: int) -> bool:
    """The server's keeper (runtime/keeper.py) lives as long as the server: not a leftover."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[2:3] == [keeper.__file__.encode()]
    except OSError:
        return False


def descendants(pid: int) -> list[int]:
    """Every process whose parent chain reaches `pid`, but the server's keeper."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children[ppid].append(int(entry))
    found: list[int] = []
    stack = [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return [p for p in found if not _is_keeper(p)]


async def assert_tree_empties(server: Any, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while left := descendants(server.proc.pid):
        if time.monotonic() > deadline:
            details = []
            for pid in left:
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        details.append((pid, f.read().replace(b"\0", b" ")[:120]))
                except OSError:
                    pass
            pytest.fail(f"processes left under the server after the cancel: {details}")
        await asyncio.sleep(0.1)


async def cancel(client: httpx.AsyncClient, trace_id: str) -> httpx.Response:
    """Exactly as the SDK sends it: an empty body that still says application/json."""
    return await client.post(
        f"/v1/executions/{trace_id}/cancel", content=b"", headers={"Content-Type": "application/json"}
    )


async def get(client: httpx.AsyncClient, trace_id: str) -> dict[str, Any]:
    r = await client.get(f"/v1/executions/{trace_id}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def wait_terminal(client: httpx.AsyncClient, trace_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (status := await get(client, trace_id))["status"] not in TERMINAL:
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.1)
    return status


async def read_until(lines: Any, predicate: Any) -> list[dict[str, Any]]:
    events = []
    async for line in lines:
        if not line:
            continue
        event = json.loads(line)
        events.append(event)
        if predicate(event):
            break
    return events


def assert_contiguous(events: list[dict[str, Any]]) -> None:
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    assert {e["type"] for e in events} <= {"status", "output", "keepalive", "result"}
    assert [i for i, e in enumerate(events) if e["type"] == "result"] == [len(events) - 1]


def is_ready(event: dict[str, Any]) -> bool:
    return event["type"] == "output" and "ready" in event["data"]


# --- streaming --------------------------------------------------------------------------------


@pytest.mark.parametrize(("language", "code"), [("python", PY_STUBBORN), ("bash", BASH_STUBBORN)])
async def test_cancel_a_stream(box, http, language: str, code: str) -> None:
    async with http.stream("POST", EXECUTE, json={"code": code, "language": language, "timeout": 55},
                           headers={"Accept": NDJSON}) as response:
        assert response.status_code == 200
        lines = response.aiter_lines()
        events = await read_until(lines, is_ready)
        trace_id = events[0]["trace_id"]
        assert descendants(box.proc.pid), "the sandbox should be running now"
        asked = time.monotonic()
        r = await cancel(http, trace_id)
        assert r.status_code == 200, r.text
        assert r.json() == {"trace_id": trace_id, "status": "cancelling"}
        events += await read_until(lines, lambda e: e["type"] == "result")
        ended = time.monotonic() - asked
        assert [line async for line in lines if line] == []  # nothing after the result
    assert_contiguous(events)
    result = events[-1]
    assert result["status"] == "cancelled", result
    assert result["trace_id"] == trace_id
    assert result["result"]["success"] is False
    assert result["result"]["error"] == "cancelled"
    assert "not cancelled" not in result["result"]["stdout"]
    assert ended < PROMPT_S, ended
    status = await get(http, trace_id)
    assert status["status"] == "cancelled" and status["completed_at"]
    assert status["duration_ms"] < PROMPT_S * 1000 + 20_000
    await assert_tree_empties(box)


def test_cancel_a_stream_with_the_sdk(box, sdk: baponi.Baponi) -> None:
    with sdk.execute_stream(BASH_STUBBORN, language="bash", timeout=55) as stream:
        for event in stream:
            if isinstance(event, baponi.OutputEvent) and "ready" in event.data:
                break
        asked = time.monotonic()
        response = stream.cancel()
        assert isinstance(response, baponi.CancelResponse)
        assert response.trace_id == stream.trace_id and response.status == "cancelling"
        rest = list(stream)
        result = stream.get_final_result()
    assert isinstance(rest[-1], baponi.ResultEvent) and rest[-1].status == "cancelled"
    assert time.monotonic() - asked < PROMPT_S
    assert result.success is False and result.error == "cancelled"
    status = sdk.get_execution(stream.trace_id)
    assert status.status == "cancelled"
    # cancelling again changes nothing and answers the final status
    again = sdk.cancel_execution(stream.trace_id)
    assert again.status == "cancelled"
    assert sdk.get_execution(stream.trace_id) == status


# --- inline -------------------------------------------------------------------------------------


def running_with_marker(server: Any, marker: str) -> list[str]:
    with sqlite3.connect(f"file:{server.data_dir / 'sandboxd.db'}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT trace_id FROM executions WHERE status = 'running' AND metadata LIKE ?", (f"%{marker}%",)
        ).fetchall()
    return [r[0] for r in rows]


async def test_cancel_an_inline_request(box, http) -> None:
    marker = uuid.uuid4().hex
    pending = asyncio.create_task(
        http.post(EXECUTE, json={"code": PY_STUBBORN, "timeout": 55, "metadata": {"marker": marker}})
    )
    try:
        deadline = time.monotonic() + 60
        while not (found := running_with_marker(box, marker)):
            assert not pending.done(), (await pending).text
            assert time.monotonic() < deadline, "the inline execution never started running"
            await asyncio.sleep(0.05)
        [trace_id] = found
        await asyncio.sleep(1)  # let it get to its sleep
        asked = time.monotonic()
        r = await cancel(http, trace_id)
        assert r.status_code == 200, r.text
        assert r.json() == {"trace_id": trace_id, "status": "cancelling"}
        response = await asyncio.wait_for(pending, PROMPT_S)
    finally:
        if not pending.done():
            pending.cancel()
    assert time.monotonic() - asked < PROMPT_S
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["trace_id"] == trace_id
    assert body["success"] is False and body["error"] == "cancelled"
    assert body["stdout"] == "ready\n"
    status = await get(http, trace_id)
    assert status["status"] == "cancelled" and status["delivery_mode"] == "inline"
    await assert_tree_empties(box)


# --- webhook mode ---------------------------------------------------------------------------------


def test_cancel_a_webhook_run_with_the_sdk(box, sdk: baponi.Baponi) -> None:
    handle = sdk.execute_webhook(PY_STUBBORN, timeout=55)
    deadline = time.monotonic() + 60
    while (polled := handle.poll()).status != "running":
        assert polled.status == "queued" and time.monotonic() < deadline, polled
        time.sleep(0.1)
    assert polled.stdout is None and polled.exit_code is None  # null while running (spec §4.1)
    time.sleep(1)  # into its sleep
    asked = time.monotonic()
    response = handle.cancel()
    assert response.trace_id == handle.trace_id and response.status == "cancelling"
    final = handle.wait(poll_interval=0.2, timeout=60)
    assert time.monotonic() - asked < PROMPT_S + 10  # wait() polls with a doubling interval
    assert final.status == "cancelled"
    assert final.delivery_mode == "webhook"
    assert final.completed_at
    assert descendants_eventually_empty(box)


def descendants_eventually_empty(server: Any, timeout: float = 30) -> bool:
    deadline = time.monotonic() + timeout
    while descendants(server.proc.pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


async def test_cancel_a_webhook_run_over_http(box, http) -> None:
    r = await http.post(EXECUTE, json={"code": BASH_STUBBORN, "language": "bash", "timeout": 55},
                        headers={"Prefer": "respond-async"})
    assert r.status_code == 202
    trace_id = r.json()["trace_id"]
    async with http.stream("GET", f"/v1/executions/{trace_id}/output") as response:
        lines = response.aiter_lines()
        events = await read_until(lines, is_ready)
        r = await cancel(http, trace_id)
        assert r.json()["status"] == "cancelling"
        during = await get(http, trace_id)
        assert during["status"] in ("cancelling", "cancelled")
        events += await read_until(lines, lambda e: e["type"] == "result")
    assert_contiguous(events)
    assert events[-1]["status"] == "cancelled"
    status = await get(http, trace_id)
    assert status["status"] == "cancelled"
    await assert_tree_empties(box)


# --- cancel of what is not running ------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"), [("print('done')", "success"), ("import sys; sys.exit(2)", "failed")]
)
async def test_cancel_of_a_finished_execution_changes_nothing(http, code: str, expected: str) -> None:
    r = await http.post(EXECUTE, json={"code": code})
    trace_id = r.json()["trace_id"]
    before = await get(http, trace_id)
    assert before["status"] == expected
    for _ in range(2):
        r = await cancel(http, trace_id)
        assert r.status_code == 200, r.text
        assert r.json() == {"trace_id": trace_id, "status": expected}
    assert await get(http, trace_id) == before
    async with http.stream("GET", f"/v1/executions/{trace_id}/output") as response:
        events = [json.loads(line) async for line in response.aiter_lines() if line]
    assert events[-1]["type"] == "result" and events[-1]["status"] == expected


async def test_cancel_twice_while_running(box, http) -> None:
    r = await http.post(EXECUTE, json={"code": PY_STUBBORN, "timeout": 55}, headers={"Prefer": "respond-async"})
    trace_id = r.json()["trace_id"]
    async with http.stream("GET", f"/v1/executions/{trace_id}/output") as response:
        lines = response.aiter_lines()
        await read_until(lines, is_ready)
        first = await cancel(http, trace_id)
        second = await cancel(http, trace_id)
        assert first.json()["status"] == "cancelling"
        assert second.status_code == 200
        assert second.json()["status"] in ("cancelling", "cancelled")
        await read_until(lines, lambda e: e["type"] == "result")
    final = await wait_terminal(http, trace_id)
    assert final["status"] == "cancelled"
    assert (await cancel(http, trace_id)).json()["status"] == "cancelled"
    await assert_tree_empties(box)


async def test_cancel_unknown_and_other_org_is_404(box, http, other_key: str) -> None:
    for missing in ("trc_doesnotexist0001", "nope", "trc_" + "a" * 30):
        r = await cancel(http, missing)
        assert r.status_code == 404, r.text
        assert r.json()["error"] == "not_found"
    r = await http.post(EXECUTE, json={"code": "sleep 3; echo survived", "language": "bash"},
                        headers={"Prefer": "respond-async"})
    trace_id = r.json()["trace_id"]
    async with httpx.AsyncClient(base_url=box.url, headers=auth(other_key), timeout=30) as other:
        r = await cancel(other, trace_id)
        assert r.status_code == 404, r.text
        assert r.json()["error"] == "not_found"
        assert (await other.get(f"/v1/executions/{trace_id}")).status_code == 404
    final = await wait_terminal(http, trace_id)
    assert final["status"] == "success", "another organization's cancel must not touch the run"
    assert final["stdout"] == "survived\n"


async def test_cancel_without_a_key_is_401(box) -> None:
    async with httpx.AsyncClient(base_url=box.url, timeout=30) as anon:
        r = await cancel(anon, "trc_doesnotexist0001")
    assert r.status_code == 401
    assert r.json()["error"] == "unauthorized"


# --- a cancel racing the end of the run (in-process, real SQLite store, a runner that obeys) -------


class ObedientRunner:
    """Prints a line, then runs until cancelled."""

    languages = frozenset({"python", "node", "bash"})

    async def run(
        self, spec: Any, *, sink: Any = None, cancel: asyncio.Event | None = None, refill_later: bool = False
    ) -> Any:
        from sandboxd.runtime import ExecResult, ExecStatus

        if sink is not None:
            await sink("stdout", b"ready\n")
        assert cancel is not None
        await cancel.wait()
        return ExecResult(ExecStatus.CANCELLED, 137, b"ready\n", b"", False, False, 5, "cancelled")

    def refill(self, spec: Any) -> None:
        pass  # nothing pooled


async def test_cancel_write_landing_after_the_end_does_not_undo_the_final_status(tmp_path) -> None:
    from sandboxd.app import start
    from sandboxd.config import Settings
    from sandboxd.service import Principal, parse_execute_request

    services = await start(Settings(data_dir=tmp_path / "data"), runner=ObedientRunner())  # type: ignore[arg-type]
    try:
        org = await services.tenancy.org("default")
        principal = Principal(key=None, org=org, sandbox=await services.tenancy.sandbox(org, "default"))
        submission = await services.executions.submit(
            principal, parse_execute_request({"code": "x"}), delivery_mode="webhook"
        )
        repo = services.store.executions
        deadline = time.monotonic() + 10
        while (await repo.get(submission.trace_id)).status != "running":  # type: ignore[union-attr]
            assert time.monotonic() < deadline
            await asyncio.sleep(0.01)

        real_update = repo.update

        async def late_cancelling_write(trace_id: str, **values: Any) -> None:
            if values.get("status") == "cancelling":
                await submission.outcome()  # the run ends and records its result first
                await asyncio.sleep(0.05)
            await real_update(trace_id, **values)

        repo.update = late_cancelling_write  # type: ignore[method-assign]
        assert await services.executions.cancel(principal, submission.trace_id) == "cancelling"
        outcome = await submission.outcome()
        assert outcome.status == "cancelled"
        final = await repo.get(submission.trace_id)
        assert final is not None
        assert final.status == "cancelled", final.status
    finally:
        await services.close()
