"""Repositories: the only code that writes SQL. One class per table, Core queries."""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy import func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from .audit import AuditRepo
from .base import DuplicateError, Repo, RollBack, to_record
from .db import utcnow
from .history import ExecutionHistory
from .members import AdminTokenRepo, ConsoleSessionRepo, MemberRepo
from .plans import PlanRepo
from .records import (
    ApiKey,
    Connector,
    Execution,
    Image,
    Org,
    Sandbox,
    StorageBinding,
    StorageConnection,
    Thread,
    ThreadSession,
    Volume,
    VolumeBinding,
    WebhookDelivery,
)
from .tables import (
    api_keys,
    connectors,
    execution_events,
    executions,
    images,
    key_connectors,
    key_storage,
    key_volumes,
    orgs,
    registry_credentials,
    sandboxes,
    storage_connections,
    thread_sessions,
    threads,
    volumes,
    webhook_deliveries,
    webhook_secrets,
)


ORG_GID_BASE = 2_000_000


class OrgRepo(Repo):
    async def add(self, org_id: str, name: str, plan: str | None = None) -> Org:
        """A new organization with the next free host gid (its volumes' group); `plan` None:
        the installation's default plan."""
        async with self._engine.connect() as conn:
            highest = (await conn.execute(select(func.max(orgs.c.gid)))).scalar()
        gid = max(ORG_GID_BASE, highest or 0) + 1
        org = Org(id=org_id, name=name, created_at=utcnow(), gid=gid, plan=plan)
        await self._insert(orgs, org.__dict__)
        return org

    async def set_plan(self, org_id: str, plan: str | None) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(update(orgs).where(orgs.c.id == org_id).values(plan=plan))
        return result.rowcount > 0

    async def get(self, org_id: str) -> Org | None:
        return await self._one(Org, select(orgs).where(orgs.c.id == org_id))

    async def by_name(self, name: str) -> Org | None:
        return await self._one(Org, select(orgs).where(orgs.c.name == name))

    async def list(self) -> list[Org]:
        return await self._all(Org, select(orgs).order_by(orgs.c.created_at))


class SandboxRepo(Repo):
    async def add(self, sandbox: Sandbox) -> Sandbox:
        await self._insert(sandboxes, sandbox.__dict__)
        return sandbox

    async def get(self, sandbox_id: str) -> Sandbox | None:
        return await self._one(Sandbox, select(sandboxes).where(sandboxes.c.id == sandbox_id))

    async def by_name(self, org_id: str, name: str) -> Sandbox | None:
        query = select(sandboxes).where(sandboxes.c.org_id == org_id, sandboxes.c.name == name)
        return await self._one(Sandbox, query)

    async def list(self, org_id: str | None = None) -> list[Sandbox]:
        query = select(sandboxes).order_by(sandboxes.c.created_at)
        if org_id is not None:
            query = query.where(sandboxes.c.org_id == org_id)
        return await self._all(Sandbox, query)

    async def delete(self, sandbox_id: str) -> bool:
        async with self._engine.begin() as conn:
            result = await conn.execute(sandboxes.delete().where(sandboxes.c.id == sandbox_id))
        return result.rowcount > 0

    async def set_image(self, sandbox_id: str, image_id: str | None) -> bool:
        """False when the image no longer exists (one statement: a delete cannot slip between)."""
        query = update(sandboxes).where(sandboxes.c.id == sandbox_id).values(image_id=image_id)
        if image_id is not None:
            query = query.where(select(images.c.id).where(images.c.id == image_id).exists())
        async with self._engine.begin() as conn:
            return (await conn.execute(query)).rowcount > 0

    async def update(self, sandbox_id: str, **values: Any) -> bool:
        """Change a config's limits (and image: False when that image no longer exists)."""
        query = update(sandboxes).where(sandboxes.c.id == sandbox_id).values(**values)
        if values.get("image_id") is not None:
            query = query.where(select(images.c.id).where(images.c.id == values["image_id"]).exists())
        async with self._engine.begin() as conn:
            return (await conn.execute(query)).rowcount > 0

    async def using_image(self, image_id: str) -> builtins.list[Sandbox]:
        return await self._all(Sandbox, select(sandboxes).where(sandboxes.c.image_id == image_id))

    async def in_use(self, sandbox_id: str) -> bool:
        query = select(api_keys.c.id).where(
            api_keys.c.sandbox_id == sandbox_id, api_keys.c.revoked_at.is_(None)
        )
        async with self._engine.connect() as conn:
            return (await conn.execute(query.limit(1))).first() is not None


