"""Issue #12 items 3 and 12: what an execution's output costs the database.

A byte-at-a-time program stores a bounded number of event rows (coalesced output events);
output is stored once, a NUL byte as one byte; past `max_output_events` output is no longer
streamed but still reaches the result, the status document and replays.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import httpx
import pytest

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
