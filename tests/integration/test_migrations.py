"""Migration 0006's downgrade: refused once output is stored the new way (it would be lost),
done as before while nothing is. Migrations 0007 (nodes, delivery claims), 0008 (images) and
0009 (storage connections) and 0010 (connectors) down and up again with rows in place; the
storage connections' and connectors' repositories. Real SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

from sandboxd.ids import new_id, new_trace_id
from sandboxd.store import (
    ApiKey,
    Connector,
    DuplicateError,
    Execution,
    Image,
    Sandbox,
    StorageBinding,
    StorageConnection,
    Store,
    create_engine,
    migrate,
    utcnow,
)
from sandboxd.store.db import alembic_config


async def _store(tmp_path: Path) -> Store:
    store = Store(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'sandboxd.db'}"))
    await migrate(store.engine)
    await store.orgs.add("org_m", "migrations")
    return store


async def _downgrade(store: Store, to: str = "0005") -> None:
    async with store.engine.begin() as conn:
        await conn.run_sync(lambda c: command.downgrade(alembic_config(c), to))


async def _columns(store: Store, table: str = "execution_events") -> set[str]:
    async with store.engine.connect() as conn:
        return await conn.run_sync(lambda c: {col["name"] for col in inspect(c).get_columns(table)})


async def test_downgrade_refuses_when_output_is_stored_in_events(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        trace_id = new_trace_id()
        await store.executions.add(Execution(
            trace_id=trace_id, org_id="org_m", key_id=None, language="bash", status="running",
            timeout_s=5, delivery_mode="sync", created_at=utcnow(),
        ))
        result = {"trace_id": trace_id, "status": "success", "output_truncated": False,
                  "result": {"success": True, "stdout": "hi\n", "stderr": "", "exit_code": 0, "error": None}}
        await store.executions.finish(
            trace_id, [(1, "output", {"stream": "stdout", "data": "hi\n"}), (2, "result", result)],
            {"stdout": "hi\n", "stderr": ""}, status="success", exit_code=0, stdout="hi\n", stderr="",
            completed_at=utcnow(),
        )
        with pytest.raises(RuntimeError, match="cannot downgrade below 0006"):
            await _downgrade(store)
        assert "data" in await _columns(store)  # nothing changed
        assert (await store.executions.get(trace_id)).stdout == "hi\n"  # type: ignore[union-attr]
    finally:
        await store.close()


async def test_downgrade_without_such_rows_goes_on(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        await _downgrade(store)
        assert "data" not in await _columns(store)
    finally:
        await store.close()


async def test_0007_down_and_up_again_keeps_the_rows(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        trace_id = new_trace_id()
        await store.executions.add(Execution(
            trace_id=trace_id, org_id="org_m", key_id=None, language="bash", status="running",
            timeout_s=5, delivery_mode="sync", created_at=utcnow(), node_id="node_a",
        ))
        await _downgrade(store, "0006")
        assert "node_id" not in await _columns(store, "executions")
        assert not {"claimed_by", "claim_expires_at"} & await _columns(store, "webhook_deliveries")
        await migrate(store.engine)
        assert "node_id" in await _columns(store, "executions")
        assert {"claimed_by", "claim_expires_at"} <= await _columns(store, "webhook_deliveries")
        row = await store.executions.get(trace_id)
        assert row is not None and row.status == "running" and row.node_id is None  # a row of no node
    finally:
        await store.close()


async def test_0008_down_and_up_again_sandboxes_fall_back_to_host(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        org = await store.orgs.add("org_i", "imgs")
        image = await store.images.add(Image(
            id="img_1", org_id=org.id, name="ds", digest="sha256:" + "d" * 64, source="t",
            config={"binaries": {"python": "/usr/bin/python3"}}, size_bytes=1, created_at=utcnow(),
        ))
        sandbox = await store.sandboxes.add(Sandbox(
            id="sbx_i", org_id=org.id, name="on-ds", cpus=1.0, memory_mib=256, network="none",
            timeout_cap_s=60, created_at=utcnow(), image_id=image.id,
        ))
        assert not await store.images.delete_unused(image.id)  # a config uses it
        await _downgrade(store, "0007")
        assert "image_id" not in await _columns(store, "sandboxes")
        assert "image_digest" not in await _columns(store, "threads")
        await migrate(store.engine)
        again = await store.sandboxes.get(sandbox.id)
        assert again is not None and again.image_id is None  # the host image, as before 0008
        assert await store.images.list() == []
    finally:
        await store.close()


# --- 0009: storage connections ----------------------------------------------------------------


def _connection(org_id: str, name: str, **kw: object) -> StorageConnection:
    values: dict[str, object] = {
        "id": new_id("stc"), "org_id": org_id, "name": name, "kind": "s3", "bucket": "bkt",
        "endpoint": "http://127.0.0.1:9", "region": None, "prefix": "conn", "read_only": False,
        "sealed": b"\x00sealed\xff", "created_at": utcnow(),
    }
    return StorageConnection(**{**values, **kw})  # type: ignore[arg-type]


async def _key(store: Store, org_id: str) -> ApiKey:
    key = ApiKey(
        id=new_id("key"), org_id=org_id, sandbox_id=None, name="k", region="local",
        digest=new_id("dig"), display_prefix="sk-local-", created_at=utcnow(), revoked_at=None,
    )
    return await store.keys.add(key)


async def _tables(store: Store) -> set[str]:
    async with store.engine.connect() as conn:
        return await conn.run_sync(lambda c: set(inspect(c).get_table_names()))


async def test_0009_down_and_up_again_drops_connections_and_keeps_executions(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        key = await _key(store, "org_m")
        connection = await store.storage.add(_connection("org_m", "lake"))
        await store.storage.bind(StorageBinding(key.id, connection.id, True, "team"))
        shown = [{"name": "lake", "type": "s3", "path": "/data/lake/x", "read_only": True, "scope": "conn/team/x"}]
        trace_id = new_trace_id()
        await store.executions.add(Execution(
            trace_id=trace_id, org_id="org_m", key_id=key.id, language="bash", status="success",
            timeout_s=5, delivery_mode="sync", created_at=utcnow(), storage=shown,
        ))
        assert (await store.executions.get(trace_id)).storage == shown  # type: ignore[union-attr]

        await _downgrade(store, "0008")
        assert not {"storage_connections", "key_storage"} & await _tables(store)
        assert "storage" not in await _columns(store, "executions")
        await migrate(store.engine)
        assert {"storage_connections", "key_storage"} <= await _tables(store)
        assert "storage" in await _columns(store, "executions")
        row = await store.executions.get(trace_id)
        assert row is not None and row.key_id == key.id and row.storage is None  # the run stays, unscoped
        assert await store.storage.list("org_m") == []
        assert await store.storage.bindings(key.id) == []
        assert await store.keys.get(key.id) == key  # the key stays; it runs without the bucket
    finally:
        await store.close()


async def test_storage_repo(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        other = await store.orgs.add("org_o", "other")
        lake = await store.storage.add(_connection("org_m", "lake"))
        pond = await store.storage.add(_connection("org_m", "pond", kind="gcs", prefix="", read_only=True, endpoint=None))
        theirs = await store.storage.add(_connection(other.id, "lake"))  # the same name in another org
        with pytest.raises(DuplicateError):
            await store.storage.add(_connection("org_m", "lake"))

        assert await store.storage.get(lake.id) == lake
        assert await store.storage.get("stc_nope") is None
        assert await store.storage.by_name("org_m", "lake") == lake
        assert await store.storage.by_name(other.id, "lake") == theirs
        assert await store.storage.by_name("org_m", "nope") is None
        assert await store.storage.list("org_m") == [lake, pond]  # by name
        assert (await store.storage.get(pond.id)).sealed == pond.sealed  # type: ignore[union-attr]  # bytes intact

        first, second, unbound = [await _key(store, "org_m") for _ in range(3)]
        await store.storage.bind(StorageBinding(first.id, lake.id, False, "team/a"))
        await store.storage.bind(StorageBinding(first.id, pond.id, True, ""))
        await store.storage.bind(StorageBinding(second.id, lake.id, True, ""))
        with pytest.raises(DuplicateError):  # one binding per key and connection
            await store.storage.bind(StorageBinding(first.id, lake.id, True, "other"))

        # a binding comes with its own mode and prefix, apart from the connection's
        assert await store.storage.bindings(first.id) == [
            (lake, StorageBinding(first.id, lake.id, False, "team/a")),
            (pond, StorageBinding(first.id, pond.id, True, "")),
        ]
        assert await store.storage.bindings(second.id) == [(lake, StorageBinding(second.id, lake.id, True, ""))]
        assert await store.storage.bindings(unbound.id) == []
        assert await store.storage.bound_keys(lake.id) == sorted([first.id, second.id])
        assert await store.storage.bound_keys(pond.id) == [first.id]
        assert await store.storage.bound_keys(theirs.id) == []

        # refused while an active key is bound: nothing is deleted, not even a binding
        assert not await store.storage.delete_unbound(lake.id)
        assert await store.storage.get(lake.id) == lake
        assert await store.keys.revoke(first.id)
        assert await store.storage.bound_keys(lake.id) == [second.id]
        assert not await store.storage.delete_unbound(lake.id)
        assert await store.storage.bindings(first.id) != []  # the revoked key's bindings are kept
        assert await store.keys.revoke(second.id)
        assert await store.storage.bound_keys(lake.id) == []

        # allowed once every bound key is revoked: the revoked keys' bindings go with it
        assert await store.storage.delete_unbound(lake.id)
        assert await store.storage.get(lake.id) is None
        assert await store.storage.bindings(second.id) == []
        assert await store.storage.bindings(first.id) == [(pond, StorageBinding(first.id, pond.id, True, ""))]
        assert await store.storage.list("org_m") == [pond]
        assert await store.storage.by_name(other.id, "lake") == theirs  # the other org's is untouched
        assert await store.storage.delete_unbound(theirs.id)  # never bound
        assert not await store.storage.delete_unbound(theirs.id)  # gone already
        # the name is free again
        again = await store.storage.add(_connection("org_m", "lake"))
        assert await store.storage.by_name("org_m", "lake") == again
    finally:
        await store.close()


# --- 0010: connectors ---------------------------------------------------------------------------


def _connector(org_id: str, name: str) -> Connector:
    now = utcnow()
    return Connector(id=new_id("con"), org_id=org_id, name=name, kind="env", config={"variables": ["A"]},
                     sealed=b"\x00sealed\xff", created_at=now, updated_at=now)


async def test_0010_down_and_up_again_drops_connectors_and_keeps_executions(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        key = await _key(store, "org_m")
        connector = await store.connectors.add(_connector("org_m", "openai"))
        await store.connectors.bind(key.id, connector.id)
        trace_id = new_trace_id()
        await store.executions.add(Execution(
            trace_id=trace_id, org_id="org_m", key_id=key.id, language="bash", status="success",
            timeout_s=5, delivery_mode="sync", created_at=utcnow(), connectors=[{"name": "openai", "type": "env"}],
        ))
        await _downgrade(store, "0009")
        assert not {"connectors", "key_connectors"} & await _tables(store)
        assert "connectors" not in await _columns(store, "executions")
        await migrate(store.engine)
        row = await store.executions.get(trace_id)
        assert row is not None and row.connectors is None
        assert await store.connectors.list("org_m") == [] and await store.connectors.bindings(key.id) == []
        assert await store.keys.get(key.id) == key
    finally:
        await store.close()


async def test_connector_repo(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        other = await store.orgs.add("org_o", "other")
        a = await store.connectors.add(_connector("org_m", "a"))
        b = await store.connectors.add(_connector("org_m", "b"))
        theirs = await store.connectors.add(_connector(other.id, "a"))
        with pytest.raises(DuplicateError):
            await store.connectors.add(_connector("org_m", "a"))
        assert await store.connectors.by_name("org_m", "a") == a and await store.connectors.by_name(other.id, "a") == theirs
        assert await store.connectors.list("org_m") == [a, b]
        assert {c.id for c in await store.connectors.all()} == {a.id, b.id, theirs.id}
        first, second = await _key(store, "org_m"), await _key(store, "org_m")
        await store.connectors.bind(first.id, b.id)
        await store.connectors.bind(first.id, a.id)
        await store.connectors.bind(second.id, a.id)
        with pytest.raises(DuplicateError):
            await store.connectors.bind(first.id, a.id)
        assert await store.connectors.bindings(first.id) == [a, b]
        assert await store.connectors.bound_keys(a.id) == sorted([first.id, second.id])
        await store.connectors.reseal({a.id: b"new", b.id: b"newer"})
        assert [(await store.connectors.get(c.id)).sealed for c in (a, b)] == [b"new", b"newer"]  # type: ignore[union-attr]
        assert (await store.connectors.get(theirs.id)).sealed == theirs.sealed  # type: ignore[union-attr]
        assert not await store.connectors.delete_unbound(a.id)
        await store.keys.revoke(first.id)
        assert not await store.connectors.delete_unbound(a.id)  # the second key is still active
        await store.keys.revoke(second.id)
        assert await store.connectors.delete_unbound(a.id)
        assert await store.connectors.get(a.id) is None and await store.connectors.bindings(first.id) != []
        assert [c.name for c in await store.connectors.bindings(first.id)] == ["b"]
    finally:
        await store.close()


# --- 0011: sessions -----------------------------------------------------------------------------


async def test_0011_down_and_up_again_forgets_sessions_and_keeps_configs_and_results(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        sandbox = await store.sandboxes.add(Sandbox(
            id=new_id("sbx"), org_id="org_m", name="repl", cpus=1.0, memory_mib=256, network="none",
            timeout_cap_s=60, created_at=utcnow(), session="persistent",
        ))
        assert (await store.sandboxes.get(sandbox.id)).session == "persistent"  # type: ignore[union-attr]
        await store.sessions.live("org_m", "t1", "python", "tok")
        await store.sessions.end("org_m", "t1", "python", "idle", "tok")
        await store.sessions.end("org_m", "t1", "python", "crash", "other-token")  # not its session
        ended = await store.sessions.get("org_m", "t1", "python")
        assert ended is not None and (ended.state, ended.reason) == ("ended", "idle")
        await store.sessions.live("org_m", "t2", "bash", "tok2")
        assert await store.sessions.end_live("restart") == 1
        trace_id = new_trace_id()
        await store.executions.add(Execution(
            trace_id=trace_id, org_id="org_m", key_id=None, language="python", status="success",
            timeout_s=5, delivery_mode="sync", created_at=utcnow(),
            extras={"session": {"state": "kept", "reason": None}, "outputs": [], "artifacts": [], "notes": []},
        ))
        await _downgrade(store, "0010")
        assert "thread_sessions" not in await _tables(store)
        assert "extras" not in await _columns(store, "executions")
        assert "session" not in await _columns(store, "sandboxes")
        await migrate(store.engine)
        assert (await store.sandboxes.get(sandbox.id)).session == "stateless"  # type: ignore[union-attr]
        assert await store.sessions.get("org_m", "t1", "python") is None
        row = await store.executions.get(trace_id)
        assert row is not None and row.extras is None and row.status == "success"
    finally:
        await store.close()


# --- 0013: audit --------------------------------------------------------------------------------


async def test_0013_down_and_up_again_forgets_the_audit_log_and_keeps_orgs(tmp_path: Path) -> None:
    from sandboxd.service.audit import AuditLog
    from sandboxd.service.roles import CLI_ACTOR

    store = await _store(tmp_path)
    try:
        audit = AuditLog(store, b"m" * 32)
        await audit.admin(CLI_ACTOR, "key.create", org_id="org_m", target="key_1")
        await store.audit.set_code("org_m", True)
        assert (await store.orgs.get("org_m")).audit_code is True  # type: ignore[union-attr]
        await _downgrade(store, "0012")
        assert not {"audit_log", "audit_heads"} & await _tables(store)
        assert "audit_code" not in await _columns(store, "orgs")
        await migrate(store.engine)
        org = await store.orgs.get("org_m")
        assert org is not None and org.audit_code is False and await store.audit.count() == 0
        await audit.admin(CLI_ACTOR, "key.create", org_id="org_m", target="key_2")
        assert await audit.verify() == []
    finally:
        await store.close()


async def test_0014_an_orgs_max_concurrent_becomes_its_custom_plan_and_comes_back_down(tmp_path: Path) -> None:
    from sqlalchemy import text

    from sandboxd.service.plans import PlanService

    store = await _store(tmp_path)
    try:
        await store.orgs.add("org_c", "capped")
        await _downgrade(store, "0012")
        assert "plans" not in await _tables(store) and "max_concurrent" in await _columns(store, "orgs")
        async with store.engine.begin() as conn:
            await conn.execute(text("UPDATE orgs SET max_concurrent = 3 WHERE id = 'org_c'"))
        await migrate(store.engine)
        assert "max_concurrent" not in await _columns(store, "orgs")  # one home for the limit: the plan
        plans = PlanService(store)
        capped = await store.orgs.get("org_c")
        assert capped is not None and capped.plan == "custom"
        plan = await plans.plan_of(capped)
        assert (plan.custom, plan.limits.concurrent, plan.limits.cpus, plan.limits.streaming) == (True, 3, None, True)
        other = await store.orgs.get("org_m")
        assert other is not None and other.plan is None and (await plans.plan_of(other)).name == "enterprise"
        await _downgrade(store, "0012")
        async with store.engine.connect() as conn:
            rows = (await conn.execute(text("SELECT id, max_concurrent FROM orgs ORDER BY id"))).all()
        assert [tuple(r) for r in rows] == [("org_c", 3), ("org_m", None)]
    finally:
        await store.close()
