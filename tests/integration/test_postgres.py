"""sandboxd on a real PostgreSQL: migrations, repositories, and a real server over HTTP.

The PostgreSQL server is a throwaway one started from this machine's binaries
(tests/integration/conftest_pg.py); without them these tests FAIL, they do not skip.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import httpx
import pytest
from conftest_pg import (
    INSTALL_HINT,
    PgServer,
    find_pg_bindir,
    pg_database_url,
    pg_server,
    root_conftest,
)
from sqlalchemy import inspect, text

from sandboxd.ids import new_id, new_trace_id
from sandboxd.store.db import head_revisions
from sandboxd.store import (
    ApiKey,
    DuplicateError,
    Execution,
    Sandbox,
    Store,
    create_engine,
    migrate,
    utcnow,
)
from sandboxd.store.tables import metadata as schema

pytestmark = pytest.mark.postgres

_helpers = root_conftest()  # tests/conftest.py: real `sandboxd serve` on loopback, the CLI
Server = _helpers.Server
run_cli = _helpers.run_cli
start_server = _helpers.start_server

__all__ = ["pg_database_url", "pg_server"]  # fixtures, imported so pytest finds them here

TABLES = {
    "alembic_version",
    "orgs",
    "sandboxes",
    "api_keys",
    "executions",
    "execution_events",
    "webhook_secrets",
    "webhook_deliveries",
    "threads",
    "volumes",
    "key_volumes",
    "images",
    "registry_credentials",
    "storage_connections",
    "key_storage",
    "connectors",
    "key_connectors",
    "thread_sessions",
    "members",
    "admin_tokens",
    "console_sessions",
    "plans",
    "usage",
    "audit_log",
    "audit_heads",
}
KEY = re.compile(r"^sk-local-[A-Za-z0-9]{40}$")


def test_postgresql_server_binaries_are_installed() -> None:
    """Say plainly what is missing, as a failure (CI installs them; a skip would hide it)."""
    assert find_pg_bindir() is not None, (
        f"PostgreSQL server binaries (initdb, pg_ctl, postgres) not found: {INSTALL_HINT}"
    )


# --- store: migrations and repositories -------------------------------------------------------


async def test_migrate_creates_schema_idempotently(pg_database_url: str) -> None:
    engine = create_engine(pg_database_url)
    try:
        await migrate(engine)
        await migrate(engine)  # second run: already at head, a no-op

        async with engine.connect() as conn:
            assert conn.dialect.name == "postgresql"
            tables = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            versions = (
                (await conn.execute(text("SELECT version_num FROM alembic_version")))
                .scalars()
                .all()
            )
            types = dict(
                (
                    await conn.execute(
                        text(
                            "SELECT table_name || '.' || column_name, data_type "
                            "FROM information_schema.columns WHERE table_schema = 'public'"
                        )
                    )
                ).all()
            )
            diffs = await conn.run_sync(_schema_diffs)
        assert tables == TABLES
        assert set(versions) == head_revisions() == {"0014"}  # the newest migration (0014: plans; the lead re-chains it)
        for column in (
            "orgs.created_at",
            "sandboxes.created_at",
            "api_keys.created_at",
            "api_keys.revoked_at",
            "executions.created_at",
            "executions.completed_at",
        ):
            assert types[column] == "timestamp with time zone", column
        assert types["executions.metadata"] == "json"
        assert types["executions.output_truncated"] == "boolean"
        assert diffs == [], "migrations do not create exactly store/tables.py"
    finally:
        await engine.dispose()


def _schema_diffs(sync_conn: object) -> list[object]:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    return compare_metadata(MigrationContext.configure(sync_conn), schema)  # type: ignore[arg-type]


async def test_repositories_round_trip(pg_database_url: str) -> None:
    engine = create_engine(pg_database_url)
    await migrate(engine)
    store = Store(engine)
    try:
        # orgs
        org = await store.orgs.add(new_id("org"), "acme", plan="pro")
        assert await store.orgs.get(org.id) == org
        assert await store.orgs.by_name("acme") == org
        assert await store.orgs.set_plan(org.id, "free")
        assert (await store.orgs.get(org.id)).plan == "free"  # type: ignore[union-attr]
        org = replace(org, plan="free")
        with pytest.raises(DuplicateError):
            await store.orgs.add(new_id("org"), "acme")

        # sandboxes
        sandbox = await store.sandboxes.add(
            Sandbox(
                id=new_id("sbx"),
                org_id=org.id,
                name="small",
                cpus=0.25,
                memory_mib=256,
                network="none",
                timeout_cap_s=30,
                created_at=utcnow(),
            )
        )
        assert await store.sandboxes.get(sandbox.id) == sandbox
        assert await store.sandboxes.by_name(org.id, "small") == sandbox
        assert await store.sandboxes.list(org.id) == [sandbox]
        with pytest.raises(DuplicateError):
            await store.sandboxes.add(replace(sandbox, id=new_id("sbx")))

        # keys
        key = await store.keys.add(
            ApiKey(
                id=new_id("key"),
                org_id=org.id,
                sandbox_id=sandbox.id,
                name="ci",
                region="local",
                digest="d" * 64,
                display_prefix="sk-local-",
                created_at=utcnow(),
                revoked_at=None,
            )
        )
        assert await store.keys.get(key.id) == key
        assert await store.keys.by_digest("d" * 64) == key
        assert await store.keys.list(org.id) == [key]
        assert await store.sandboxes.in_use(sandbox.id)
        assert await store.keys.revoke(key.id)
        assert not await store.keys.revoke(key.id)  # only once
        revoked = await store.keys.get(key.id)
        assert revoked is not None and revoked.revoked_at is not None
        assert revoked.revoked_at.utcoffset() == timedelta(0)
        assert abs(revoked.revoked_at - utcnow()) < timedelta(minutes=5)
        assert not await store.sandboxes.in_use(sandbox.id)

        # executions: metadata as JSON, timestamps written in another zone come back equal
        created = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
        execution = Execution(
            trace_id=new_trace_id(),
            org_id=org.id,
            key_id=key.id,
            language="python",
            status="running",
            timeout_s=30,
            delivery_mode="inline",
            created_at=created,
            client_id="client-1",
            thread_id="thread-1",
            metadata={"user": 'ümlaut ✓ "quoted"', "empty": "", "n": "1"},
        )
        await store.executions.add(execution)
        got = await store.executions.get(execution.trace_id)
        assert got == execution
        assert got is not None and got.created_at.tzinfo is not None
        async with engine.connect() as conn:  # the throwaway server is not in UTC, on purpose
            assert (await conn.execute(text("SHOW timezone"))).scalar() == "Asia/Kathmandu"
        assert got.created_at.utcoffset() == timedelta(0)  # UTC, whatever the server zone
        assert got.created_at == created and got.created_at.microsecond == 123456
        assert got.metadata == {"user": 'ümlaut ✓ "quoted"', "empty": "", "n": "1"}

        completed = datetime(2026, 1, 2, 1, 4, 6, 654321, tzinfo=UTC)
        await store.executions.update(
            execution.trace_id,
            status="success",
            exit_code=0,
            stdout="2\n",
            stderr="warn ✓\n",
            output_truncated=True,
            duration_ms=1001,
            completed_at=completed,
        )
        done = await store.executions.get(execution.trace_id)
        assert done == replace(
            execution,
            status="success",
            exit_code=0,
            stdout="2\n",
            stderr="warn ✓\n",
            output_truncated=True,
            duration_ms=1001,
            completed_at=completed,
        )
        assert done is not None and done.completed_at is not None
        assert done.completed_at - done.created_at == timedelta(seconds=1, microseconds=530865)

        # no metadata; then the start-up recovery of unfinished executions
        bare = Execution(
            trace_id=new_trace_id(),
            org_id=org.id,
            key_id=None,
            language="bash",
            status="running",
            timeout_s=5,
            delivery_mode="cli",
            created_at=utcnow(),
        )
        await store.executions.add(bare)
        assert await store.executions.get(bare.trace_id) == bare
        at = utcnow()
        assert await store.executions.fail_unfinished(node_id="node_a", error="interrupted", at=at) == 1
        failed = await store.executions.get(bare.trace_id)
        assert failed == replace(
            bare,
            status="failed",
            exit_code=-1,
            error="interrupted",
            completed_at=at,
            stdout="",
            stderr="",
        )
        assert await store.executions.get("trc_nope") is None

        # deleting the sandbox leaves the (revoked) key, unbound: ON DELETE SET NULL
        assert await store.sandboxes.delete(sandbox.id)
        unbound = await store.keys.get(key.id)
        assert unbound is not None and unbound.sandbox_id is None
    finally:
        await store.close()


# --- a real `sandboxd serve` on PostgreSQL ----------------------------------------------------


@dataclass
class PgSandboxd:
    server: Server
    database_url: str
    database: str

    def create_key(self) -> str:
        """Through the CLI, as an operator would; the key is the only line on stdout."""
        r = run_cli(
            "keys",
            "create",
            "--data-dir",
            str(self.server.data_dir),
            "--database-url",
            self.database_url,
        )
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert len(lines) == 1 and KEY.match(lines[0]), r.stdout
        return lines[0]

    def client(self, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.server.url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=120,
            trust_env=False,  # loopback only, never through a proxy from the environment
        )

    def log(self) -> str:
        port = self.server.url.rsplit(":", 1)[1]
        return (self.server.data_dir.parent / f"server-{port}.log").read_text(errors="replace")[
            -4000:
        ]


@pytest.fixture(scope="module")
def pg_sandboxd(
    pg_server: PgServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PgSandboxd]:
    url = pg_server.create_database("sandboxd_serve")
    data_dir: Path = tmp_path_factory.mktemp("pg-serve") / "data"
    server = start_server(data_dir, database_url=url)
    try:
        yield PgSandboxd(server=server, database_url=url, database="sandboxd_serve")
    finally:
        server.stop()


def test_server_on_postgres_execute_and_read_back(
    pg_sandboxd: PgSandboxd, pg_server: PgServer
) -> None:
    key = pg_sandboxd.create_key()
    with pg_sandboxd.client(key) as c:
        r = c.post("/v1/sandbox/execute", json={"code": "print(6*7)", "metadata": {"run": "pg ✓"}})
        assert r.status_code == 200, (r.text, pg_sandboxd.log())
        body = r.json()
        assert body["stdout"] == "42\n" and body["success"] is True and body["exit_code"] == 0, body
        trace_id = body["trace_id"]

        g = c.get(f"/v1/executions/{trace_id}")
        assert g.status_code == 200, g.text
        record = g.json()
    assert record["trace_id"] == trace_id
    assert record["status"] == "success" and record["exit_code"] == 0
    assert record["stdout"] == "42\n" and record["stderr"] == ""
    assert record["language"] == "python" and record["delivery_mode"] == "inline"
    assert record["metadata"] == {"run": "pg ✓"}
    created = datetime.fromisoformat(record["created_at"])
    completed = datetime.fromisoformat(record["completed_at"])
    assert record["created_at"].endswith("Z") and record["completed_at"].endswith("Z")
    assert created <= completed and abs(datetime.now(UTC) - created) < timedelta(minutes=10)

    # the record lives in PostgreSQL, not in a SQLite file in the data dir
    rows = pg_server.fetch(
        pg_sandboxd.database,
        "SELECT status, stdout, metadata->>'run' AS run FROM executions WHERE trace_id = $1",
        trace_id,
    )
    # the output is stored once: raw in its output events; the row keeps only what came after
    assert rows == [{"status": "success", "stdout": "", "run": "pg ✓"}]
    outputs = pg_server.fetch(
        pg_sandboxd.database,
        "SELECT stream, data FROM execution_events WHERE trace_id = $1 AND type = 'output' ORDER BY seq",
        trace_id,
    )
    # one event or two: the first bytes are published at once, and "42" may be read before "\n"
    assert {o["stream"] for o in outputs} == {"stdout"} and b"".join(o["data"] for o in outputs) == b"42\n", outputs
    assert not (pg_sandboxd.server.data_dir / "sandboxd.db").exists()
    # metered in the same transaction, through PostgreSQL's upsert (store/plans.py add_usage)
    usage = pg_server.fetch(
        pg_sandboxd.database,
        "SELECT u.executions, u.gib_seconds FROM usage u JOIN executions e ON e.org_id = u.org_id "
        "WHERE e.trace_id = $1",
        trace_id,
    )
    assert len(usage) == 1 and usage[0]["executions"] >= 1 and usage[0]["gib_seconds"] > 0, usage
    assert record["resources"]["cpu_ms"] >= 0 and record["resources"]["memory_peak_bytes"] > 0


def test_server_on_postgres_unknown_execution_is_404(pg_sandboxd: PgSandboxd) -> None:
    with pg_sandboxd.client(pg_sandboxd.create_key()) as c:
        r = c.get("/v1/executions/trc_doesnotexist")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


def test_server_on_postgres_output_with_nul_byte(pg_sandboxd: PgSandboxd) -> None:
    with pg_sandboxd.client(pg_sandboxd.create_key()) as c:
        r = c.post("/v1/sandbox/execute", json={"code": "import sys; sys.stdout.write('a\\0b')"})
        assert r.status_code == 200, r.text
        assert r.json()["stdout"] == "a\x00b"
        g = c.get(f"/v1/executions/{r.json()['trace_id']}")
        with c.stream("GET", f"/v1/executions/{r.json()['trace_id']}/output") as replay:
            events = [json.loads(line) for line in replay.iter_lines() if line]
    assert g.status_code == 200 and g.json()["status"] == "success"
    assert g.json()["stdout"] == "a\ufffdb"  # as the status document always showed a NUL
    assert events[-1]["result"]["stdout"] == "a\x00b"


def test_cli_key_name_too_long_on_postgres(pg_sandboxd: PgSandboxd) -> None:
    r = run_cli(
        "keys",
        "create",
        "--name",
        "n" * 129,
        "--data-dir",
        str(pg_sandboxd.server.data_dir),
        "--database-url",
        pg_sandboxd.database_url,
    )
    # a clear refusal (or acceptance, as on SQLite); never an unhandled database error
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.returncode == 0 or r.stderr.startswith("sandboxd: "), r.stderr[-2000:]
