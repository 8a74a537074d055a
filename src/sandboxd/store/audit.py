"""The audit log's SQL: append to a chain under its head row's lock, read chains in order,
search, and delete a chain's prefix for retention (service/audit.py holds the rules and the key).

Appenders serialize per chain on the chain's `audit_heads` row: the first statement of an
append writes that row (an INSERT that does nothing when it is there), so on SQLite the
transaction holds the database's write lock from its first statement on (no stale snapshot to
upgrade), and on PostgreSQL the row is then locked (`SELECT ... FOR UPDATE`) until commit. A
server and a CLI sharing the database therefore never hand out the same seq or fork a chain.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .db import as_utc
from .records import AuditHead, AuditRow
from .tables import audit_heads, audit_log, orgs

#: Computes a row's hash from the row (its seq and prev_hash set).
Seal = Callable[[AuditRow], str]
#: Builds the pruning row once the prefix through (seq, hash) is deleted.
PruneRow = Callable[[int, str, int], AuditRow]

_COLUMNS = tuple(f.name for f in fields(AuditRow))


@dataclass(frozen=True)
class AuditFilters:
    """What `search` and `export` select; every field narrows, None: any."""

    org_id: str | None = None
    trace_id: str | None = None
    key_id: str | None = None
    kind: str | None = None
    action: str | None = None
    #: The execution's metadata: every key must have this value.
    metadata: dict[str, str] = field(default_factory=dict)
    since: datetime | None = None
    until: datetime | None = None
    #: Rows after this (at, org_id, seq) in the order asked for.
    after: tuple[datetime, str, int] | None = None
    newest_first: bool = False


def _row(mapping: Any) -> AuditRow:
    values = {name: mapping[name] for name in _COLUMNS}
    values["at"] = as_utc(values["at"])
    return AuditRow(**values)


def _head(mapping: Any) -> AuditHead:
    return AuditHead(**{f.name: mapping[f.name] for f in fields(AuditHead)})


async def _lock_head(conn: AsyncConnection, org_id: str) -> AuditHead:
    """The chain's head, locked for this transaction (created at 0 for a new chain): one
    statement, an upsert that writes the row (no change) and returns it. Writing is what locks:
    SQLite's write lock is taken by the statement itself, PostgreSQL's ON CONFLICT DO UPDATE
    locks the row as SELECT ... FOR UPDATE would."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    values = {"org_id": org_id, "seq": 0, "hash": "", "pruned_seq": 0, "pruned_hash": ""}
    insert = dialect.insert(audit_heads).values(**values)
    query = insert.on_conflict_do_update(
        index_elements=[audit_heads.c.org_id], set_={"seq": audit_heads.c.seq}
    ).returning(*audit_heads.c)
    return _head((await conn.execute(query)).mappings().one())


async def append_in(conn: AsyncConnection, row: AuditRow, seal: Seal) -> AuditRow:
    """Append `row` to its chain inside the caller's transaction; returns it as stored."""
    head = await _lock_head(conn, row.org_id)
    row = replace(row, seq=head.seq + 1, prev_hash=head.hash)
    row = replace(row, hash=seal(row))
    await conn.execute(audit_log.insert().values(**{name: getattr(row, name) for name in _COLUMNS}))
    await conn.execute(
        update(audit_heads).where(audit_heads.c.org_id == row.org_id).values(seq=row.seq, hash=row.hash)
    )
    return row


def _where(filters: AuditFilters) -> list[Any]:
    c = audit_log.c
    where: list[Any] = []
    if filters.org_id is not None:
        where.append(c.org_id == filters.org_id)
    if filters.trace_id is not None:
        where.append(c.trace_id == filters.trace_id)
    if filters.key_id is not None:
        where.append(c.key_id == filters.key_id)
    if filters.kind is not None:
        where.append(c.kind == filters.kind)
    if filters.action is not None:
        where.append(c.action == filters.action)
    for key, value in sorted(filters.metadata.items()):
        where.append(c.detail[("metadata", key)].as_string() == value)
    if filters.since is not None:
        where.append(c.at >= filters.since)
    if filters.until is not None:
        where.append(c.at < filters.until)
    if filters.after is not None:
        at, org_id, seq = filters.after
        if filters.newest_first:
            where.append(or_(c.at < at, and_(c.at == at, or_(c.org_id < org_id, and_(c.org_id == org_id, c.seq < seq)))))
        else:
            where.append(or_(c.at > at, and_(c.at == at, or_(c.org_id > org_id, and_(c.org_id == org_id, c.seq > seq)))))
    return where


