"""Plans (custom plans, an installation's figures for presets) and monthly usage per organization."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from .base import Repo
from .records import Plan, Usage
from .tables import plans, usage


class PlanExists(Exception):
    """A plan of that name exists already (for that organization)."""


class PlanRepo(Repo):
    async def add(self, plan: Plan) -> Plan:
        try:
            async with self._engine.begin() as conn:
                taken = await conn.execute(
                    select(plans.c.id).where(plans.c.name == plan.name, _same_org(plan.org_id))
                )
                if taken.first() is not None:  # NULL org ids are distinct to a UNIQUE constraint
                    raise PlanExists(plan.name)
                await conn.execute(plans.insert().values(**asdict(plan)))
        except IntegrityError as exc:
            raise PlanExists(plan.name) from exc
        return plan

    async def find(self, name: str, org_id: str | None) -> Plan | None:
        """The plan `name` of that organization (None: an installation-wide row)."""
        return await self._one(Plan, select(plans).where(plans.c.name == name, _same_org(org_id)))

    async def all(self, org_id: str | None = None) -> list[Plan]:
        """Installation-wide rows and custom plans (of one organization, if given)."""
        query = select(plans).order_by(plans.c.created_at)
        if org_id is not None:
            query = query.where((plans.c.org_id == org_id) | plans.c.org_id.is_(None))
        return await self._all(Plan, query)

    # --- usage ------------------------------------------------------------------------------

    async def usage(self, org_id: str, month: str) -> Usage:
        found = await self._one(Usage, select(usage).where(usage.c.org_id == org_id, usage.c.month == month))
        return found or Usage(org_id, month, 0, 0.0, 0.0)

    async def usage_months(self, org_id: str | None = None, month: str | None = None) -> list[Usage]:
        query = select(usage).order_by(usage.c.month, usage.c.org_id)
        if org_id is not None:
            query = query.where(usage.c.org_id == org_id)
        if month is not None:
            query = query.where(usage.c.month == month)
        return await self._all(Usage, query)


async def add_usage(conn: AsyncConnection, org_id: str, month: str, cpu_seconds: float, gib_seconds: float) -> None:
    """One more execution in the organization's month, inside the caller's transaction (the
    execution's final record: store/repos.py `ExecutionRepo.finish`)."""
    added = {
        "executions": usage.c.executions + 1,
        "cpu_seconds": usage.c.cpu_seconds + cpu_seconds,
        "gib_seconds": usage.c.gib_seconds + gib_seconds,
    }
    if conn.dialect.name in ("sqlite", "postgresql"):
        dialect_insert: Any
        if conn.dialect.name == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        stmt = dialect_insert(usage).values(
            org_id=org_id, month=month, executions=1, cpu_seconds=cpu_seconds, gib_seconds=gib_seconds
        )
        await conn.execute(stmt.on_conflict_do_update(index_elements=["org_id", "month"], set_=added))
        return
    result = await conn.execute(
        update(usage).where(usage.c.org_id == org_id, usage.c.month == month).values(**added)
    )
    if result.rowcount == 0:
        await conn.execute(usage.insert().values(
            org_id=org_id, month=month, executions=1, cpu_seconds=cpu_seconds, gib_seconds=gib_seconds
        ))


def _same_org(org_id: str | None) -> Any:
    return plans.c.org_id.is_(None) if org_id is None else plans.c.org_id == org_id
