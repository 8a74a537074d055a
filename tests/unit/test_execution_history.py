"""The dashboard's series (service/history.py `summarize`) and the executions search on a real
database (store/history.py)."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sandboxd.service.history import peak_overlaps, percentile, summarize
from sandboxd.store import Execution, Store, create_engine, migrate
from sandboxd.store.history import ExecutionPoint, ExecutionQuery

T0 = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


def _point(start_s: float, duration_s: float | None, status: str = "success") -> ExecutionPoint:
    created = T0 + timedelta(seconds=start_s)
    completed = created + timedelta(seconds=duration_s) if duration_s is not None else None
    return ExecutionPoint(created, completed, int((duration_s or 0) * 1000), status if completed else "running")


def test_percentiles_are_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5], 0.95) == 5
    values = list(range(1, 101))
    assert percentile(values, 0.5) == 50 and percentile(values, 0.95) == 95


def test_minutes_count_durations_and_overlap() -> None:
    points = [
        _point(5, 1.0), _point(10, 30.0), _point(20, 2.0, "failed"),  # minute 0: three, two at once
        _point(65, 0.5), _point(200, None),  # minute 1: one; minute 3: one still running
    ]
    now = T0 + timedelta(seconds=230)
    dashboard = summarize(points, since=T0, minutes=4, now=now, concurrency_limit=5)
    assert [m.executions for m in dashboard.minutes] == [3, 1, 0, 1]
    assert dashboard.minutes[0].p50_ms == 2000 and dashboard.minutes[0].p95_ms == 30000
    assert dashboard.minutes[0].concurrent == 2  # 10 s..40 s overlaps 20 s..22 s
    assert dashboard.minutes[2].concurrent == 0 and dashboard.minutes[3].concurrent == 1
    assert dashboard.statuses == {"success": 3, "failed": 1, "running": 1}
    assert dashboard.peak_concurrent == 2 and dashboard.running_now == 1 and dashboard.total == 5
    assert dashboard.p50_ms == 1000  # of the four finished: 500, 1000, 2000, 30000


async def test_search_filters_on_a_real_database(tmp_path: Path) -> None:
    store = Store(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}"))
    try:
        await migrate(store.engine)
        org = await store.orgs.add("org_a", "a")
        other = await store.orgs.add("org_b", "b")

        def execution(trace: str, org_id: str, minutes: int, **values: object) -> Execution:
            base: dict[str, object] = {
                "trace_id": trace, "org_id": org_id, "key_id": "key_1", "language": "python", "status": "success",
                "timeout_s": 30, "delivery_mode": "inline", "created_at": T0 + timedelta(minutes=minutes),
            }
            return Execution(**{**base, **values})  # type: ignore[arg-type]

        for e in (
            execution("trc_1", org.id, 0, metadata={"team": "red"}),
            execution("trc_2", org.id, 1, status="failed", language="bash", thread_id="t1"),
            execution("trc_3", org.id, 2, key_id="key_2", metadata={"team": "blue"}),
            execution("trc_4", other.id, 3),
        ):
            await store.executions.add(e)

        async def traces(**query: object) -> list[str]:
            return [s.trace_id for s in await store.history.search(org.id, ExecutionQuery(**query))]  # type: ignore[arg-type]

        assert await traces() == ["trc_3", "trc_2", "trc_1"]  # newest first, one org's only
        assert await traces(status="failed") == ["trc_2"]
        assert await traces(language="bash", thread_id="t1") == ["trc_2"]
        assert await traces(key_id="key_2") == ["trc_3"]
        assert await traces(metadata_key="team", metadata_value="red") == ["trc_1"]
        assert await traces(metadata_key="team") == ["trc_3", "trc_1"]
        assert await traces(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=2)) == ["trc_2"]
        assert await traces(limit=1) == ["trc_3"]
        points = await store.history.points(org.id, T0 - timedelta(minutes=1))
        assert len(points) == 3 and {p.status for p in points} == {"success", "failed"}
        # Bounded: the time window [since, until) and a count (the newest first).
        window = await store.history.points(org.id, T0 + timedelta(minutes=1), T0 + timedelta(minutes=2))
        assert [p.created_at for p in window] == [T0 + timedelta(minutes=1)]
        newest = await store.history.points(org.id, T0 - timedelta(minutes=1), limit=2)
        assert [p.created_at for p in newest] == [T0 + timedelta(minutes=2), T0 + timedelta(minutes=1)]
    finally:
        await store.close()


def _brute_peak(points: list[ExecutionPoint], start: datetime, end: datetime, now: datetime) -> int:
    """The per-minute scan the sweep replaced (one pass over every point for each minute)."""
    edges: list[tuple[datetime, int]] = []
    for p in points:
        begin = max(p.created_at, start)
        finish = min(p.completed_at or now, end)
        if finish <= begin and not (start <= p.created_at < end):
            continue
        edges.append((begin, 1))
        edges.append((max(finish, begin + timedelta(microseconds=1)), -1))
    edges.sort(key=lambda edge: (edge[0], edge[1]))
    peak = current = 0
    for _, step in edges:
        current += step
        peak = max(peak, current)
    return peak


def test_peak_overlaps_sweep_matches_the_per_minute_scan_on_random_data() -> None:
    rng = random.Random(18)
    minutes = 30
    for trial in range(60):
        now = T0 + timedelta(minutes=minutes - 1, seconds=rng.randrange(60))
        points = []
        for _ in range(rng.randrange(0, 120)):
            # Whole seconds and minute edges, so ties (ends and starts at one instant) are common.
            created = T0 + timedelta(seconds=rng.choice([rng.randrange(-120, minutes * 60), 60 * rng.randrange(minutes)]))
            kind = rng.random()
            if kind < 0.2:
                completed = None  # still running: until `now`
            elif kind < 0.3:
                completed = created  # no length
            else:
                completed = created + timedelta(seconds=rng.choice([rng.randrange(0, 400), 60]))
            points.append(ExecutionPoint(created, completed, 0, "success" if completed else "running"))
        expected = [
            _brute_peak(points, T0 + timedelta(minutes=m), T0 + timedelta(minutes=m + 1), now) for m in range(minutes)
        ]
        assert peak_overlaps(points, since=T0, minutes=minutes, now=now) == expected, trial
        assert [m.concurrent for m in summarize(points, since=T0, minutes=minutes, now=now, concurrency_limit=5).minutes] == expected
