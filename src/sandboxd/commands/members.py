"""`sandboxd members`: who may use the admin API and the console, and their admin tokens.

Root on the host, through the audited admin layer (service/admin.py) like every other change."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

import typer

from ..app import Admin
from ..service.roles import ROLE_NAMES, cli_principal
from ..service.tenancy import DEFAULT_ORG
from ..store import utcnow
from .common import DatabaseUrl, DataDir, OrgName, admin_call, settings_of

app = typer.Typer(help="Members: who signs in to the admin API and the console, with which role.", no_args_is_help=True)
Role = Annotated[str, typer.Option(help=f"One of {', '.join(ROLE_NAMES)}.")]


@app.command("add")
def add(
    email: str, role: Role = "member", org: OrgName = DEFAULT_ORG, data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Add a member (they sign in through the identity provider, or with a token from `members token`)."""

    async def go(admin: Admin) -> Any:
        return await admin.ops.add_member(cli_principal(await admin.tenancy.org(org)), email, role)

    member = admin_call(settings_of(data_dir, database_url), go)
    typer.echo(f"{member['id']}\t{member['email']}\t{member['role']}")


@app.command("list")
def list_(org: OrgName = DEFAULT_ORG, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List an organization's members."""

    async def go(admin: Admin) -> Any:
        return await admin.ops.list_members(cli_principal(await admin.tenancy.org(org)))

    for m in admin_call(settings_of(data_dir, database_url), go):
        seen = (m["last_seen_at"] or "-")[:16].replace("T", " ")
        typer.echo(f"{m['id']}\t{m['email']}\t{m['role']}\t{'oidc' if m['oidc'] else '-'}\t{seen}")


@app.command("set-role")
def set_role(
    email: str, role: Annotated[str, typer.Argument(help=f"One of {', '.join(ROLE_NAMES)}.")],
    org: OrgName = DEFAULT_ORG, data_dir: DataDir = None, database_url: DatabaseUrl = None,
) -> None:
    """Change a member's role (at once: their next request has it)."""

    async def go(admin: Admin) -> Any:
        return await admin.ops.set_member_role(cli_principal(await admin.tenancy.org(org)), email, role)

    after = admin_call(settings_of(data_dir, database_url), go)
    typer.echo(f"{after['email']}\t{after['role']}")


@app.command("remove")
def remove(email: str, org: OrgName = DEFAULT_ORG, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Remove a member: their tokens and console sessions stop working at once."""

    async def go(admin: Admin) -> Any:
        await admin.ops.remove_member(cli_principal(await admin.tenancy.org(org)), email)

    admin_call(settings_of(data_dir, database_url), go)
    typer.echo(f"removed {email}")


@app.command("token")
def token(
    email: str,
    name: Annotated[str, typer.Option(help="A label for the token.")] = "",
    expires_in_days: Annotated[int | None, typer.Option(min=1, help="Stops working after this many days.")] = None,
    org: OrgName = DEFAULT_ORG,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Make an admin token for a member and print it. It is shown only this once."""

    async def go(admin: Admin) -> Any:
        expires = utcnow() + timedelta(days=expires_in_days) if expires_in_days else None
        p = cli_principal(await admin.tenancy.org(org))
        return await admin.ops.issue_member_token(p, email, name=name, expires_at=expires)

    issued = admin_call(settings_of(data_dir, database_url), go)
    typer.echo(issued.secret)
    typer.echo(f"token id {issued.view['id']} for {email}; store it now: it is not shown again", err=True)
