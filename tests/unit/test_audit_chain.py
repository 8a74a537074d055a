"""The audit chain on real SQLite: appends link up, any change, insertion or removal is named at
its row, retention's pruning stays verifiable, search pages with a cursor, exports round-trip,
and two stores on one file appending at once keep one valid chain."""

from __future__ import annotations

import asyncio
import csv
import io
import hashlib
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import delete, update

from sandboxd.service.audit import CODE_KEPT_BYTES, AuditLog, ExecutionFacts, canonical, parse_csv, row_json
from sandboxd.service.recovery import NodeRecovery
from sandboxd.service.roles import CLI_ACTOR, Actor
from sandboxd.store import AuditRow, Execution, Store, create_engine, migrate
from sandboxd.store.audit import AuditFilters
from sandboxd.store.tables import audit_heads, audit_log

KEY = b"k" * 32
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


class Clock:
    def __init__(self, at: datetime = T0) -> None:
        self.at = at

    def __call__(self) -> datetime:
        self.at += timedelta(seconds=1)
        return self.at


@pytest.fixture
async def org_store(store: Store) -> AsyncIterator[Store]:
    await store.orgs.add("org_a", "alpha")
    await store.orgs.add("org_b", "beta")
    yield store


async def _fill(audit: AuditLog, n: int, org_id: str = "org_a") -> None:
    for i in range(n):
        await audit.admin(CLI_ACTOR, "key.create", org_id=org_id, target=f"key_{i}", after={"name": f"k{i}"})


async def test_appends_link_up_per_org(org_store: Store) -> None:
    audit = AuditLog(org_store, KEY, clock=Clock())
    await _fill(audit, 3)
    await _fill(audit, 2, "org_b")
    await audit.admin(CLI_ACTOR, "org.create", org_id=None, target="org/gamma", after={"name": "gamma"})
    assert await audit.verify() == []
    rows = [r async for r in org_store.audit.chain("org_a")]
    assert [r.seq for r in rows] == [1, 2, 3]
    assert rows[0].prev_hash == "" and rows[1].prev_hash == rows[0].hash and rows[2].prev_hash == rows[1].hash
    assert [r.seq for r in [r async for r in org_store.audit.chain("")]] == [1]
    heads = {h.org_id: h for h in await audit.heads()}
    assert heads["org_a"].seq == 3 and heads["org_a"].hash == rows[2].hash and heads["org_b"].seq == 2


async def test_the_hash_is_keyed(org_store: Store) -> None:
    """The same content under another key is another hash: the database alone cannot reseal."""
    audit = AuditLog(org_store, KEY, clock=Clock())
    await _fill(audit, 2)
    assert await AuditLog(org_store, b"x" * 32).verify() != []
    row = [r async for r in org_store.audit.chain("org_a")][0]
    assert canonical(row) == canonical(row)
    assert b'"hash"' not in canonical(row)


async def _break(store: Store, statement: object) -> None:
    async with store.engine.begin() as conn:
        await conn.execute(statement)  # type: ignore[call-overload]


async def test_a_changed_row_is_named(org_store: Store) -> None:
    audit = AuditLog(org_store, KEY, clock=Clock())
    await _fill(audit, 5)
    await _break(org_store, update(audit_log).where(audit_log.c.org_id == "org_a", audit_log.c.seq == 3)
                 .values(target="key_forged"))
    [found] = await audit.verify()
    assert (found.org_id, found.seq) == ("org_a", 3) and "changed" in found.problem


async def test_a_removed_row_is_named(org_store: Store) -> None:
    audit = AuditLog(org_store, KEY, clock=Clock())
    await _fill(audit, 5)
    await _break(org_store, delete(audit_log).where(audit_log.c.org_id == "org_a", audit_log.c.seq == 2))
    [found] = await audit.verify()
    assert (found.org_id, found.seq) == ("org_a", 2) and "missing" in found.problem


async def test_a_removed_tail_is_named(org_store: Store) -> None:
    audit = AuditLog(org_store, KEY, clock=Clock())
    await _fill(audit, 5)
    await _break(org_store, delete(audit_log).where(audit_log.c.org_id == "org_a", audit_log.c.seq >= 4))
    [found] = await audit.verify()
    assert (found.org_id, found.seq) == ("org_a", 4)


