"""`sandboxd plans ...` and `sandboxd usage`: what organizations may use, and what they used."""

from __future__ import annotations

import dataclasses
import json
from typing import Annotated, Any

import typer

from ..app import Admin
from ..service.roles import CLI_ACTOR
from .common import DatabaseUrl, DataDir, admin_call, settings_of

app = typer.Typer(
    help="Plans: the presets (free, pro, enterprise) and custom plans per organization.", no_args_is_help=True
)

PlanOrg = Annotated[str | None, typer.Option("--org", help="The organization whose custom plans to include.")]


def _plan_json(plan: Any, org_name: str | None = None) -> str:
    return json.dumps({
        "name": plan.name,
        "custom": plan.custom,
        "org": org_name,
        **dataclasses.asdict(plan.limits),
    })


async def _org_names(admin: Admin) -> dict[str, str]:
    return {o.id: o.name for o in await admin.tenancy.list_orgs()}


@app.command("list")
def plans_list(org: PlanOrg = None, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """List the plans, one JSON object a line (limits: null = unlimited): the presets, and the
    custom plans of every organization (of one, with --org)."""

    async def go(admin: Admin) -> list[str]:
        the_org = await admin.tenancy.org(org) if org else None
        names = await _org_names(admin)
        return [_plan_json(plan, names.get(plan.org_id or "")) for plan in await admin.plans.list(the_org)]

    for line in admin_call(settings_of(data_dir, database_url), go):
        typer.echo(line)


@app.command("show")
def plans_show(name: str, org: PlanOrg = None, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Show one plan's limits (a custom plan: with --org)."""

    async def go(admin: Admin) -> str:
        the_org = await admin.tenancy.org(org) if org else None
        return _plan_json(await admin.plans.show(name, the_org), org)

    typer.echo(admin_call(settings_of(data_dir, database_url), go))


@app.command("create")
def plans_create(
    name: str,
    org: Annotated[str, typer.Option("--org", help="The organization the custom plan is for.")],
    cpus: Annotated[float | None, typer.Option("--cpus", help="Max CPUs per sandbox.")] = None,
    memory_mib: Annotated[int | None, typer.Option("--memory-mib", help="Max memory per sandbox, MiB.")] = None,
    concurrent: Annotated[int | None, typer.Option("--concurrent", help="Concurrent executions.")] = None,
    timeout_s: Annotated[int | None, typer.Option("--timeout-s", help="Max timeout, seconds.")] = None,
    keys: Annotated[int | None, typer.Option("--keys", help="Active API keys.")] = None,
    audit_retention_days: Annotated[
        int | None, typer.Option("--audit-retention-days", help="Days the audit log is kept.")
    ] = None,
    images: Annotated[int | None, typer.Option("--images", help="Custom OCI images.")] = None,
    streaming: Annotated[
        bool, typer.Option("--streaming/--no-streaming", help="Streaming and webhook (async) delivery allowed.")
    ] = True,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Create a custom plan for an organization (a limit left out: unlimited); assign it with
    `sandboxd plans assign`."""
    from ..service.plans import PlanLimits

    limits = PlanLimits(
        cpus=cpus, memory_mib=memory_mib, concurrent=concurrent, timeout_s=timeout_s, api_keys=keys,
        audit_retention_days=audit_retention_days, images=images, streaming=streaming,
    )

    async def go(admin: Admin) -> str:
        the_org = await admin.tenancy.org(org)
        made = await admin.plans.create_custom(the_org, name, limits)
        await admin.audit.admin(
            CLI_ACTOR, "plan.create", org_id=the_org.id, target=name, after=dataclasses.asdict(made.limits)
        )
        return _plan_json(made, org)

    typer.echo(admin_call(settings_of(data_dir, database_url), go))


@app.command("assign")
def plans_assign(org: str, plan: str, data_dir: DataDir = None, database_url: DatabaseUrl = None) -> None:
    """Put an organization on a plan (a preset or one of its custom plans); its next requests
    are held to it."""

    async def go(admin: Admin) -> str:
        the_org = await admin.tenancy.org(org)
        before = (await admin.plans.plan_of(the_org)).name
        assigned = await admin.plans.assign(the_org, plan)
        await admin.audit.admin(
            CLI_ACTOR, "plan.assign", org_id=the_org.id, target=the_org.name,
            before={"plan": before}, after={"plan": assigned.name},
        )
        return f"{the_org.name}\t{assigned.name}"

    typer.echo(admin_call(settings_of(data_dir, database_url), go))


def usage(
    org: Annotated[str | None, typer.Option("--org", help="One organization (default: all).")] = None,
    month: Annotated[str | None, typer.Option("--month", help="YYYY-MM (UTC; default: this month).")] = None,
    data_dir: DataDir = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Usage per organization in a month, one JSON object a line: executions, CPU-seconds,
    GiB-seconds (the sandbox's memory in GiB times its run time)."""

    async def go(admin: Admin) -> list[str]:
        names = await _org_names(admin)
        if org is not None:
            rows = [await admin.usage.usage(await admin.tenancy.org(org), month)]
        else:
            rows = await admin.usage.all(month)
        return [json.dumps({
            "org": names.get(u.org_id, u.org_id), "month": u.month, "executions": u.executions,
            "cpu_seconds": round(u.cpu_seconds, 3), "gib_seconds": round(u.gib_seconds, 3),
        }) for u in rows]

    for line in admin_call(settings_of(data_dir, database_url), go):
        typer.echo(line)