class KeyRepo(Repo):
    async def add(self, key: ApiKey) -> ApiKey:
        await self._insert(api_keys, key.__dict__)
        return key

    async def get(self, key_id: str) -> ApiKey | None:
        return await self._one(ApiKey, select(api_keys).where(api_keys.c.id == key_id))

    async def by_digest(self, digest: str) -> ApiKey | None:
        return await self._one(ApiKey, select(api_keys).where(api_keys.c.digest == digest))

    async def list(self, org_id: str | None = None) -> list[ApiKey]:
        query = select(api_keys).order_by(api_keys.c.created_at)
        if org_id is not None:
            query = query.where(api_keys.c.org_id == org_id)
        return await self._all(ApiKey, query)

    async def revoke(self, key_id: str) -> bool:
        query = (
            update(api_keys)
            .where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(query)
        return result.rowcount > 0

    async def touch(self, key_id: str, at: datetime, *, older_than: datetime) -> None:
        """Record a use (one statement, skipped when a recent one is recorded already)."""
        query = (
            update(api_keys)
            .where(api_keys.c.id == key_id)
            .where(or_(api_keys.c.last_used_at.is_(None), api_keys.c.last_used_at < older_than))
            .values(last_used_at=at)
        )
        async with self._engine.begin() as conn:
            await conn.execute(query)


def _storable(values: dict[str, Any]) -> dict[str, Any]:
    """PostgreSQL text cannot hold NUL; program output may. Stored as U+FFFD (JSON keeps it)."""
    return {
        k: v.replace("\x00", "\ufffd") if k in ("stdout", "stderr") and isinstance(v, str) else v
        for k, v in values.items()
    }


_UNFINISHED = ("queued", "running", "cancelling")
_STREAMS = ("stdout", "stderr")
EventRow = tuple[int, str, dict[str, Any]]


def _event_row(trace_id: str, seq: int, type: str, body: dict[str, Any], *, compact_result: bool) -> dict[str, Any]:
    """An event as stored: output as raw UTF-8 bytes, anything else as JSON; a result's
    stdout/stderr left out when `compact_result` (they are rebuilt from the output)."""
    row: dict[str, Any] = {"trace_id": trace_id, "seq": seq, "type": type, "body": None, "stream": None, "data": None}
    if type == "output":
        row.update(stream=body["stream"], data=body["data"].encode("utf-8", errors="surrogatepass"))
    elif type == "result" and compact_result:
        result = {k: v for k, v in body["result"].items() if k not in _STREAMS}
        row["body"] = {**body, "result": result}
    else:
        row["body"] = body
    return row


async def _insert_events(conn: AsyncConnection, trace_id: str, rows: list[dict[str, Any]]) -> None:
    """Insert event rows, skipping seqs already stored: a write whose commit reported an error
    may have committed, and its retry must not fail on the primary key."""
    if not rows:
        return
    query = select(execution_events.c.seq).where(
        execution_events.c.trace_id == trace_id, execution_events.c.seq.in_([r["seq"] for r in rows])
    )
    stored = set((await conn.execute(query)).scalars())
    if new := [r for r in rows if r["seq"] not in stored]:
        await conn.execute(execution_events.insert(), new)


def _event(row: Any) -> EventRow:
    if row.data is not None:
        return row.seq, row.type, {"stream": row.stream, "data": row.data.decode("utf-8", errors="surrogatepass")}
    return row.seq, row.type, row.body


async def _stored_output(conn: AsyncConnection, trace_id: str) -> dict[str, str]:
    """stdout and stderr of an execution stored with `output_in_events`: its output events'
    text, then the row's rest (output past the events cap)."""
    query = (
        select(execution_events.c.stream, execution_events.c.data)
        .where(execution_events.c.trace_id == trace_id, execution_events.c.type == "output")
        .order_by(execution_events.c.seq)
    )
    parts: dict[str, list[bytes]] = {s: [] for s in _STREAMS}
    for row in (await conn.execute(query)).all():
        if row.data is not None:
            parts[row.stream].append(row.data)
    rest = (await conn.execute(select(executions.c.stdout, executions.c.stderr).where(executions.c.trace_id == trace_id))).first()
    tails = {"stdout": rest.stdout if rest else "", "stderr": rest.stderr if rest else ""}
    return {s: b"".join(parts[s]).decode("utf-8", errors="surrogatepass") + (tails[s] or "") for s in _STREAMS}


def _rests(values: dict[str, Any], logged: dict[str, str]) -> dict[str, str] | None:
    """What of stdout/stderr came after the output events, or None if the events are not
    their beginning (e.g. a platform failure reports no output after some was streamed)."""
    rests = {}
    for stream in _STREAMS:
        full = values.get(stream) or ""
        if not full.startswith(logged[stream]):
            return None
        rests[stream] = full[len(logged[stream]):]
    return rests


class ExecutionRepo(Repo):
    async def add(self, execution: Execution) -> None:
        await self._insert(executions, _storable(execution.__dict__))

    async def update(self, trace_id: str, **values: Any) -> None:
        values = _storable(values)
        async with self._engine.begin() as conn:
            await conn.execute(
                update(executions).where(executions.c.trace_id == trace_id).values(**values)
            )

    async def finish(
        self,
        trace_id: str,
        events: list[EventRow],
        logged: dict[str, str],
        *,
        then: Callable[[AsyncConnection], Awaitable[None]] | None = None,
        **values: Any,
    ) -> None:
        """The final row and the rest of the event log, in one transaction; `then` runs last in
        that transaction (the execution's audit row is written there).

        `events` are those not stored yet; `logged` is the text of all the log's output
        events per stream. When stdout/stderr begin with it (the rule), the output is stored
        once: in the output events, the row keeping only what came after them. `also` writes
        more in the same transaction (the organization's usage: store/plans.py).
        """
        rests = _rests(values, logged)
        if rests is not None:
            values = {**values, **rests, "output_in_events": True}
        rows = [_event_row(trace_id, *e, compact_result=rests is not None) for e in events]
        async with self._engine.begin() as conn:
            await conn.execute(
                update(executions).where(executions.c.trace_id == trace_id).values(**_storable(values))
            )
            await _insert_events(conn, trace_id, rows)
            if then is not None:
                await then(conn)

    @staticmethod
    async def get_in(conn: AsyncConnection, trace_id: str) -> Execution:
        """The row inside a transaction, without its output (stdout/stderr as stored)."""
        row = (await conn.execute(select(executions).where(executions.c.trace_id == trace_id))).mappings().one()
        return to_record(Execution, row)

    async def move(self, trace_id: str, *, to: str, only_from: tuple[str, ...]) -> bool:
        """Change the status only if it is one of `only_from` (no lost update races)."""
        query = (
            update(executions)
            .where(executions.c.trace_id == trace_id, executions.c.status.in_(only_from))
            .values(status=to)
        )
        async with self._engine.begin() as conn:
            result = await conn.execute(query)
        return result.rowcount > 0

    async def get(self, trace_id: str) -> Execution | None:
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(executions).where(executions.c.trace_id == trace_id))).mappings().first()
            if row is None:
                return None
            if not row["output_in_events"]:
                return to_record(Execution, row)
            output = _storable(await _stored_output(conn, trace_id))  # as the row always showed it
        return to_record(Execution, {**row, **output})

    async def fail_unfinished(
        self, *, node_id: str, error: str, at: datetime,
        then: Callable[[AsyncConnection, str], Awaitable[None]] | None = None,
    ) -> int:
        """On start: executions the stopped server `node_id` left unfinished (and those of no
        node, from before nodes were recorded) end failed with `error`. Their log goes on after
        its last stored event (what any client may have seen) with a status and a result
        event, and the output stored so far is their output. Other nodes' are left alone.
        `then(conn, trace_id)` runs in each one's transaction (its audit row)."""
        async with self._engine.connect() as conn:
            query = select(executions.c.trace_id).where(
                executions.c.status.in_(_UNFINISHED),
                or_(executions.c.node_id == node_id, executions.c.node_id.is_(None)),
            )
            trace_ids = list((await conn.execute(query)).scalars())
        for trace_id in trace_ids:
            async with self._engine.begin() as conn:
                last = (await conn.execute(
                    select(func.max(execution_events.c.seq)).where(execution_events.c.trace_id == trace_id)
                )).scalar() or 0
                result = {"success": False, "exit_code": -1, "error": error}
                rows = [
                    _event_row(trace_id, last + 1, "status", {"trace_id": trace_id, "status": "failed"},
                               compact_result=True),
                    _event_row(trace_id, last + 2, "result", {"trace_id": trace_id, "status": "failed", "result": result,
                               "output_truncated": False}, compact_result=True),
                ]
                await conn.execute(execution_events.insert(), rows)
                await conn.execute(
                    update(executions)
                    .where(executions.c.trace_id == trace_id, executions.c.status.in_(_UNFINISHED))
                    .values(status="failed", exit_code=-1, error=error, completed_at=at, stdout="", stderr="",
                            output_in_events=True)
                )
                if then is not None:  # its audit row, in the same transaction
                    await then(conn, trace_id)
        return len(trace_ids)

    async def delete_created_before(self, before: datetime, *, batch: int = 500) -> int:
        """Delete finished executions created before `before`, with their event logs and
        webhook deliveries; a batch per transaction, so writers are never held up for long."""
        deleted = 0
        while True:
            query = (
                select(executions.c.trace_id)
                .where(executions.c.created_at < before, executions.c.status.not_in(_UNFINISHED))
                .limit(batch)
            )
            async with self._engine.begin() as conn:
                ids = list((await conn.execute(query)).scalars())
                if not ids:
                    return deleted
                await conn.execute(execution_events.delete().where(execution_events.c.trace_id.in_(ids)))
                await conn.execute(webhook_deliveries.delete().where(webhook_deliveries.c.trace_id.in_(ids)))
                await conn.execute(executions.delete().where(executions.c.trace_id.in_(ids)))
            deleted += len(ids)


