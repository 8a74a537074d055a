"""What the audit log costs an execution: its row appended in the final record's transaction.

    uv run python bench/bench_audit.py [--n 300]

On a fresh SQLite database (WAL, synchronous=NORMAL, as a server opens it) in a temp dir, one
process, interleaved A, B, B, A, ...:

- A: `ExecutionRepo.finish` as before (the final row and its result event, one transaction);
- B: the same with `then=` the audit hook (as service/job.py): the chain's head locked and read
  (one upsert), the row hashed (HMAC-SHA256 over its canonical JSON) and inserted, the head moved;

and, alone, `AuditLog.admin` (an append in a transaction of its own), and `verify` per row.
Prints medians and p95 in ms and the difference B - A. Touches nothing outside its temp dir.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from sqlalchemy.ext.asyncio import AsyncConnection

from sandboxd.ids import new_trace_id
from sandboxd.service.audit import AuditLog, ExecutionFacts
from sandboxd.service.roles import CLI_ACTOR
from sandboxd.store import Execution, Store, create_engine, migrate, utcnow

CODE = "import json\nprint(json.dumps({'answer': 42}))\n" * 4


def _ms(samples: list[float]) -> str:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))]
    return f"median {statistics.median(ordered) * 1000:.3f} ms, p95 {p95 * 1000:.3f} ms"


async def _execution(store: Store) -> Execution:
    record = Execution(
        trace_id=new_trace_id(), org_id="org_bench", key_id=None, language="python", status="running",
        timeout_s=30, delivery_mode="inline", created_at=utcnow(), metadata={"run": "bench"},
    )
    await store.executions.add(record)
    return record


async def _finish(store: Store, record: Execution, audit: AuditLog | None) -> float:
    """As service/job.py does it: the audit row from the record as submitted plus the final values."""
    facts = ExecutionFacts(code=CODE, key_prefix="sk-local-bench", client_ip="127.0.0.1")
    trace_id = record.trace_id
    result = {"trace_id": trace_id, "status": "success", "result": {"success": True, "exit_code": 0}}
    started = time.perf_counter()
    final = {"status": "success", "exit_code": 0, "stdout": '{"answer": 42}\n', "stderr": "", "duration_ms": 12,
             "completed_at": utcnow()}

    async def audited(conn: AsyncConnection) -> None:
        assert audit is not None
        await audit.execution(replace(record, **final), facts, conn)

    await store.executions.finish(
        trace_id, [(2, "result", result)], {"stdout": "", "stderr": ""},
        then=audited if audit is not None else None, **final,
    )
    return time.perf_counter() - started


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory(prefix="sandboxd-bench-audit-") as tmp:
        store = Store(create_engine(f"sqlite+aiosqlite:///{Path(tmp) / 'sandboxd.db'}"))
        try:
            await migrate(store.engine)
            await store.orgs.add("org_bench", "bench")
            audit = AuditLog(store, b"b" * 32)
            for _ in range(20):  # warm up: connections, statement caches
                await _finish(store, await _execution(store), audit)
                await _finish(store, await _execution(store), None)
            plain: list[float] = []
            audited: list[float] = []
            for i in range(n):
                order = (None, audit) if i % 2 == 0 else (audit, None)
                for which in order:
                    elapsed = await _finish(store, await _execution(store), which)
                    (audited if which is not None else plain).append(elapsed)
            alone: list[float] = []
            for i in range(n):
                started = time.perf_counter()
                await audit.admin(CLI_ACTOR, "bench.append", org_id="org_bench", target=str(i), after={"i": i})
                alone.append(time.perf_counter() - started)
            rows = await store.audit.count()
            started = time.perf_counter()
            assert await audit.verify() == []
            verify_s = time.perf_counter() - started
        finally:
            await store.close()
    print(f"finish without audit (A): {_ms(plain)}")
    print(f"finish with audit    (B): {_ms(audited)}")
    print(f"B - A (medians):          {(statistics.median(audited) - statistics.median(plain)) * 1000:.3f} ms")
    print(f"AuditLog.admin alone:     {_ms(alone)}")
    print(f"verify: {rows} rows in {verify_s * 1000:.0f} ms ({verify_s / rows * 1e6:.1f} us per row)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    asyncio.run(main(parser.parse_args().n))