async def test_a_removed_prefix_is_not_retention(org_store: Store) -> None:
    """Moving the anchor by hand to hide deleted rows is caught: no sealed audit.prune row vouches."""
    audit = AuditLog(org_store, KEY, clock=Clock())
    await _fill(audit, 5)
    rows = [r async for r in org_store.audit.chain("org_a")]
    await _break(org_store, delete(audit_log).where(audit_log.c.org_id == "org_a", audit_log.c.seq <= 2))
    await _break(org_store, update(audit_heads).where(audit_heads.c.org_id == "org_a")
                 .values(pruned_seq=2, pruned_hash=rows[1].hash))
    [found] = await audit.verify()
    assert (found.org_id, found.seq) == ("org_a", 3) and "audit.prune" in found.problem


async def test_retention_prunes_a_prefix_and_the_chain_still_verifies(org_store: Store) -> None:
    clock = Clock()
    audit = AuditLog(org_store, KEY, clock=clock)
    await _fill(audit, 4)
    await _fill(audit, 2, "org_b")
    clock.at += timedelta(days=2)
    await _fill(audit, 2)
    deleted = await audit.sweep(lambda org: 1 if org.name == "alpha" else None)
    assert deleted == 4
    rows = [r async for r in org_store.audit.chain("org_a")]
    assert [r.seq for r in rows] == [5, 6, 7]
    assert rows[-1].action == "audit.prune" and rows[-1].detail["after"]["deleted"] == 4
    assert await org_store.audit.count("org_b") == 2
    assert await audit.verify() == []
    # Again, later: the earlier prune row goes too, a new one vouches for the new anchor.
    clock.at += timedelta(days=2)
    assert await audit.sweep(lambda org: 1 if org.name == "alpha" else None) == 3
    assert await audit.verify() == []
    assert await audit.sweep(lambda org: None) == 0


def _execution(trace_id: str = "trc_audit1") -> Execution:
    return Execution(
        trace_id=trace_id, org_id="org_a", key_id="key_1", language="python", status="success", timeout_s=30,
        delivery_mode="streaming", created_at=T0, exit_code=0, client_id="baponi-python/1",
        metadata={"team": "red", "run": "7"}, completed_at=T0 + timedelta(seconds=2), duration_ms=1500,
        network_log=[{"host": "pypi.org", "port": 443, "allowed": True, "reason": "allowlist", "count": 1}],
        storage=[{"name": "data", "kind": "volume", "path": "/data/data", "read_only": False}],
        connectors=[{"name": "gh", "type": "http"}], extras={"resources": {"cpu_s": 0.5, "memory_peak_bytes": 1024}},
    )