class EventRepo(Repo):
    """Execution event logs: written in batches while a run goes on, the rest with its end."""

    async def add(self, trace_id: str, events: list[EventRow]) -> None:
        rows = [_event_row(trace_id, *e, compact_result=False) for e in events]
        async with self._engine.begin() as conn:
            await _insert_events(conn, trace_id, rows)

    async def last(self, trace_id: str) -> tuple[int, str] | None:
        """The seq and type of the last stored event, or None if none is stored."""
        query = (
            select(execution_events.c.seq, execution_events.c.type)
            .where(execution_events.c.trace_id == trace_id)
            .order_by(execution_events.c.seq.desc())
            .limit(1)
        )
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return (row.seq, row.type) if row else None

    async def after(self, trace_id: str, after_seq: int) -> list[EventRow]:
        query = (
            select(execution_events)
            .where(execution_events.c.trace_id == trace_id, execution_events.c.seq > after_seq)
            .order_by(execution_events.c.seq)
        )
        async with self._engine.connect() as conn:
            events = [_event(r) for r in (await conn.execute(query)).all()]
            if events and events[-1][1] == "result" and "stdout" not in events[-1][2]["result"]:
                seq, type, body = events[-1]
                output = await _stored_output(conn, trace_id)
                result = {"success": body["result"]["success"], **output, **body["result"]}
                events[-1] = (seq, type, {**body, "result": result})
        return events


