"""What ran: an organization's executions searched, one shown whole, and the dashboard's series.

Every call takes the admin principal and asks `require(READ)`; an execution of another
organization is answered 404, as if it did not exist.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..errors import InvalidRequest, NotFound
from ..store import Execution, Store, utcnow
from ..store.history import ExecutionPoint, ExecutionQuery, ExecutionSummary
from .roles import READ, AdminPrincipal, require

__all__ = ["Dashboard", "ExecutionQuery", "ExecutionSummary", "HistoryService", "MinuteStats"]

#: What an execution's status may be (service/webhooks.py TERMINAL, and the two before it).
STATUSES = ("queued", "running", "success", "failed", "timeout", "cancelled", "blocked", "oom", "seccomp", "deepguard")


@dataclass(frozen=True)
class MinuteStats:
    start: datetime
    executions: int
    p50_ms: int | None
    p95_ms: int | None
    #: The most executions running at once in this minute.
    concurrent: int


@dataclass(frozen=True)
class Dashboard:
    since: datetime
    minutes: list[MinuteStats]
    statuses: dict[str, int]
    total: int
    p50_ms: int | None
    p95_ms: int | None
    #: What the organization may run at once.
    concurrency_limit: int
    peak_concurrent: int
    running_now: int = 0
    notes: list[str] = field(default_factory=list)


def percentile(values: list[int], fraction: float) -> int | None:
    """Nearest-rank percentile; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


class HistoryService:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def search(self, principal: AdminPrincipal, query: ExecutionQuery) -> list[ExecutionSummary]:
        require(principal, READ)
        if not 1 <= query.limit <= 500:
            raise InvalidRequest("limit must be between 1 and 500")
        if query.metadata_value is not None and not query.metadata_key:
            raise InvalidRequest("a metadata value needs a metadata key")
        if query.since is not None and query.until is not None and query.until <= query.since:
            raise InvalidRequest("the end of the time range must be after its start")
        return await self._store.history.search(principal.org.id, query)

    async def get(self, principal: AdminPrincipal, trace_id: str) -> Execution:
        require(principal, READ)
        execution = await self._store.executions.get(trace_id)
        if execution is None or execution.org_id != principal.org.id:
            raise NotFound(f"no execution {trace_id!r}")
        return execution

    async def dashboard(
        self, principal: AdminPrincipal, *, concurrency_limit: int, minutes: int = 60, now: datetime | None = None
    ) -> Dashboard:
        require(principal, READ)
        now = now or utcnow()
        end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
        since = end - timedelta(minutes=minutes)
        points = await self._store.history.points(principal.org.id, since, end)  # at most 20,000
        return summarize(points, since=since, minutes=minutes, now=now, concurrency_limit=concurrency_limit)


def summarize(
    points: list[ExecutionPoint], *, since: datetime, minutes: int, now: datetime, concurrency_limit: int
) -> Dashboard:
    """The series of `minutes` one-minute buckets from `since`."""
    buckets: list[list[ExecutionPoint]] = [[] for _ in range(minutes)]
    for point in points:
        index = int((point.created_at - since).total_seconds() // 60)
        if 0 <= index < minutes:
            buckets[index].append(point)
    peaks = peak_overlaps(points, since=since, minutes=minutes, now=now)
    series = []
    for index, bucket in enumerate(buckets):
        start = since + timedelta(minutes=index)
        durations = [p.duration_ms for p in bucket if p.completed_at is not None]
        series.append(MinuteStats(
            start=start,
            executions=len(bucket),
            p50_ms=percentile(durations, 0.5),
            p95_ms=percentile(durations, 0.95),
            concurrent=peaks[index],
        ))
    finished = [p.duration_ms for p in points if p.completed_at is not None]
    running = sum(1 for p in points if p.completed_at is None and p.status in ("queued", "running"))
    return Dashboard(
        since=since,
        minutes=series,
        statuses=dict(Counter(p.status for p in points).most_common()),
        total=len(points),
        p50_ms=percentile(finished, 0.5),
        p95_ms=percentile(finished, 0.95),
        concurrency_limit=concurrency_limit,
        peak_concurrent=max((m.concurrent for m in series), default=0),
        running_now=running,
    )


def peak_overlaps(points: list[ExecutionPoint], *, since: datetime, minutes: int, now: datetime) -> list[int]:
    """For each one-minute window [start, start + 1 min) from `since`: the most of `points` whose
    [created, completed) spans overlap at one instant of it (an unfinished one runs until `now`;
    a span of no length lasts a microsecond, so it counts in the minute it was created).

    One sweep over the sorted start and end events (ends before starts at the same instant),
    O(n log n) for n points, whatever the number of minutes.
    """
    tick = timedelta(microseconds=1)
    events: list[tuple[datetime, int]] = []
    for p in points:
        events.append((p.created_at, 1))
        events.append((max(p.completed_at or now, p.created_at + tick), -1))
    events.sort()
    peaks: list[int] = []
    current = index = 0
    for minute in range(minutes):
        start = since + timedelta(minutes=minute)
        end = start + timedelta(minutes=1)
        while index < len(events) and events[index][0] <= start:  # running at `start` itself
            current += events[index][1]
            index += 1
        peak = current
        while index < len(events) and events[index][0] < end:
            current += events[index][1]
            index += 1
            peak = max(peak, current)
        peaks.append(peak)
    return peaks
