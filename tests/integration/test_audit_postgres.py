"""The audit chain on a real PostgreSQL: two engines (two servers) appending at once keep one
chain (the head row's lock), a changed row is named, retention's prune verifies, and search by
an execution's metadata (a JSON path) and exports work there too."""

from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import timedelta

import pytest
from conftest_pg import pg_database_url, pg_server
from sqlalchemy import update

from sandboxd.service.audit import AuditLog, ExecutionFacts
from sandboxd.service.roles import CLI_ACTOR
from sandboxd.store import Execution, Store, create_engine, migrate, utcnow
from sandboxd.store.audit import AuditFilters
from sandboxd.store.tables import audit_log

pytestmark = pytest.mark.postgres

__all__ = ["pg_database_url", "pg_server"]  # fixtures, imported so pytest finds them here

KEY = b"p" * 32


async def test_audit_chain_on_postgres(pg_database_url: str) -> None:
    first, second = Store(create_engine(pg_database_url)), Store(create_engine(pg_database_url))
    try:
        await migrate(first.engine)
        await first.orgs.add("org_pg", "pg")
        a, b = AuditLog(first, KEY), AuditLog(second, KEY)
        await asyncio.gather(*(log.admin(CLI_ACTOR, "x", org_id=org, target=str(i))
                               for i in range(25) for log in (a, b) for org in ("org_pg", None)))
        assert await first.audit.count("org_pg") == 50 and await first.audit.count("") == 50
        assert await a.verify() == []

        now = utcnow()
        code = "print('nul \x00, \udcff and ünïcode')"
        execution = Execution(
            trace_id="trc_pg1", org_id="org_pg", key_id=None, language="python", status="success", timeout_s=5,
            delivery_mode="inline", created_at=now, completed_at=now, metadata={"team": "blue"},
        )
        await a.execution(execution, ExecutionFacts(code=code, audit_code=True))
        [row] = (await a.search(AuditFilters(metadata={"team": "blue"}))).rows
        kept = "print('nul \ufffd, \ufffd and ünïcode')"  # as executions' output is stored
        assert row.detail["code"] == kept and row.trace_id == "trc_pg1"
        assert row.detail["code_sha256"] == hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()
        lines = [json.loads(line) async for line in a.export(AuditFilters(org_id="org_pg"), "jsonl")]
        assert len(lines) == 51 and lines[-1]["detail"]["code"] == kept
        assert await a.verify() == []

        async with first.engine.begin() as conn:
            await conn.execute(update(audit_log).where(audit_log.c.org_id == "org_pg", audit_log.c.seq == 7)
                               .values(actor_name="someone else"))
        [found] = await a.verify()
        assert (found.org_id, found.seq) == ("org_pg", 7)
        async with first.engine.begin() as conn:
            await conn.execute(update(audit_log).where(audit_log.c.org_id == "org_pg", audit_log.c.seq == 7)
                               .values(actor_name=CLI_ACTOR.name))
        assert await a.verify() == []

        assert await a.sweep(lambda org: 1, now=utcnow() + timedelta(days=1, seconds=1)) == 51
        assert await a.verify() == []
        assert [r.action for r in (await a.search(AuditFilters(org_id="org_pg"))).rows] == ["audit.prune"]
    finally:
        await first.close()
        await second.close()
