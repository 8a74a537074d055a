"""`sandboxd audit`: verify the audit chains, search and export the log, and whether an
organization's execution rows keep the code. Safe beside a live server on the same database:
reads take no lock, and the one write (`code`) is an audited append like any other.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, TextIO

import typer

from ..app import Admin
from ..service.audit import AuditFilters, AuditPage, row_json
from ..service.roles import CLI_ACTOR
from ..store import AuditHead
from .common import DatabaseUrl, DataDir, admin_call, fail, settings_of

app = typer.Typer(
    help="The audit log: every execution, admin action and file transfer, in tamper-evident chains.",
    no_args_is_help=True,
)

Org = Annotated[str | None, typer.Option("--org", help="Only this organization's rows (its name).")]
Since = Annotated[
    str | None, typer.Option("--since", help="From this time: ISO 8601 (UTC if no offset) or an age (30m, 24h, 7d).")
]
Until = Annotated[str | None, typer.Option("--until", help="Before this time (as --since).")]
TraceId = Annotated[str | None, typer.Option("--trace-id", help="Only this execution's rows.")]
KeyId = Annotated[str | None, typer.Option("--key-id", help="Only rows of this API key (its id).")]
Kind = Annotated[str | None, typer.Option("--kind", help="execution, admin or files.")]
Action = Annotated[str | None, typer.Option("--action", help='e.g. execution.finish, key.create, files.upload.')]
Metadata = Annotated[
    list[str] | None, typer.Option("--metadata", help="KEY=VALUE of the execution's metadata (repeatable).")
]

_AGE = re.compile(r"^(\d+)([smhd])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_time(text: str | None, option: str) -> datetime | None:
    if text is None:
        return None
    if match := _AGE.fullmatch(text.strip()):
        return datetime.now(timezone.utc) - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        at = datetime.fromisoformat(text.strip())
    except ValueError:
        fail(f"{option} must be an ISO 8601 time or an age like 24h, not {text!r}")
        raise
    return at if at.tzinfo is not None else at.replace(tzinfo=timezone.utc)


def _metadata(pairs: list[str] | None) -> dict[str, str]:
    found: dict[str, str] = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--metadata takes KEY=VALUE, not {pair!r}")
        found[key] = value
    return found


async def _filters(
    admin: Admin, org: str | None, since: str | None, until: str | None, trace_id: str | None,
    key_id: str | None, kind: str | None, action: str | None, metadata: list[str] | None,
    newest_first: bool = False,
) -> AuditFilters:
    return AuditFilters(
        org_id=(await admin.tenancy.org(org)).id if org is not None else None,
        trace_id=trace_id, key_id=key_id, kind=kind, action=action, metadata=_metadata(metadata),
        since=parse_time(since, "--since"), until=parse_time(until, "--until"), newest_first=newest_first,
    )


@app.command("verify")
def verify(
    heads: Annotated[
        Path | None,
        typer.Option("--heads", help="Heads saved earlier by `sandboxd audit heads`: each chain must still extend them."),
    ] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Check every chain; exit 1 naming the first broken link of each broken one."""
    saved = None
    if heads is not None:
        try:
            saved = [AuditHead(**json.loads(line)) for line in heads.read_text().splitlines() if line.strip()]
        except (OSError, ValueError, TypeError) as exc:
            fail(f"--heads: cannot read {heads}: {exc}")

    async def go(admin: Admin) -> tuple[list[str], int, int]:
        breaks = await admin.audit.verify(saved)
        heads = await admin.audit.heads()
        return [str(b) for b in breaks], len(heads), sum(h.seq - h.pruned_seq for h in heads)

    breaks, chains, rows = admin_call(settings_of(data_dir, database_url), go)
    if breaks:
        for line in breaks:
            typer.echo(f"broken: {line}", err=True)
        raise typer.Exit(1)
    typer.echo(f"OK: {chains} chains, {rows} rows")


@app.command("heads")
def heads_(data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Print each chain's head (last seq and hash, retention's anchor) as JSON lines: keep them
    elsewhere, and `verify --heads FILE` later shows rows cut from a chain's end."""
    for head in admin_call(settings_of(data_dir, database_url), lambda admin: admin.audit.heads()):
        typer.echo(json.dumps(dataclasses.asdict(head), separators=(",", ":")))


@app.command("search")
def search(
    org: Org = None, since: Since = None, until: Until = None, trace_id: TraceId = None, key_id: KeyId = None,
    kind: Kind = None, action: Action = None, metadata: Metadata = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many rows (1-200).")] = 100,
    cursor: Annotated[str | None, typer.Option("--cursor", help="The next page (printed on stderr).")] = None,
    newest_first: Annotated[bool, typer.Option("--newest-first", help="Newest rows first.")] = False,
    data_dir: DataDir = None, database_url: DatabaseUrl = None,
) -> None:
    """Print matching rows as JSON lines, oldest first; the next page's cursor goes to stderr."""
    async def go(admin: Admin) -> AuditPage:
        filters = await _filters(admin, org, since, until, trace_id, key_id, kind, action, metadata, newest_first)
        return await admin.audit.search(filters, limit=limit, cursor=cursor)

    page = admin_call(settings_of(data_dir, database_url), go)
    for row in page.rows:
        typer.echo(json.dumps(row_json(row), ensure_ascii=False, separators=(",", ":")))
    if page.cursor is not None:
        typer.echo(f"more: --cursor {page.cursor}", err=True)


@app.command("export")
def export(
    format: Annotated[str, typer.Option("--format", help="jsonl or csv.")] = "jsonl",
    output: Annotated[Path | None, typer.Option("--output", help="Write here instead of stdout.")] = None,
    org: Org = None, since: Since = None, until: Until = None, trace_id: TraceId = None, key_id: KeyId = None,
    kind: Kind = None, action: Action = None, metadata: Metadata = None,
    data_dir: DataDir = None, database_url: DatabaseUrl = None,
) -> None:
    """Write every matching row, oldest first, as JSON lines or CSV (detail as a JSON column)."""
    if format not in ("jsonl", "csv"):
        fail("--format must be jsonl or csv")

    async def go(admin: Admin) -> int:
        filters = await _filters(admin, org, since, until, trace_id, key_id, kind, action, metadata)
        out: TextIO = output.open("w", encoding="utf-8", newline="") if output is not None else sys.stdout
        count = 0
        try:
            async for chunk in admin.audit.export(filters, format):
                out.write(chunk)
                count += 1
        finally:
            if output is not None:
                out.close()
            else:
                out.flush()
        return count

    written = admin_call(settings_of(data_dir, database_url), go)
    if output is not None:
        typer.echo(f"wrote {written - (format == 'csv')} rows to {output}", err=True)


@app.command("code")
def code(
    org: Annotated[str, typer.Argument(help="The organization's name.")],
    state: Annotated[str, typer.Argument(help="on: execution rows keep the code itself; off: only its SHA-256.")],
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Whether the organization's execution rows keep the executed code (default: off)."""
    if state not in ("on", "off"):
        fail("state must be on or off")

    async def go(admin: Admin) -> None:
        found = await admin.tenancy.org(org)
        await admin.audit.set_code(CLI_ACTOR, found, state == "on")
        admin.keys.invalidate()  # servers' cached keys carry the organization: refresh them

    admin_call(settings_of(data_dir, database_url), go)
    typer.echo(f"{org}: audit rows {'keep the code' if state == 'on' else 'keep only the code SHA-256'}")
