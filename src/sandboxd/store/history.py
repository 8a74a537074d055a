"""Executions as the console looks them up: a filtered, newest-first search and the raw points
of the dashboard's charts. Summaries only: the output stays in the row (ExecutionRepo.get)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select

from .base import Repo
from .db import as_utc
from .tables import executions


@dataclass(frozen=True)
class ExecutionQuery:
    """Every field narrows the search; None: any."""

    status: str | None = None
    key_id: str | None = None
    thread_id: str | None = None
    language: str | None = None
    metadata_key: str | None = None
    #: With `metadata_key`: its value must be this (None: the key is present).
    metadata_value: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 50


@dataclass(frozen=True)
class ExecutionSummary:
    trace_id: str
    key_id: str | None
    language: str
    status: str
    delivery_mode: str
    created_at: datetime
    completed_at: datetime | None
    duration_ms: int
    thread_id: str | None
    metadata: dict[str, str] | None
    exit_code: int | None


@dataclass(frozen=True)
class ExecutionPoint:
    """One execution as the dashboard plots it."""

    created_at: datetime
    completed_at: datetime | None
    duration_ms: int
    status: str


_SUMMARY = (
    executions.c.trace_id, executions.c.key_id, executions.c.language, executions.c.status,
    executions.c.delivery_mode, executions.c.created_at, executions.c.completed_at,
    executions.c.duration_ms, executions.c.thread_id, executions.c["metadata"], executions.c.exit_code,
)


class ExecutionHistory(Repo):
    async def search(self, org_id: str, query: ExecutionQuery) -> list[ExecutionSummary]:
        sql = select(*_SUMMARY).where(executions.c.org_id == org_id)
        if query.status:
            sql = sql.where(executions.c.status == query.status)
        if query.key_id:
            sql = sql.where(executions.c.key_id == query.key_id)
        if query.thread_id:
            sql = sql.where(executions.c.thread_id == query.thread_id)
        if query.language:
            sql = sql.where(executions.c.language == query.language)
        if query.since is not None:
            sql = sql.where(executions.c.created_at >= query.since)
        if query.until is not None:
            sql = sql.where(executions.c.created_at < query.until)
        if query.metadata_key:
            field = executions.c["metadata"][query.metadata_key].as_string()
            sql = sql.where(field.is_not(None) if query.metadata_value is None else field == query.metadata_value)
        sql = sql.order_by(executions.c.created_at.desc(), executions.c.trace_id).limit(query.limit)
        async with self._engine.connect() as conn:
            rows = (await conn.execute(sql)).mappings().all()
        return [_summary(row) for row in rows]

    async def points(
        self, org_id: str, since: datetime, until: datetime | None = None, *, limit: int = 20_000
    ) -> list[ExecutionPoint]:
        """The organization's executions created in [since, until) (at most `limit`, the newest):
        bounded in time and count, on the (org_id, created_at) index."""
        window = [executions.c.org_id == org_id, executions.c.created_at >= since]
        if until is not None:
            window.append(executions.c.created_at < until)
        sql = (
            select(executions.c.created_at, executions.c.completed_at, executions.c.duration_ms, executions.c.status)
            .where(*window)
            .order_by(executions.c.created_at.desc())
            .limit(limit)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(sql)).mappings().all()
        return [
            ExecutionPoint(
                created_at=_utc(row["created_at"]), completed_at=as_utc(row["completed_at"]),
                duration_ms=row["duration_ms"] or 0, status=row["status"],
            )
            for row in rows
        ]


def _utc(value: datetime) -> datetime:
    converted = as_utc(value)
    assert converted is not None
    return converted


def _summary(row: Any) -> ExecutionSummary:
    return ExecutionSummary(
        trace_id=row["trace_id"], key_id=row["key_id"], language=row["language"], status=row["status"],
        delivery_mode=row["delivery_mode"], created_at=_utc(row["created_at"]),
        completed_at=as_utc(row["completed_at"]), duration_ms=row["duration_ms"] or 0,
        thread_id=row["thread_id"], metadata=row["metadata"], exit_code=row["exit_code"],
    )