class AuditRepo:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def append(self, row: AuditRow, seal: Seal) -> AuditRow:
        """Append `row` to its chain in a transaction of its own."""
        async with self._engine.begin() as conn:
            return await append_in(conn, row, seal)

    async def heads(self) -> list[AuditHead]:
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(audit_heads).order_by(audit_heads.c.org_id))).mappings().all()
        return [_head(r) for r in rows]

    async def chains(self) -> list[str]:
        """Every chain with a head or a row (a row without a head is itself a break)."""
        async with self._engine.connect() as conn:
            found = set((await conn.execute(select(audit_heads.c.org_id))).scalars())
            found.update((await conn.execute(select(audit_log.c.org_id).distinct())).scalars())
        return sorted(found)

    async def head(self, org_id: str) -> AuditHead | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(audit_heads).where(audit_heads.c.org_id == org_id))).mappings().first()
        return _head(row) if row is not None else None

    async def row(self, org_id: str, seq: int) -> AuditRow | None:
        query = select(audit_log).where(audit_log.c.org_id == org_id, audit_log.c.seq == seq)
        async with self._engine.connect() as conn:
            found = (await conn.execute(query)).mappings().first()
        return _row(found) if found is not None else None

    async def chain(self, org_id: str, *, batch: int = 1000) -> AsyncIterator[AuditRow]:
        """A chain's rows in seq order, `batch` at a time (a long chain is never all in memory)."""
        after = -1
        while True:
            query = (
                select(audit_log)
                .where(audit_log.c.org_id == org_id, audit_log.c.seq > after)
                .order_by(audit_log.c.seq)
                .limit(batch)
            )
            async with self._engine.connect() as conn:
                rows = [_row(r) for r in (await conn.execute(query)).mappings().all()]
            for row in rows:
                yield row
            if len(rows) < batch:
                return
            after = rows[-1].seq

    async def search(self, filters: AuditFilters, limit: int) -> list[AuditRow]:
        c = audit_log.c
        order = (c.at.desc(), c.org_id.desc(), c.seq.desc()) if filters.newest_first else (c.at, c.org_id, c.seq)
        query = select(audit_log).where(*_where(filters)).order_by(*order).limit(limit)
        async with self._engine.connect() as conn:
            return [_row(r) for r in (await conn.execute(query)).mappings().all()]

    async def prune(
        self, org_id: str, before: datetime, prune_row: PruneRow, seal: Seal, *, batch: int = 5000
    ) -> int:
        """Delete the chain's rows up to the last one dated before `before` (a prefix, so what
        is kept still links up). Each transaction deletes at most `batch` rows, moves the anchor
        to the last of them and appends `prune_row(seq, hash, n)` saying so, so writers are never
        held up for long and the chain verifies after every commit. Returns how many rows went."""
        async with self._engine.connect() as conn:
            last = (await conn.execute(
                select(func.max(audit_log.c.seq)).where(audit_log.c.org_id == org_id, audit_log.c.at < before)
            )).scalar()
        if last is None:
            return 0
        deleted = 0
        while True:
            async with self._engine.begin() as conn:
                head = await _lock_head(conn, org_id)
                if head.pruned_seq >= last:
                    return deleted
                upto = min(int(last), head.pruned_seq + batch)
                found = (await conn.execute(
                    select(audit_log.c.seq, audit_log.c.hash)
                    .where(audit_log.c.org_id == org_id, audit_log.c.seq <= upto)
                    .order_by(audit_log.c.seq.desc())
                    .limit(1)
                )).first()
                if found is None:  # nothing left below it (deleted by hand): verify says so
                    return deleted
                seq, digest = int(found.seq), str(found.hash)
                count = int((await conn.execute(
                    delete(audit_log).where(audit_log.c.org_id == org_id, audit_log.c.seq <= seq)
                )).rowcount)
                await conn.execute(
                    update(audit_heads).where(audit_heads.c.org_id == org_id).values(pruned_seq=seq, pruned_hash=digest)
                )
                await append_in(conn, prune_row(seq, digest, count), seal)
            deleted += count

    async def set_code(self, org_id: str, on: bool) -> None:
        """Whether the organization's execution rows keep the code (orgs.audit_code)."""
        async with self._engine.begin() as conn:
            await conn.execute(update(orgs).where(orgs.c.id == org_id).values(audit_code=on))

    async def count(self, org_id: str | None = None) -> int:
        query = select(func.count()).select_from(audit_log)
        if org_id is not None:
            query = query.where(audit_log.c.org_id == org_id)
        async with self._engine.connect() as conn:
            return int((await conn.execute(query)).scalar() or 0)