class WebhookRepo(Repo):
    async def secret(self, org_id: str) -> str | None:
        query = select(webhook_secrets.c.ciphertext).where(webhook_secrets.c.org_id == org_id)
        async with self._engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return row.ciphertext if row else None

    async def set_secret(self, org_id: str, ciphertext: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(webhook_secrets.delete().where(webhook_secrets.c.org_id == org_id))
            await conn.execute(
                webhook_secrets.insert().values(org_id=org_id, ciphertext=ciphertext, created_at=utcnow())
            )

    async def add_delivery(self, delivery: WebhookDelivery) -> None:
        await self._insert(webhook_deliveries, delivery.__dict__)

    async def claim(self, delivery_id: str, *, attempts: int, owner: str, now: datetime, until: datetime) -> bool:
        """Take the lease on a pending, due delivery whose lease is free or expired, as read
        with `attempts` (so a stale read cannot claim it again); False if another has it.
        One conditional UPDATE: of two servers claiming at once, one changes the row."""
        query = (
            update(webhook_deliveries)
            .where(
                webhook_deliveries.c.id == delivery_id,
                webhook_deliveries.c.status == "pending",
                webhook_deliveries.c.attempts == attempts,
                webhook_deliveries.c.next_attempt_at <= now,
                or_(webhook_deliveries.c.claim_expires_at.is_(None), webhook_deliveries.c.claim_expires_at < now),
            )
            .values(claimed_by=owner, claim_expires_at=until)
        )
        async with self._engine.begin() as conn:
            return (await conn.execute(query)).rowcount == 1

    async def settle(self, delivery_id: str, *, owner: str, **values: Any) -> bool:
        """Record an attempt and free the lease, if `owner` still holds it; False if not."""
        query = (
            update(webhook_deliveries)
            .where(webhook_deliveries.c.id == delivery_id, webhook_deliveries.c.claimed_by == owner)
            .values(**values, claimed_by=None, claim_expires_at=None)
        )
        async with self._engine.begin() as conn:
            return (await conn.execute(query)).rowcount == 1

    async def pending(self) -> list[WebhookDelivery]:
        query = (
            select(webhook_deliveries)
            .where(webhook_deliveries.c.status == "pending")
            .order_by(webhook_deliveries.c.next_attempt_at)
        )
        return await self._all(WebhookDelivery, query)

    async def delivery_for(self, trace_id: str) -> WebhookDelivery | None:
        query = select(webhook_deliveries).where(webhook_deliveries.c.trace_id == trace_id)
        return await self._one(WebhookDelivery, query)


class SessionRepo(Repo):
    """What became of each thread's persistent sessions (service/sessions.py)."""

    @staticmethod
    def _key(org_id: str, thread_id: str, language: str) -> Any:
        c = thread_sessions.c
        return (c.org_id == org_id) & (c.thread_id == thread_id) & (c.language == language)

    async def get(self, org_id: str, thread_id: str, language: str) -> ThreadSession | None:
        query = select(thread_sessions).where(self._key(org_id, thread_id, language))
        return await self._one(ThreadSession, query)

    async def live(self, org_id: str, thread_id: str, language: str, token: str) -> None:
        """A session started with `token`."""
        values = {"state": "live", "reason": None, "token": token, "updated_at": utcnow()}
        key = self._key(org_id, thread_id, language)
        async with self._engine.begin() as conn:
            if (await conn.execute(update(thread_sessions).where(key).values(**values))).rowcount:
                return
        try:
            await self._insert(
                thread_sessions, {"org_id": org_id, "thread_id": thread_id, "language": language, **values}
            )
        except DuplicateError:  # added meanwhile: the update wins
            async with self._engine.begin() as conn:
                await conn.execute(update(thread_sessions).where(key).values(**values))

    async def end(self, org_id: str, thread_id: str, language: str, reason: str, token: str) -> None:
        """The session of `token` ended for `reason` (not if another one replaced it)."""
        query = (
            update(thread_sessions)
            .where(self._key(org_id, thread_id, language), thread_sessions.c.token == token)
            .values(state="ended", reason=reason, updated_at=utcnow())
        )
        async with self._engine.begin() as conn:
            await conn.execute(query)

    async def end_live(self, reason: str) -> int:
        """On start: the sessions a stopped server left live ended for `reason` (a restart)."""
        query = (
            update(thread_sessions)
            .where(thread_sessions.c.state == "live")
            .values(state="ended", reason=reason, updated_at=utcnow())
        )
        async with self._engine.begin() as conn:
            return int((await conn.execute(query)).rowcount)

    async def forget(self, org_id: str, thread_id: str) -> None:
        """The thread is deleted: its sessions' history goes with it."""
        c = thread_sessions.c
        async with self._engine.begin() as conn:
            await conn.execute(thread_sessions.delete().where(c.org_id == org_id, c.thread_id == thread_id))


class ThreadRepo(Repo):
    """Threads; a deleted one stays as a tombstone, so uids only ever go up."""

    _live = threads.c.deleted_at.is_(None)

    async def get(self, org_id: str, thread_id: str) -> Thread | None:
        query = select(threads).where(
            threads.c.org_id == org_id, threads.c.thread_id == thread_id, self._live
        )
        return await self._one(Thread, query)

    async def add(self, org_id: str, thread_id: str, uid_base: int) -> Thread:
        """A new thread (or a deleted one again) with the next never-used host uid."""
        for _ in range(20):
            async with self._engine.connect() as conn:
                highest = (await conn.execute(select(func.max(threads.c.uid)))).scalar()
            now = utcnow()
            thread = Thread(org_id, thread_id, max(uid_base, (highest or 0) + 1), now, now)
            revive = (
                update(threads)
                .where(threads.c.org_id == org_id, threads.c.thread_id == thread_id)
                .where(threads.c.deleted_at.is_not(None))
                .values(uid=thread.uid, created_at=now, last_used_at=now, deleted_at=None)
            )
            try:
                async with self._engine.begin() as conn:
                    if (await conn.execute(revive)).rowcount == 0:
                        await conn.execute(threads.insert().values(**thread.__dict__))
                return thread
            except IntegrityError:
                existing = await self.get(org_id, thread_id)
                if existing is not None:
                    return existing
        raise DuplicateError("could not allocate a thread uid")

    async def touch(self, org_id: str, thread_id: str, image_digest: str | None = None) -> None:
        """Used now; with `image_digest`, on that image."""
        values: dict[str, Any] = {"last_used_at": utcnow()}
        if image_digest is not None:
            values["image_digest"] = image_digest
        query = (
            update(threads)
            .where(threads.c.org_id == org_id, threads.c.thread_id == thread_id)
            .values(**values)
        )
        async with self._engine.begin() as conn:
            await conn.execute(query)

    async def list(self, org_id: str | None = None) -> list[Thread]:
        query = select(threads).where(self._live).order_by(threads.c.created_at)
        if org_id is not None:
            query = query.where(threads.c.org_id == org_id)
        return await self._all(Thread, query)

    async def count(self, org_id: str | None = None) -> int:
        """Live threads of one organization, or of all."""
        query = select(func.count()).select_from(threads).where(self._live)
        if org_id is not None:
            query = query.where(threads.c.org_id == org_id)
        async with self._engine.connect() as conn:
            return int((await conn.execute(query)).scalar() or 0)

    # builtins.list: below `def list`, `list` in this class names that method.
    async def idle_since(self, before: datetime) -> builtins.list[Thread]:
        return await self._all(Thread, select(threads).where(threads.c.last_used_at < before, self._live))

    async def delete(self, org_id: str, thread_id: str) -> None:
        query = (
            update(threads)
            .where(threads.c.org_id == org_id, threads.c.thread_id == thread_id)
            .values(deleted_at=utcnow())
        )
        async with self._engine.begin() as conn:
            await conn.execute(query)


class VolumeRepo(Repo):
    async def add(self, volume: Volume) -> Volume:
        await self._insert(volumes, volume.__dict__)
        return volume

    async def by_slug(self, org_id: str, slug: str) -> Volume | None:
        return await self._one(Volume, select(volumes).where(volumes.c.org_id == org_id, volumes.c.slug == slug))

    async def list(self, org_id: str) -> list[Volume]:
        return await self._all(Volume, select(volumes).where(volumes.c.org_id == org_id).order_by(volumes.c.slug))

    async def delete(self, volume_id: str) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(key_volumes.delete().where(key_volumes.c.volume_id == volume_id))
            await conn.execute(volumes.delete().where(volumes.c.id == volume_id))

    async def bind(self, binding: VolumeBinding) -> None:
        await self._insert(key_volumes, binding.__dict__)

    async def rebind(self, binding: VolumeBinding) -> None:
        """Bind, or change the mode of an existing binding, in one transaction."""
        async with self._engine.begin() as conn:
            await conn.execute(
                key_volumes.delete().where(
                    key_volumes.c.key_id == binding.key_id,
                    key_volumes.c.volume_id == binding.volume_id,
                )
            )
            await conn.execute(key_volumes.insert().values(**binding.__dict__))

    async def unbind(self, key_id: str, volume_id: str) -> bool:
        query = key_volumes.delete().where(
            key_volumes.c.key_id == key_id, key_volumes.c.volume_id == volume_id
        )
        async with self._engine.begin() as conn:
            return (await conn.execute(query)).rowcount > 0

    # builtins.list: below `def list`, `list` in this class names that method.
    async def bindings(self, key_id: str) -> builtins.list[tuple[Volume, bool]]:
        query = (
            select(volumes, key_volumes.c.read_only)
            .join(key_volumes, key_volumes.c.volume_id == volumes.c.id)
            .where(key_volumes.c.key_id == key_id)
            .order_by(volumes.c.slug)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [(to_record(Volume, r), bool(r["read_only"])) for r in rows]

    async def bound_to_active_keys(self, volume_id: str) -> bool:
        query = (
            select(key_volumes.c.key_id)
            .join(api_keys, api_keys.c.id == key_volumes.c.key_id)
            .where(key_volumes.c.volume_id == volume_id, api_keys.c.revoked_at.is_(None))
            .limit(1)
        )
        async with self._engine.connect() as conn:
            return (await conn.execute(query)).first() is not None


class ImageRepo(Repo):
    async def add(self, image: Image) -> Image:
        await self._insert(images, image.__dict__)
        return image

    async def get(self, image_id: str) -> Image | None:
        return await self._one(Image, select(images).where(images.c.id == image_id))

    async def visible(self, org_id: str | None, name: str) -> Image | None:
        """The image `name` as `org_id` sees it: its own, else a built-in one."""
        query = select(images).where(images.c.name == name)
        query = query.where(or_(images.c.org_id.is_(None), images.c.org_id == org_id) if org_id else images.c.org_id.is_(None))
        rows = await self._all(Image, query)
        return next((i for i in rows if i.org_id is not None), rows[0] if rows else None)

    async def list(self, org_id: str | None = None) -> builtins.list[Image]:
        """An organization's images and the built-in ones; no org: every image."""
        query = select(images).order_by(images.c.created_at)
        if org_id is not None:
            query = query.where(or_(images.c.org_id == org_id, images.c.org_id.is_(None)))
        return await self._all(Image, query)

    async def count(self, org_id: str) -> int:
        query = select(func.count()).select_from(images).where(images.c.org_id == org_id)
        async with self._engine.connect() as conn:
            return int((await conn.execute(query)).scalar() or 0)

    async def delete_unused(self, image_id: str) -> bool:
        """Delete the image unless a sandbox config uses it (one statement: a config cannot be
        pointed at it in between); False when one does."""
        used = select(sandboxes.c.id).where(sandboxes.c.image_id == image_id).exists()
        async with self._engine.begin() as conn:
            return (await conn.execute(images.delete().where(images.c.id == image_id, ~used))).rowcount > 0


class RegistryCredentialRepo(Repo):
    """Sealed (encrypted) registry credentials, one per organization and registry host."""

    async def put(self, org_id: str, registry: str, sealed: bytes) -> None:
        key = (registry_credentials.c.org_id == org_id) & (registry_credentials.c.registry == registry)
        async with self._engine.begin() as conn:
            await conn.execute(registry_credentials.delete().where(key))
            await conn.execute(
                registry_credentials.insert().values(org_id=org_id, registry=registry, sealed=sealed, updated_at=utcnow())
            )

    async def get(self, org_id: str, registry: str) -> bytes | None:
        query = select(registry_credentials.c.sealed).where(
            registry_credentials.c.org_id == org_id, registry_credentials.c.registry == registry
        )
        async with self._engine.connect() as conn:
            value = (await conn.execute(query)).scalar()
        return bytes(value) if value is not None else None


class StorageRepo(Repo):
    """Storage connections and the keys' bindings to them."""

    async def add(self, connection: StorageConnection) -> StorageConnection:
        await self._insert(storage_connections, connection.__dict__)
        return connection

    async def get(self, connection_id: str) -> StorageConnection | None:
        return await self._one(StorageConnection, select(storage_connections).where(storage_connections.c.id == connection_id))

    async def by_name(self, org_id: str, name: str) -> StorageConnection | None:
        query = select(storage_connections).where(
            storage_connections.c.org_id == org_id, storage_connections.c.name == name
        )
        return await self._one(StorageConnection, query)

    async def list(self, org_id: str) -> builtins.list[StorageConnection]:
        query = select(storage_connections).where(storage_connections.c.org_id == org_id)
        return await self._all(StorageConnection, query.order_by(storage_connections.c.name))

    async def bind(self, binding: StorageBinding) -> None:
        await self._insert(key_storage, binding.__dict__)

    async def bindings(self, key_id: str) -> builtins.list[tuple[StorageConnection, StorageBinding]]:
        query = (
            select(storage_connections, key_storage.c.read_only.label("binding_read_only"), key_storage.c.prefix.label("binding_prefix"))
            .join(key_storage, key_storage.c.connection_id == storage_connections.c.id)
            .where(key_storage.c.key_id == key_id)
            .order_by(storage_connections.c.name)
        )
        async with self._engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [
            (
                to_record(StorageConnection, r),
                StorageBinding(key_id, r["id"], bool(r["binding_read_only"]), r["binding_prefix"]),
            )
            for r in rows
        ]

    async def bound_keys(self, connection_id: str) -> builtins.list[str]:
        """The ids of the active keys bound to the connection."""
        query = (
            select(key_storage.c.key_id)
            .join(api_keys, api_keys.c.id == key_storage.c.key_id)
            .where(key_storage.c.connection_id == connection_id, api_keys.c.revoked_at.is_(None))
            .order_by(key_storage.c.key_id)
        )
        async with self._engine.connect() as conn:
            return [r[0] for r in (await conn.execute(query)).all()]

    async def delete_unbound(self, connection_id: str) -> bool:
        """Delete the connection unless an active key is bound to it (see `_delete_unbound`)."""
        return await _delete_unbound(self._engine, storage_connections, key_storage.c.connection_id, connection_id)


class ConnectorRepo(Repo):
    """Connectors and the keys' bindings to them."""

    async def add(self, connector: Connector) -> Connector:
        await self._insert(connectors, connector.__dict__)
        return connector

    async def get(self, connector_id: str) -> Connector | None:
        return await self._one(Connector, select(connectors).where(connectors.c.id == connector_id))

    async def by_name(self, org_id: str, name: str) -> Connector | None:
        query = select(connectors).where(connectors.c.org_id == org_id, connectors.c.name == name)
        return await self._one(Connector, query)

    async def list(self, org_id: str) -> builtins.list[Connector]:
        return await self._all(Connector, select(connectors).where(connectors.c.org_id == org_id).order_by(connectors.c.name))

    async def all(self) -> builtins.list[Connector]:
        return await self._all(Connector, select(connectors).order_by(connectors.c.id))

    async def update(self, connector_id: str, **values: Any) -> None:
        async with self._engine.begin() as conn:
            await conn.execute(update(connectors).where(connectors.c.id == connector_id).values(**values))

    async def reseal(self, sealed: dict[str, bytes]) -> None:
        """New sealed secrets for these ids, all in one transaction (a key rotation)."""
        async with self._engine.begin() as conn:
            for connector_id, value in sealed.items():
                await conn.execute(update(connectors).where(connectors.c.id == connector_id).values(sealed=value))

    async def bind(self, key_id: str, connector_id: str) -> None:
        await self._insert(key_connectors, {"key_id": key_id, "connector_id": connector_id})

    async def bindings(self, key_id: str) -> builtins.list[Connector]:
        query = (
            select(connectors)
            .join(key_connectors, key_connectors.c.connector_id == connectors.c.id)
            .where(key_connectors.c.key_id == key_id)
            .order_by(connectors.c.name)
        )
        return await self._all(Connector, query)

    async def bound_keys(self, connector_id: str) -> builtins.list[str]:
        """The ids of the active keys bound to the connector."""
        query = (
            select(key_connectors.c.key_id)
            .join(api_keys, api_keys.c.id == key_connectors.c.key_id)
            .where(key_connectors.c.connector_id == connector_id, api_keys.c.revoked_at.is_(None))
            .order_by(key_connectors.c.key_id)
        )
        async with self._engine.connect() as conn:
            return [r[0] for r in (await conn.execute(query)).all()]

    async def delete_unbound(self, connector_id: str) -> bool:
        """Delete the connector unless an active key is bound to it (see `_delete_unbound`)."""
        return await _delete_unbound(self._engine, connectors, key_connectors.c.connector_id, connector_id)


async def _delete_unbound(engine: AsyncEngine, table: Any, bound_by: Any, row_id: str) -> bool:
    """Delete `table`'s row unless an active key is bound to it through `bound_by` (the binding
    table's column naming the row), in one transaction: the revoked keys' bindings go with it.
    False when an active key is bound (nothing is deleted)."""
    bindings = bound_by.table
    revoked = select(api_keys.c.id).where(api_keys.c.revoked_at.is_not(None))
    active = (
        select(bindings.c.key_id)
        .join(api_keys, api_keys.c.id == bindings.c.key_id)
        .where(bound_by == row_id, api_keys.c.revoked_at.is_(None))
        .exists()
    )
    try:
        async with engine.begin() as conn:
            await conn.execute(bindings.delete().where(bound_by == row_id, bindings.c.key_id.in_(revoked)))
            deleted = await conn.execute(table.delete().where(table.c.id == row_id, ~active))
            if deleted.rowcount == 0:
                raise RollBack
    except RollBack:
        return False
    return True


class Store:
    """All repositories over one engine."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.orgs = OrgRepo(engine)
        self.sandboxes = SandboxRepo(engine)
        self.keys = KeyRepo(engine)
        self.executions = ExecutionRepo(engine)
        self.events = EventRepo(engine)
        self.webhooks = WebhookRepo(engine)
        self.threads = ThreadRepo(engine)
        self.volumes = VolumeRepo(engine)
        self.images = ImageRepo(engine)
        self.registry_credentials = RegistryCredentialRepo(engine)
        self.storage = StorageRepo(engine)
        self.connectors = ConnectorRepo(engine)
        self.sessions = SessionRepo(engine)
        self.members = MemberRepo(engine)
        self.admin_tokens = AdminTokenRepo(engine)
        self.console_sessions = ConsoleSessionRepo(engine)
        self.plans = PlanRepo(engine)
        self.audit = AuditRepo(engine)
        self.history = ExecutionHistory(engine)

    async def close(self) -> None:
        await self.engine.dispose()
