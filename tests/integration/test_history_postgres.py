"""The console's executions search (store/history.py) on PostgreSQL: the metadata filter is a
JSON operator there (`->>`), json_extract on SQLite (tests/unit/test_execution_history.py)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from conftest_pg import pg_database_url, pg_server  # noqa: F401 (fixtures)

from sandboxd.store import Execution, Store, create_engine, migrate
from sandboxd.store.history import ExecutionQuery

pytestmark = pytest.mark.postgres
T0 = datetime(2026, 12, 7, 12, 0, tzinfo=timezone.utc)


async def test_search_filters_on_postgres(pg_database_url: str) -> None:  # noqa: F811
    store = Store(create_engine(pg_database_url))
    try:
        await migrate(store.engine)
        org = await store.orgs.add("org_pg_a", "a")
        other = await store.orgs.add("org_pg_b", "b")
        rows = (
            ("trc_1", org.id, 0, {"metadata": {"team": "red"}}),
            ("trc_2", org.id, 1, {"status": "failed", "language": "bash", "thread_id": "t1"}),
            ("trc_3", org.id, 2, {"key_id": "key_2", "metadata": {"team": "blue"}}),
            ("trc_4", other.id, 3, {"metadata": {"team": "red"}}),
        )
        for trace, org_id, minutes, values in rows:
            base = {
                "trace_id": trace, "org_id": org_id, "key_id": "key_1", "language": "python", "status": "success",
                "timeout_s": 30, "delivery_mode": "inline", "created_at": T0 + timedelta(minutes=minutes),
            }
            await store.executions.add(Execution(**{**base, **values}))  # type: ignore[arg-type]

        async def traces(**query: object) -> list[str]:
            return [s.trace_id for s in await store.history.search(org.id, ExecutionQuery(**query))]  # type: ignore[arg-type]

        assert await traces() == ["trc_3", "trc_2", "trc_1"]
        assert await traces(metadata_key="team", metadata_value="red") == ["trc_1"]
        assert await traces(metadata_key="team") == ["trc_3", "trc_1"]
        assert await traces(status="failed", language="bash", thread_id="t1") == ["trc_2"]
        assert await traces(since=T0 + timedelta(minutes=1), until=T0 + timedelta(minutes=2)) == ["trc_2"]
        assert len(await store.history.points(org.id, T0)) == 3
    finally:
        await store.close()