async def test_execution_rows_say_what_ran(org_store: Store) -> None:
    audit = AuditLog(org_store, KEY, clock=Clock())
    code = "print('hi')"
    row = await audit.execution(_execution(), ExecutionFacts(code=code, key_prefix="sk-local-ab", client_ip="127.0.0.1"))
    d = row.detail
    assert d["code_sha256"] == hashlib.sha256(code.encode()).hexdigest() and "code" not in d
    assert (d["status"], d["exit_code"], d["delivery_mode"], d["client_ip"]) == ("success", 0, "streaming", "127.0.0.1")
    assert d["resources"] == {"cpu_s": 0.5, "memory_peak_bytes": 1024} and d["connectors"][0]["name"] == "gh"
    assert row.trace_id == "trc_audit1" and row.key_id == "key_1" and row.actor_name == "sk-local-ab"
    assert row.actor_kind == "key" and "via" not in d and "member" not in d
    kept = await audit.execution(_execution("trc_audit2"), ExecutionFacts(code=code, audit_code=True))
    assert kept.detail["code"] == code and "code_truncated" not in kept.detail
    big = "x = 1\n" * 20_000  # 120 KB: the row keeps the first 64 KiB, the hash covers it all
    cut = await audit.execution(_execution("trc_audit3"), ExecutionFacts(code=big, audit_code=True))
    assert len(cut.detail["code"]) == CODE_KEPT_BYTES and big.startswith(cut.detail["code"])
    assert cut.detail["code_truncated"] is True
    assert cut.detail["code_sha256"] == hashlib.sha256(big.encode()).hexdigest()
    wide = "é" * 40_000  # 2 bytes a character: the cut never splits one
    cut = await audit.execution(_execution("trc_audit5"), ExecutionFacts(code=wide, audit_code=True))
    assert cut.detail["code"] == "é" * (CODE_KEPT_BYTES // 2) and cut.detail["code_truncated"] is True
    # Run from the console's "Try it": the member is the actor, beside the key it ran as.
    tried = await audit.execution(_execution("trc_audit4"), ExecutionFacts(
        code=code, key_prefix="sk-local-ab", client_ip="192.0.2.4", member_id="mem_1", member_email="max@example.com",
    ))
    assert (tried.actor_kind, tried.actor_id, tried.actor_name, tried.ip) == ("member", "mem_1", "max@example.com", "192.0.2.4")
    assert tried.detail["via"] == "console" and tried.detail["member"] == {"id": "mem_1", "email": "max@example.com"}
    assert tried.key_id == "key_1" and tried.detail["key_prefix"] == "sk-local-ab"
    assert await audit.verify() == []


async def test_search_filters_and_pages(org_store: Store) -> None:
    audit = AuditLog(org_store, KEY, clock=Clock())
    for i in range(5):
        await audit.execution(_execution(f"trc_s{i}"), ExecutionFacts(code=str(i)))
    await _fill(audit, 3)
    assert [r.trace_id for r in (await audit.search(AuditFilters(trace_id="trc_s3"))).rows] == ["trc_s3"]
    assert len((await audit.search(AuditFilters(metadata={"team": "red"}))).rows) == 5
    assert (await audit.search(AuditFilters(metadata={"team": "blue"}))).rows == []
    assert len((await audit.search(AuditFilters(kind="admin"))).rows) == 3
    seen: list[AuditRow] = []
    cursor = None
    while True:
        page = await audit.search(AuditFilters(org_id="org_a"), limit=3, cursor=cursor)
        seen += page.rows
        if (cursor := page.cursor) is None:
            break
    assert [(r.org_id, r.seq) for r in seen] == [("org_a", i) for i in range(1, 9)]
    newest = await audit.search(AuditFilters(org_id="org_a", newest_first=True), limit=2)
    assert [r.seq for r in newest.rows] == [8, 7]
    assert [r.seq for r in (await audit.search(AuditFilters(newest_first=True), limit=2, cursor=newest.cursor)).rows] == [6, 5]
    since = T0 + timedelta(seconds=3)
    assert all(r.at >= since for r in (await audit.search(AuditFilters(since=since))).rows)


async def test_exports_round_trip(org_store: Store) -> None:
    audit = AuditLog(org_store, KEY, clock=Clock())
    await audit.execution(_execution(), ExecutionFacts(code="x = 'ünïcode, \"quoted\"'\n", audit_code=True))
    await _fill(audit, 2)
    await audit.files("files.upload", org_id="org_a", key_id="key_1", key_prefix="sk-local-ab", source="thread",
                      id="t1", path="a,b.txt", size=12)
    expected = [row_json(r) for r in (await audit.search(AuditFilters())).rows]
    jsonl = "".join([line async for line in audit.export(AuditFilters(), "jsonl")])
    assert [json.loads(line) for line in jsonl.splitlines()] == expected
    text = "".join([line async for line in audit.export(AuditFilters(), "csv")])
    assert parse_csv(text) == expected


async def test_a_csv_export_never_starts_a_cell_with_a_formula(org_store: Store) -> None:
    audit = AuditLog(org_store, KEY, clock=Clock())
    for target in ("=HYPERLINK(\"http://x\")", "+1", "-1", "@SUM(A1)", "'quoted", "plain"):
        await audit.admin(CLI_ACTOR, "key.create", org_id="org_a", target=target)
    text = "".join([line async for line in audit.export(AuditFilters(), "csv")])
    cells = [cell for line in csv.reader(io.StringIO(text)) for cell in line]
    assert not [c for c in cells if c.startswith(("=", "+", "-", "@"))]
    assert [r["target"] for r in parse_csv(text)] == [r.target for r in (await audit.search(AuditFilters())).rows]


async def test_admin_rows_mask_secret_looking_fields(org_store: Store) -> None:
    audit = AuditLog(org_store, KEY, clock=Clock())
    actor = Actor(kind="member", id="mem_1", name="a@example.com", ip="192.0.2.1")
    await audit.admin(actor, "webhook.secret", org_id="org_a", target="webhooks",
                      after={"secret": "whsec_x", "name": "n", "nested": {"password": "p"}})
    [row] = (await audit.search(AuditFilters())).rows
    assert row.detail["after"] == {"secret": "[redacted]", "name": "n", "nested": {"password": "[redacted]"}}
    assert row.ip == "192.0.2.1" and row.actor_kind == "member"


async def test_two_stores_appending_at_once_keep_one_chain(tmp_path: Path) -> None:
    """Two engines on one file (a server and a CLI): every append gets its own seq."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'two.db'}"
    first, second = Store(create_engine(url)), Store(create_engine(url))
    try:
        await migrate(first.engine)
        await first.orgs.add("org_a", "alpha")
        a, b = AuditLog(first, KEY), AuditLog(second, KEY)
        await asyncio.gather(*(log.admin(CLI_ACTOR, "x", org_id="org_a", target=str(i))
                               for i in range(20) for log in (a, b)))
        assert await first.audit.count("org_a") == 40
        assert await a.verify() == []
    finally:
        await first.close()
        await second.close()


async def test_executions_a_stopped_server_left_get_their_row_at_the_next_start(org_store: Store) -> None:
    audit = AuditLog(org_store, KEY, clock=Clock())
    await org_store.executions.add(replace(_execution("trc_left"), status="running", node_id="node_1",
                                           exit_code=None, completed_at=None))
    assert await NodeRecovery(org_store, "node_1", audit).recover() == 1
    [row] = (await audit.search(AuditFilters(trace_id="trc_left"))).rows
    assert (row.detail["status"], row.detail["error"], row.detail["exit_code"]) == ("failed", "interrupted", -1)
    assert row.detail["code_sha256"] is None and row.detail["metadata"] == {"team": "red", "run": "7"}
    assert await audit.verify() == []


async def test_a_cut_end_with_its_head_moved_back_shows_against_saved_heads(org_store: Store) -> None:
    audit = AuditLog(org_store, KEY, clock=Clock())
    await _fill(audit, 5)
    saved = await audit.heads()
    rows = [r async for r in org_store.audit.chain("org_a")]
    await _break(org_store, delete(audit_log).where(audit_log.c.org_id == "org_a", audit_log.c.seq >= 4))
    await _break(org_store, update(audit_heads).where(audit_heads.c.org_id == "org_a").values(seq=3, hash=rows[2].hash))
    assert await audit.verify() == []  # the chain alone cannot show it (docs/audit.md)
    [found] = await audit.verify(saved)
    assert (found.org_id, found.seq) == ("org_a", 4) and "cut" in found.problem
    await _fill(audit, 3)  # grown again to the same length: a rewritten row 5, not the saved one
    [found] = await audit.verify(saved)
    assert (found.org_id, found.seq) == ("org_a", 5) and "rewritten" in found.problem
    await _fill(audit, 1)
    assert await audit.verify(await audit.heads()) == []


async def test_retention_prunes_in_batches_each_vouched_for(org_store: Store) -> None:
    clock = Clock()
    audit = AuditLog(org_store, KEY, clock=clock)
    await _fill(audit, 12)
    clock.at += timedelta(days=2)

    def prune_row(seq: int, digest: str, count: int) -> AuditRow:
        return audit._row("admin", CLI_ACTOR, "audit.prune", org_id="org_a", target="audit/org_a",
                          detail={"before": None, "after": {"pruned_seq": seq, "pruned_hash": digest, "deleted": count}})

    assert await org_store.audit.prune("org_a", clock.at - timedelta(days=1), prune_row, audit.seal, batch=5) == 12
    rows = [r async for r in org_store.audit.chain("org_a")]
    assert [r.detail["after"]["pruned_seq"] for r in rows] == [5, 10, 12]  # three transactions
    assert await audit.verify() == []
