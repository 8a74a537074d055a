"""Node-scoped start-up recovery on real SQLite, and the node id it goes by: a restarting node
ends its own unfinished executions (and those of no node), never another node's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from pydantic import ValidationError

from sandboxd.config import Settings
from sandboxd.ids import new_trace_id
from sandboxd.service.node import NODE_ID_FILE, load_or_create_node_id
from sandboxd.service.recovery import NodeRecovery
from sandboxd.store import Execution, Store, utcnow


@pytest.fixture
async def store(store: Store) -> Store:
    """The unit tests' store (conftest.py), with the org the executions belong to."""
    await store.orgs.add("org_r", "recovery")
    return store


async def _execution(store: Store, node_id: str | None, status: str = "running") -> str:
    trace_id = new_trace_id()
    await store.executions.add(Execution(
        trace_id=trace_id, org_id="org_r", key_id=None, language="bash", status=status,
        timeout_s=5, delivery_mode="sync", created_at=utcnow(), node_id=node_id,
    ))
    return trace_id


async def test_a_restart_recovers_only_its_own_nodes_unfinished_executions(store: Store) -> None:
    mine = [await _execution(store, "node_a", s) for s in ("queued", "running", "cancelling")]
    theirs = [await _execution(store, "node_b", s) for s in ("queued", "running", "cancelling")]
    legacy = await _execution(store, None)  # from before migration 0007: no node
    done = await _execution(store, "node_a", "success")

    assert await NodeRecovery(store, "node_a").recover() == 4
    for trace_id in [*mine, legacy]:
        row = await store.executions.get(trace_id)
        assert row is not None and (row.status, row.error) == ("failed", "interrupted"), trace_id
        assert [t for _, t, _ in await store.events.after(trace_id, 0)] == ["status", "result"]
    for trace_id, status in zip(theirs, ("queued", "running", "cancelling")):
        row = await store.executions.get(trace_id)
        assert row is not None and row.status == status and row.error is None
        assert await store.events.after(trace_id, 0) == []
    assert (await store.executions.get(done)).status == "success"  # type: ignore[union-attr]
    assert await NodeRecovery(store, "node_a").recover() == 0  # nothing left of node_a's


def test_the_node_id_is_made_once_per_data_dir(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    first = load_or_create_node_id(one)
    assert first.startswith("node_") and len(first) == 17
    assert load_or_create_node_id(one) == first  # stable across restarts
    assert load_or_create_node_id(two) != first  # another server's data dir: another node
    assert sorted(os.listdir(one)) == [NODE_ID_FILE]  # no temp file left behind


def test_a_damaged_node_id_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / NODE_ID_FILE).write_text("")
    with pytest.raises(RuntimeError, match="damaged"):
        load_or_create_node_id(tmp_path)


def test_the_node_id_setting_is_checked(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path, node_id="eu-1.host-7").node_id == "eu-1.host-7"
    assert Settings(data_dir=tmp_path).node_id is None
    for bad in ("", "-x", "a b", "x" * 49):
        with pytest.raises(ValidationError):
            Settings(data_dir=tmp_path, node_id=bad)
