"""Retention: finished executions older than the retention period are deleted with their event
logs and webhook deliveries, so the database stays bounded (SQLite reuses the freed pages).

One sweep at start, then one every `interval_s`; `sweep` is the whole rule, callable alone.
A retention of 0 days keeps everything: the sweep deletes nothing. Executions' artifacts
(service/artifacts.py) are swept with them, after their own retention, which is never longer.
The audit log (service/audit.py) is swept after each organization's audit retention: its
plan's (service/plans.py); without plans, rows are kept forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from ..store import Store, utcnow

if TYPE_CHECKING:
    from .artifacts import Artifacts
    from .audit import AuditLog
    from .plans import PlanService


log = logging.getLogger("sandboxd.retention")


class RetentionService:
    def __init__(
        self, store: Store, *, execution_retention_days: int = 30, artifacts: Artifacts | None = None,
        audit: AuditLog | None = None, plans: PlanService | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._plans = plans
        self._artifacts = artifacts
        self._executions = timedelta(days=execution_retention_days) if execution_retention_days > 0 else None
        self._sweeper: asyncio.Task[None] | None = None

    async def sweep(self, now: datetime | None = None) -> int:
        """Delete the finished executions created before `now` minus the retention period, and
        the artifacts past theirs."""
        if self._artifacts is not None:
            at = now.timestamp() if now is not None else None
            if swept := await asyncio.to_thread(self._artifacts.sweep, None, at):
                log.info("deleted the artifacts of %d executions past their retention", swept)
        if self._audit is not None and self._plans is not None:
            if pruned := await self._audit.sweep(await self._plans.retention_days_of(), now):
                log.info("deleted %d audit rows past their organizations' retention", pruned)
        if self._executions is None:
            return 0
        return await self._store.executions.delete_created_before((now or utcnow()) - self._executions)

    def start(self, interval_s: float = 3600.0) -> None:
        async def loop() -> None:
            while True:
                try:
                    if deleted := await self.sweep():
                        log.info("deleted %d executions past their retention", deleted)
                except Exception:
                    log.exception("execution retention sweep failed")
                await asyncio.sleep(interval_s)

        if self._sweeper is None:
            self._sweeper = asyncio.create_task(loop(), name="retention-sweeper")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
