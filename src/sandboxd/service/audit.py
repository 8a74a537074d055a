"""The audit log: every execution, every admin action and every files-API transfer, as rows of
append-only, tamper-evident hash chains (one per organization; "" for the installation's own).

Each row's `hash` is HMAC-SHA256, keyed with a key derived from the server secret, over the
previous row's hash and a canonical JSON of the row (`canonical`). Changing, inserting or
removing a row breaks the link at that row, and a database alone (a dump, a replica, someone
with SQL access but not the data dir's `server.secret`) cannot compute new hashes for a forged
chain. `verify` walks every chain and reports the first broken link of each.

Retention deletes a chain's oldest rows (a prefix) and leaves an anchor: the chain's head
records the seq and hash of the last deleted row, and a sealed `audit.prune` row appended in the
same transaction says the same, so a deleted prefix is either retention's (vouched for) or a
break. What the chain does not show: rows cut from its end together with its head moved back
(compare `heads()` with a copy kept elsewhere), and anything done by someone who holds the
server secret. docs/audit.md says more.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import json
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import InvalidRequest
from ..store import AuditHead, AuditRow, Execution, Org, Store, utcnow
from ..store.audit import AuditFilters, append_in

__all__ = [
    "AuditFilters", "AuditLog", "AuditPage", "Break", "ExecutionFacts", "audit_key", "canonical", "parse_csv",
    "row_from_json", "row_json",
]
from .roles import Actor

log = logging.getLogger("sandboxd.audit")

KINDS = ("execution", "admin", "files")
FORMATS = ("jsonl", "csv")
#: An execution row keeps at most this much of its code (when the org keeps code at all).
CODE_KEPT_BYTES = 64 * 1024
#: The columns of an export, in order (CSV header; JSON keys).
EXPORT_FIELDS = (
    "org_id", "seq", "at", "kind", "actor_kind", "actor_id", "actor_name", "ip", "action", "target",
    "trace_id", "key_id", "detail", "prev_hash", "hash",
)
MAX_SEARCH = 200
#: Keys whose values never go into a row, whatever a caller passes in before/after.
_SECRET_WORDS = ("secret", "password", "token", "credential", "private_key", "sealed")
REDACTED = "[redacted]"

#: A system actor for the log's own rows (retention).
RETENTION_ACTOR = Actor(kind="system", id="retention", name="retention")


def audit_key(server_secret: bytes) -> bytes:
    """The chain key, derived from the server secret (never the key-hashing pepper itself)."""
    return hmac.new(server_secret, b"sandboxd audit chain v1", hashlib.sha256).digest()


def canonical(row: AuditRow) -> bytes:
    """What a row's hash covers: every field but the hash, as sorted, compact, ASCII JSON."""
    values = asdict(row)
    del values["hash"]
    values["at"] = _iso(row.at)
    return json.dumps(values, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _iso(at: datetime) -> str:
    return at.astimezone(timezone.utc).isoformat(timespec="microseconds")


def _plain(value: Any) -> Any:
    """`value` as JSON gives it back (tuples as lists, datetimes as text, ...), its text
    storable anywhere: NUL and lone surrogates (PostgreSQL's JSON operators refuse both) as
    U+FFFD, as executions' output is stored."""
    def storable(v: Any) -> Any:
        if isinstance(v, str):
            return v.replace("\x00", "\ufffd").encode("utf-16", "surrogatepass").decode("utf-16", "replace")
        if isinstance(v, dict):
            return {storable(k): storable(x) for k, x in v.items()}
        if isinstance(v, list):
            return [storable(x) for x in v]
        return v

    return storable(json.loads(json.dumps(value, default=str)))


def _scrub(value: Any) -> Any:
    """`value` with the values of secret-looking keys masked (admin before/after views)."""
    if isinstance(value, dict):
        return {k: REDACTED if _secret(str(k)) and v is not None else _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def _secret(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_WORDS)


@dataclass(frozen=True)
class Break:
    """The first broken link of a chain."""

    org_id: str
    seq: int
    problem: str

    def __str__(self) -> str:
        chain = f"organization {self.org_id}" if self.org_id else "the installation's chain"
        return f"{chain}, seq {self.seq}: {self.problem}"


@dataclass(frozen=True)
class AuditPage:
    rows: list[AuditRow]
    #: Pass as `cursor` for the next page; None: this was the last.
    cursor: str | None


@dataclass(frozen=True)
class ExecutionFacts:
    """What an execution's row says that its stored record does not: carried on its job."""

    #: None: not known (an execution a stopped server left unfinished, ended at the next start).
    code: str | None
    key_prefix: str | None = None
    client_ip: str | None = None
    audit_code: bool = False
    started_at: datetime | None = None
    #: The member who ran it from the console ("Try it"); None: an API client with the key.
    member_id: str | None = None
    member_email: str | None = None


def row_json(row: AuditRow) -> dict[str, Any]:
    """A row as search results and JSONL exports show it."""
    values = asdict(row)
    values["at"] = _iso(row.at)
    return {name: values[name] for name in EXPORT_FIELDS}


def row_from_json(values: Mapping[str, Any]) -> AuditRow:
    return AuditRow(**{**values, "at": datetime.fromisoformat(values["at"])})


def encode_cursor(row: AuditRow) -> str:
    raw = json.dumps([_iso(row.at), row.org_id, row.seq]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str, int]:
    try:
        at, org_id, seq = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        return datetime.fromisoformat(at), str(org_id), int(seq)
    except (ValueError, TypeError) as exc:
        raise InvalidRequest("cursor is not one a search returned") from exc


class AuditLog:
    def __init__(self, store: Store, key: bytes, *, clock: Callable[[], datetime] = utcnow) -> None:
        if len(key) < 16:
            raise ValueError("the audit key must be at least 16 bytes")
        self._store = store
        self._key = key
        self._clock = clock

    def seal(self, row: AuditRow) -> str:
        return hmac.new(self._key, canonical(row), hashlib.sha256).hexdigest()

    def _row(
        self, kind: str, actor: Actor, action: str, *, org_id: str | None, target: str,
        detail: Mapping[str, Any], trace_id: str | None = None, key_id: str | None = None,
        ip: str | None = None,
    ) -> AuditRow:
        return AuditRow(
            org_id=org_id or "",
            seq=0,
            at=self._clock(),
            kind=kind,
            actor_kind=actor.kind[:16],
            actor_id=actor.id[:64],
            actor_name=actor.name[:254],
            ip=(ip if ip is not None else actor.ip or None),
            action=action[:64],
            target=target[:512],
            trace_id=trace_id,
            key_id=key_id,
            detail=_plain(dict(detail)),
        )

    async def _append(self, row: AuditRow, conn: AsyncConnection | None = None) -> AuditRow:
        if conn is not None:
            return await append_in(conn, row, self.seal)
        return await self._store.audit.append(row, self.seal)

    # --- appending ---------------------------------------------------------------------------

    async def admin(
        self, actor: Actor, action: str, *, org_id: str | None, target: str,
        before: Mapping[str, Any] | None = None, after: Mapping[str, Any] | None = None,
    ) -> None:
        """An admin action ("key.create", "sandbox.update", "member.add", ...) by `actor` in
        `org_id` (None: the installation's, e.g. creating an organization). `before`/`after`
        are plain JSON views of what changed; keys that look like secrets are masked."""
        detail = {"before": _scrub(_plain(dict(before))) if before is not None else None,
                  "after": _scrub(_plain(dict(after))) if after is not None else None}
        await self._append(self._row("admin", actor, action, org_id=org_id, target=target, detail=detail))

    def execution_row(self, execution: Execution, facts: ExecutionFacts) -> AuditRow:
        """An execution at its final status, as its row says it."""
        code_bytes = facts.code.encode("utf-8", errors="surrogatepass") if facts.code is not None else None
        extras = execution.extras or {}
        detail: dict[str, Any] = {
            "trace_id": execution.trace_id,
            "key_id": execution.key_id,
            "key_prefix": facts.key_prefix,
            "client_id": execution.client_id,
            "client_ip": facts.client_ip,
            "delivery_mode": execution.delivery_mode,
            "language": execution.language,
            "code_sha256": hashlib.sha256(code_bytes).hexdigest() if code_bytes is not None else None,
            "code_bytes": len(code_bytes) if code_bytes is not None else None,
            "status": execution.status,
            "exit_code": execution.exit_code,
            "error": execution.error,
            "thread_id": execution.thread_id,
            "metadata": execution.metadata or {},
            "image": {"name": execution.image_name, "digest": execution.image_digest},
            "node_id": execution.node_id,
            "timeout_s": execution.timeout_s,
            "created_at": _iso(execution.created_at),
            "started_at": _iso(facts.started_at) if facts.started_at is not None else None,
            "completed_at": _iso(execution.completed_at) if execution.completed_at is not None else None,
            "duration_ms": execution.duration_ms,
            "network": execution.network_log or [],
            "mounts": execution.storage or [],
            "connectors": execution.connectors or [],
        }
        if "resources" in extras:
            detail["resources"] = extras["resources"]
        if facts.audit_code and code_bytes is not None:
            # Bounded, so a page of search results stays small; code_sha256 covers all of it.
            detail["code"] = facts.code if len(code_bytes) <= CODE_KEPT_BYTES else _prefix(code_bytes, CODE_KEPT_BYTES)
            if len(code_bytes) > CODE_KEPT_BYTES:
                detail["code_truncated"] = True
        if facts.member_id is not None:  # run in the console: the member is who did it, as the key
            detail["via"] = "console"
            detail["member"] = {"id": facts.member_id, "email": facts.member_email}
            actor = Actor(kind="member", id=facts.member_id, name=facts.member_email or facts.member_id)
        else:
            actor = Actor(kind="key", id=execution.key_id or "local", name=facts.key_prefix or "local")
        return self._row(
            "execution", actor, "execution.finish", org_id=execution.org_id, target=execution.trace_id,
            detail=detail, trace_id=execution.trace_id, key_id=execution.key_id, ip=facts.client_ip,
        )

    async def execution(
        self, execution: Execution, facts: ExecutionFacts, conn: AsyncConnection | None = None
    ) -> AuditRow:
        """Append an execution's row: inside `conn`'s transaction (the one that writes its final
        record, service/job.py) or in one of its own."""
        return await self._append(self.execution_row(execution, facts), conn)

    async def files(
        self, action: str, *, org_id: str, key_id: str | None, key_prefix: str | None, source: str,
        id: str, path: str, size: int | None, ip: str | None = None,
    ) -> None:
        """A files-API transfer: action "files.upload", "files.download" or "files.delete"."""
        actor = Actor(kind="key", id=key_id or "local", name=key_prefix or "local")
        detail = {"source": source, "id": id, "path": path, "bytes": size, "key_prefix": key_prefix}
        await self._append(self._row(
            "files", actor, action, org_id=org_id, target=f"{source}/{id}/{path}", detail=detail,
            key_id=key_id, ip=ip,
        ))

    async def set_code(self, actor: Actor, org: Org, on: bool) -> None:
        """Keep (or stop keeping) the code itself in the organization's execution rows; audited.
        Servers see it once their cached keys are refreshed (`KeyService.invalidate`)."""
        await self._store.audit.set_code(org.id, on)
        await self.admin(actor, "org.audit_code", org_id=org.id, target=f"org/{org.name}",
                         before={"audit_code": org.audit_code}, after={"audit_code": on})

    # --- checking ----------------------------------------------------------------------------

    async def heads(self) -> list[AuditHead]:
        return await self._store.audit.heads()

    async def verify(self, saved: list[AuditHead] | None = None) -> list[Break]:
        """The first broken link of each chain; [] when every chain holds.

        `saved`: heads taken earlier (`heads()`, kept elsewhere): each chain must still reach
        and contain them, which shows rows cut from a chain's end with its head moved back."""
        breaks = []
        earlier = {h.org_id: h for h in saved or ()}
        for org_id in sorted(set(await self._store.audit.chains()) | earlier.keys()):
            found = await self._verify_chain(org_id)
            if found is None and org_id in earlier:
                found = await self._extends(earlier[org_id])
            if found is not None:
                breaks.append(found)
        return breaks

    async def _extends(self, saved: AuditHead) -> Break | None:
        """Whether the chain still holds the row a saved head named (or retention's anchor is it)."""
        head = await self._store.audit.head(saved.org_id)
        if head is None or head.seq < saved.seq:
            return Break(saved.org_id, (head.seq if head else 0) + 1,
                         f"the chain ends at seq {head.seq if head else 0}, but a saved head had it at {saved.seq} "
                         "(rows cut from its end)")
        if saved.seq < head.pruned_seq or saved.seq == 0:
            return None  # retention deleted it since: nothing left to compare
        if saved.seq == head.pruned_seq:
            same = head.pruned_hash == saved.hash
        else:
            row = await self._store.audit.row(saved.org_id, saved.seq)
            same = row is not None and row.hash == saved.hash
        if not same:
            return Break(saved.org_id, saved.seq, "the row differs from the one a saved head named (the chain was rewritten)")
        return None

    async def _verify_chain(self, org_id: str) -> Break | None:
        head = await self._store.audit.head(org_id)
        if head is None:
            return Break(org_id, 1, "rows without a chain head (audit_heads row missing)")
        expected_seq, expected_prev = head.pruned_seq + 1, head.pruned_hash
        vouched = head.pruned_seq == 0
        async for row in self._store.audit.chain(org_id):
            if row.seq != expected_seq:
                if row.seq > expected_seq:
                    what = f"row {expected_seq} is missing" if row.seq == expected_seq + 1 else \
                        f"rows {expected_seq} to {row.seq - 1} are missing"
                else:
                    what = f"seq {row.seq} is out of order"
                return Break(org_id, expected_seq, what)
            if row.prev_hash != expected_prev:
                return Break(org_id, row.seq, "prev_hash does not match the hash of the row before it")
            if not hmac.compare_digest(self.seal(row), row.hash):
                return Break(org_id, row.seq, "the row was changed: its hash does not match its content")
            if (row.action == "audit.prune" and row.kind == "admin"
                    and (row.detail.get("after") or {}).get("pruned_seq") == head.pruned_seq
                    and (row.detail.get("after") or {}).get("pruned_hash") == head.pruned_hash):
                vouched = True
            expected_seq, expected_prev = row.seq + 1, row.hash
        if expected_seq - 1 != head.seq or expected_prev != head.hash:
            if head.seq >= expected_seq:
                return Break(org_id, expected_seq, f"rows {expected_seq} to {head.seq} are missing (the head is at {head.seq})")
            return Break(org_id, head.seq, "the chain head does not match its last row")
        if not vouched:
            return Break(org_id, head.pruned_seq + 1,
                         f"rows up to {head.pruned_seq} are gone and no audit.prune row says retention deleted them")
        return None

    # --- retention ---------------------------------------------------------------------------

    async def sweep(self, retention_days_of: Callable[[Org], int | None], now: datetime | None = None) -> int:
        """Delete each organization's rows older than its retention (None: kept forever);
        returns how many. The installation's own chain is kept."""
        now = now or self._clock()
        deleted = 0
        for org in await self._store.orgs.list():
            days = retention_days_of(org)
            if days is None:
                continue
            before = now - timedelta(days=days)

            def prune_row(seq: int, digest: str, count: int, org: Org = org, days: int = days) -> AuditRow:
                return self._row(
                    "admin", RETENTION_ACTOR, "audit.prune", org_id=org.id, target=f"audit/{org.id}",
                    detail={"before": None, "after": {"pruned_seq": seq, "pruned_hash": digest,
                                                      "deleted": count, "retention_days": days}},
                )

            deleted += await self._store.audit.prune(org.id, before, prune_row, self.seal)
        return deleted

    # --- reading -----------------------------------------------------------------------------

    async def search(self, filters: AuditFilters, *, limit: int = 100, cursor: str | None = None) -> AuditPage:
        if not 1 <= limit <= MAX_SEARCH:
            raise InvalidRequest(f"limit must be between 1 and {MAX_SEARCH}")
        if filters.kind is not None and filters.kind not in KINDS:
            raise InvalidRequest("kind must be one of " + ", ".join(KINDS))
        if cursor is not None:
            filters = replace(filters, after=decode_cursor(cursor))
        rows = await self._store.audit.search(filters, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return AuditPage(rows, encode_cursor(rows[-1]) if more and rows else None)

    async def rows(self, filters: AuditFilters, *, batch: int = MAX_SEARCH) -> AsyncIterator[AuditRow]:
        """Every row `filters` selects, in order, a batch at a time."""
        cursor: str | None = None
        while True:
            page = await self.search(filters, limit=batch, cursor=cursor)
            for row in page.rows:
                yield row
            if page.cursor is None:
                return
            cursor = page.cursor

    async def export(self, filters: AuditFilters, format: str = "jsonl") -> AsyncIterator[str]:
        """The rows as text, a line (JSONL) or a record (CSV, header first) at a time."""
        if format not in FORMATS:
            raise InvalidRequest("format must be jsonl or csv")
        if format == "csv":
            yield _csv_line(list(EXPORT_FIELDS))
        async for row in self.rows(filters):
            values = row_json(row)
            if format == "jsonl":
                yield json.dumps(values, ensure_ascii=False, separators=(",", ":")) + "\n"
            else:
                values["detail"] = json.dumps(row.detail, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
                yield _csv_line(["" if values[k] is None else values[k] for k in EXPORT_FIELDS])


#: A spreadsheet runs a cell that begins with one of these as a formula: such a text (a client's
#: metadata, a key's name) is written with a leading `'`, which parse_csv takes off again.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def _prefix(encoded: bytes, limit: int) -> str:
    """The longest whole-character text of `encoded` (UTF-8, lone surrogates passed) within `limit` bytes."""
    for end in range(limit, max(limit - 4, 0), -1):
        try:
            return encoded[:end].decode("utf-8", errors="surrogatepass")
        except UnicodeDecodeError:
            continue
    return ""


def _csv_line(values: list[Any]) -> str:
    out = io.StringIO()
    cells = ["'" + v if isinstance(v, str) and v.startswith(_FORMULA_STARTS) else v for v in values]
    csv.writer(out, lineterminator="\n").writerow(cells)
    return out.getvalue()


def _csv_cell(text: str) -> str:
    return text[1:] if text.startswith("'") else text


def parse_csv(text: str) -> list[dict[str, Any]]:
    """An export's CSV back as search results show rows (what `row_json` gives)."""
    rows = []
    for record in csv.DictReader(io.StringIO(text)):
        values: dict[str, Any] = {k: _csv_cell(v) for k, v in record.items()}
        values["seq"] = int(values["seq"])
        values["detail"] = json.loads(values["detail"])
        for nullable in ("ip", "trace_id", "key_id"):
            values[nullable] = values[nullable] or None
        rows.append(values)
    return rows
