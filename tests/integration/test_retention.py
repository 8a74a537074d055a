"""Execution retention (issue #12 item 3): the sweep deletes finished executions older than the
retention period with their event logs and webhook deliveries, and nothing else. Real SQLite."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from sandboxd.config import Settings
from sandboxd.ids import new_trace_id
from sandboxd.service.retention import RetentionService
from sandboxd.store import Execution, Store, WebhookDelivery, create_engine, migrate, utcnow
from sandboxd.store.tables import execution_events, executions, webhook_deliveries


async def _count(store: Store, table, trace_id: str) -> int:  # type: ignore[no-untyped-def]
    async with store.engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(table).where(table.c.trace_id == trace_id))).scalar() or 0)


async def test_sweep_deletes_old_finished_executions_with_their_events_and_deliveries(tmp_path: Path) -> None:
    store = Store(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'sandboxd.db'}"))
    try:
        await migrate(store.engine)
        org = await store.orgs.add("org_r", "retention")
        now = utcnow()

        async def execution(age_days: float, status: str) -> str:
            trace_id = new_trace_id()
            await store.executions.add(Execution(
                trace_id=trace_id, org_id=org.id, key_id=None, language="bash", status="running",
                timeout_s=5, delivery_mode="webhook", created_at=now - timedelta(days=age_days),
                webhook_url="https://example.invalid/hook",
            ))
            await store.webhooks.add_delivery(WebhookDelivery(
                id=f"whd_{trace_id}", trace_id=trace_id, org_id=org.id, url="https://example.invalid/hook",
                status="delivered", attempts=1, next_attempt_at=now, last_error=None, created_at=now,
            ))
            await store.events.add(trace_id, [(1, "status", {"trace_id": trace_id, "status": "queued"}),
                                              (2, "output", {"stream": "stdout", "data": "hi\n"})])
            if status != "running":
                result = {"trace_id": trace_id, "status": status, "output_truncated": False,
                          "result": {"success": True, "stdout": "hi\n", "stderr": "", "exit_code": 0, "error": None}}
                await store.executions.finish(trace_id, [(3, "result", result)], {"stdout": "hi\n", "stderr": ""},
                                              status=status, exit_code=0, stdout="hi\n", stderr="", completed_at=now)
            return trace_id

        old = await execution(31, "success")
        old_running = await execution(31, "running")  # never deleted while unfinished
        recent = await execution(29, "success")
        assert (await store.executions.get(old)).stdout == "hi\n"  # type: ignore[union-attr]

        assert await RetentionService(store, execution_retention_days=30).sweep() == 1
        assert await store.executions.get(old) is None
        for table in (executions, execution_events, webhook_deliveries):
            assert await _count(store, table, old) == 0
        for kept in (old_running, recent):
            assert await store.executions.get(kept) is not None
            assert await _count(store, execution_events, kept) >= 2
            assert await _count(store, webhook_deliveries, kept) == 1
        assert await RetentionService(store, execution_retention_days=30).sweep() == 0
        assert await RetentionService(store, execution_retention_days=30).sweep(now + timedelta(days=2)) == 1
    finally:
        await store.close()


async def test_a_retention_of_zero_days_keeps_every_execution(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("SANDBOXD_EXECUTION_RETENTION_DAYS", "0")
    days = Settings().execution_retention_days
    assert days == 0
    store = Store(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'sandboxd.db'}"))
    try:
        await migrate(store.engine)
        org = await store.orgs.add("org_k", "keep")
        trace_id = new_trace_id()
        await store.executions.add(Execution(
            trace_id=trace_id, org_id=org.id, key_id=None, language="bash", status="success",
            timeout_s=5, delivery_mode="sync", created_at=utcnow() - timedelta(days=3650),
        ))
        assert await RetentionService(store, execution_retention_days=days).sweep() == 0
        assert await store.executions.get(trace_id) is not None
    finally:
        await store.close()


async def test_the_audit_log_is_swept_after_each_organizations_plan_retention(tmp_path: Path) -> None:
    """Free keeps a day of audit rows, Enterprise everything; what is left still verifies."""
    from sandboxd.app import open_admin
    from sandboxd.service.audit import AuditFilters
    from sandboxd.service.roles import CLI_ACTOR

    admin = await open_admin(Settings(data_dir=tmp_path / "data"))
    try:
        free = await admin.tenancy.ensure_org("small")
        await admin.plans.assign(free, "free")
        big = await admin.tenancy.org("default")  # enterprise, the default plan
        for org in (free, big):
            await admin.audit.admin(CLI_ACTOR, "key.create", org_id=org.id, target="k")
        sweeper = RetentionService(admin.store, execution_retention_days=0, audit=admin.audit, plans=admin.plans)
        await sweeper.sweep(utcnow() + timedelta(hours=12))

        async def actions(org_id: str) -> list[str]:
            return [r.action for r in (await admin.audit.search(AuditFilters(org_id=org_id))).rows]

        assert await actions(free.id) == await actions(big.id) == ["key.create"]
        await sweeper.sweep(utcnow() + timedelta(days=2))
        assert await actions(big.id) == ["key.create"]
        assert await actions(free.id) == ["audit.prune"]  # the signed record of what went
        assert await admin.audit.verify() == []
    finally:
        await admin.close()
