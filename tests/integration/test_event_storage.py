"""Issue #12 items 3 and 12: what an execution's output costs the database.

A byte-at-a-time program stores a bounded number of event rows (coalesced output events);
output is stored once, a NUL byte as one byte; past `max_output_events` output is no longer
streamed but still reaches the result, the status document and replays.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from sandboxd.ids import new_trace_id
from sandboxd.service.executions import ExecutionService
from sandboxd.store import Execution, Store, create_engine, migrate, utcnow

EXECUTE = "/v1/sandbox/execute"
NDJSON = "application/x-ndjson"
FLOOD = "import sys, time\nt = time.time()\nwhile time.time() - t < 3:\n    sys.stdout.write('x'); sys.stdout.flush()\n"
MIB = 1024 * 1024


def _db(data_dir: Path) -> Path:
    return data_dir / "sandboxd.db"


def _disk_bytes(db: Path) -> int:
    """Database plus WAL after a checkpoint that empties the WAL."""
    with sqlite3.connect(db, timeout=30) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    wal = db.with_name(db.name + "-wal")
    return db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _rows(db: Path, trace_id: str) -> int:
    with sqlite3.connect(db, timeout=30) as conn:
        return int(conn.execute("SELECT count(*) FROM execution_events WHERE trace_id = ?", (trace_id,)).fetchone()[0])


async def _events(c: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> list[dict[str, Any]]:
    async with c.stream(method, url, headers={"Accept": NDJSON}, **kwargs) as r:
        assert r.status_code == 200
        return [json.loads(line) async for line in r.aiter_lines() if line]


@pytest.fixture(scope="module")
def server(server_factory):  # type: ignore[no-untyped-def]
    """A server of its own: its database grows only by what a test runs."""
    return server_factory()


async def test_output_flood_stores_few_event_rows_and_little(server) -> None:
    key = await server.create_key()
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        before = _disk_bytes(_db(server.data_dir))
        r = await c.post(EXECUTE, json={"code": FLOOD, "language": "python"})
        out = r.json()
        grown = _disk_bytes(_db(server.data_dir)) - before
    assert out["success"] and len(out["stdout"]) > 1000
    rows = _rows(_db(server.data_dir), out["trace_id"])
    # default 10 ms coalescing: ~100 events/s at most; one per pipe read made thousands
    assert rows < 3 * 100 * 1.5 + 10, rows
    assert grown < len(out["stdout"]) * 1.5 + MIB, (grown, len(out["stdout"]))


async def test_output_is_stored_once_and_compactly(server) -> None:
    key = await server.create_key()
    db = _db(server.data_dir)
    n, runs = 1_000_000, 3
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        for char in ("x", "\0"):
            code = f"import sys\nsys.stdout.write({char!r} * {n})\n"
            before = _disk_bytes(db)
            outs = [(await c.post(EXECUTE, json={"code": code, "language": "python"})).json() for _ in range(runs)]
            per_mib = (_disk_bytes(db) - before) / (runs * n)
            assert per_mib < 1.5, f"{per_mib:.2f} bytes stored per byte of output ({char!r})"
            for out in outs:
                assert out["stdout"] == char * n
                status = (await c.get(f"/v1/executions/{out['trace_id']}")).json()
                assert status["stdout"] == out["stdout"].replace("\0", "\ufffd")  # as it always showed NUL
                replayed = await _events(c, "GET", f"/v1/executions/{out['trace_id']}/output")
                assert replayed[-1]["result"]["stdout"] == out["stdout"]
                assert "".join(e["data"] for e in replayed if e["type"] == "output") == out["stdout"]


async def test_output_past_the_events_cap_reaches_the_result(server_factory) -> None:
    server = server_factory(max_output_events=5)
    key = await server.create_key()
    code = 'for i in $(seq 1 20); do echo "line $i"; echo "err $i" >&2; sleep 0.03; done'
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        live = await _events(c, "POST", EXECUTE, json={"code": code, "language": "bash"})
        trace_id = live[0]["trace_id"]
        assert sum(e["type"] == "output" for e in live) == 5
        result = live[-1]["result"]
        assert result["stdout"] == "".join(f"line {i}\n" for i in range(1, 21))
        assert result["stderr"] == "".join(f"err {i}\n" for i in range(1, 21))
        assert await _events(c, "GET", f"/v1/executions/{trace_id}/output") == live
        status = (await c.get(f"/v1/executions/{trace_id}")).json()
        assert (status["stdout"], status["stderr"]) == (result["stdout"], result["stderr"])
    assert _rows(_db(server.data_dir), trace_id) == len(live)


# --- over the real store (SQLite), no server: what a reconnect replays when writes failed ---

@pytest.fixture
async def store(tmp_path: Path):  # type: ignore[no-untyped-def]
    store = Store(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'sandboxd.db'}"))
    await migrate(store.engine)
    await store.orgs.add("org_e", "events")
    yield store
    await store.close()


def _service(store: Store) -> ExecutionService:
    return ExecutionService(store, None, None, None, None, None, None)  # type: ignore[arg-type]


_PRINCIPAL = SimpleNamespace(org=SimpleNamespace(id="org_e"))


async def _execution(store: Store, **values: Any) -> str:
    trace_id = new_trace_id()
    await store.executions.add(Execution(
        trace_id=trace_id, org_id="org_e", key_id=None, language="bash", status="running",
        timeout_s=5, delivery_mode="stream", created_at=utcnow(),
    ))
    if values:
        await store.executions.update(trace_id, completed_at=utcnow(), **values)
    return trace_id


async def _replay(store: Store, trace_id: str, after_seq: int) -> list[tuple[int, str]]:
    events = await _service(store).events(_PRINCIPAL, trace_id, after_seq)  # type: ignore[arg-type]
    return [(e.seq, e.type) async for e in events]


async def test_a_reconnect_ends_with_a_result_when_the_final_write_failed(store: Store) -> None:
    """The last write (result included) failed after earlier batches were stored: the row says
    failed/internal_error and a reconnect from anywhere still ends with a result, numbered
    after what the store or the client has."""
    trace_id = await _execution(store)
    await store.events.add(trace_id, [(1, "status", {"trace_id": trace_id, "status": "queued"}),
                                      (2, "status", {"trace_id": trace_id, "status": "running"}),
                                      (3, "output", {"stream": "stdout", "data": "hi\n"})])
    await store.executions.update(trace_id, status="failed", exit_code=-1, error="internal_error",
                                  stdout="", stderr="", completed_at=utcnow())
    assert await _replay(store, trace_id, 0) == [(1, "status"), (2, "status"), (3, "output"), (4, "status"), (5, "result")]
    assert await _replay(store, trace_id, 3) == [(4, "status"), (5, "result")]
    assert await _replay(store, trace_id, 6) == [(7, "status"), (8, "result")]  # it saw events never stored


async def test_a_reconnect_past_the_start_gets_a_result_when_nothing_was_stored(store: Store) -> None:
    trace_id = await _execution(store, status="failed", exit_code=-1, error="internal_error", stdout="", stderr="")
    assert await _replay(store, trace_id, 0) == [(1, "status"), (2, "result")]
    assert await _replay(store, trace_id, 2) == [(3, "status"), (4, "result")]


async def test_a_stored_result_is_not_synthesized_again(store: Store) -> None:
    trace_id = await _execution(store)
    result = {"trace_id": trace_id, "status": "success", "output_truncated": False,
              "result": {"success": True, "stdout": "", "stderr": "", "exit_code": 0, "error": None}}
    await store.executions.finish(trace_id, [(1, "status", {"trace_id": trace_id, "status": "running"}),
                                             (2, "result", result)], {"stdout": "", "stderr": ""},
                                  status="success", exit_code=0, stdout="", stderr="", completed_at=utcnow())
    assert await _replay(store, trace_id, 0) == [(1, "status"), (2, "result")]
    assert await _replay(store, trace_id, 2) == []


async def test_storing_events_again_skips_the_stored_ones(store: Store) -> None:
    """A commit that reported an error may have committed: its retry must not fail."""
    trace_id = await _execution(store)
    batch = [(1, "status", {"trace_id": trace_id, "status": "running"}), (2, "output", {"stream": "stdout", "data": "a"})]
    await store.events.add(trace_id, batch)
    await store.events.add(trace_id, [*batch, (3, "output", {"stream": "stdout", "data": "b"})])
    result = {"trace_id": trace_id, "status": "success", "output_truncated": False,
              "result": {"success": True, "stdout": "ab", "stderr": "", "exit_code": 0, "error": None}}
    rest = [(3, "output", {"stream": "stdout", "data": "b"}), (4, "result", result)]
    for _ in range(2):
        await store.executions.finish(trace_id, rest, {"stdout": "ab", "stderr": ""}, status="success",
                                      exit_code=0, stdout="ab", stderr="", completed_at=utcnow())
    assert [(s, t) for s, t, _ in await store.events.after(trace_id, 0)] == [
        (1, "status"), (2, "output"), (3, "output"), (4, "result")]
    assert (await store.executions.get(trace_id)).stdout == "ab"  # type: ignore[union-attr]


async def test_a_failed_home_save_keeps_its_message_in_the_status_document(store: Store) -> None:
    """The program ran (exit code 0), then saving the thread's home failed: the document
    shows the stored result's message naming the layer, not only the code's generic one."""
    trace_id = await _execution(store)
    message = "platform error in the thread_home layer: snapshot failed (disk full)"
    result = {"trace_id": trace_id, "status": "failed", "output_truncated": False,
              "result": {"success": False, "stdout": "", "stderr": "", "exit_code": 0,
                         "error": "thread_mount_error", "error_message": message}}
    await store.executions.finish(trace_id, [(1, "result", result)], {"stdout": "", "stderr": ""},
                                  status="failed", exit_code=0, stdout="", stderr="",
                                  error="thread_mount_error", completed_at=utcnow())
    execution = await store.executions.get(trace_id)
    assert await _service(store).error_message(execution) == message  # type: ignore[arg-type]
