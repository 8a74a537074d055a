"""Migration 0006's downgrade: refused once output is stored the new way (it would be lost),
done as before while nothing is. Migration 0007 (nodes, delivery claims) down and up again
with rows in place. Real SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import inspect

from sandboxd.ids import new_trace_id
from sandboxd.store import Execution, Image, Sandbox, Store, create_engine, migrate, utcnow
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
