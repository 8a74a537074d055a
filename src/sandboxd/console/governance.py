"""Who and what: members, the audit log (search, export) and the plan with its usage."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from ..errors import SandboxdError
from ..service.admin import Secret
from ..service.audit import AuditFilters
from ..service.roles import AUDIT, MEMBERS, READ, ROLE_NAMES, require
from .forms import one, parse_time, read_form, status_for
from .web import PREFIX, CheckedDep, Console, ConsoleDep, FormErrors, Visitor, VisitorDep, render

router = APIRouter()


async def _members_page(
    request: Request, console: Console, who: Visitor, *, errors: FormErrors | None = None,
    form: dict[str, Any] | None = None, status: int = 200, token: Secret | None = None,
) -> Response:
    require(who.principal, MEMBERS)
    members = await console.services.ops.list_members(who.principal)
    return render(request, console, "members.html", who, status=status, members=members, errors=errors,
                  form=form or {}, roles=ROLE_NAMES, token=token)


@router.get("/members")
async def members_page(request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    return await _members_page(request, console, who)


@router.post("/members")
async def add_member(request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, MEMBERS)
    form = await read_form(request)
    try:
        await console.services.ops.add_member(who.principal, one(form, "email").strip(), one(form, "role"))
    except SandboxdError as exc:
        return await _members_page(request, console, who, errors=FormErrors.of(exc, ("email", "role")), form=form,
                                   status=status_for(exc))
    return RedirectResponse(PREFIX + "/members", status_code=303)


@router.post("/members/{email}/role")
async def set_member_role(email: str, request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, MEMBERS)
    form = await read_form(request)
    try:
        await console.services.ops.set_member_role(who.principal, email, one(form, "role"))
    except SandboxdError as exc:
        return await _members_page(request, console, who, errors=FormErrors(form=exc.message), status=status_for(exc))
    return RedirectResponse(PREFIX + "/members", status_code=303)


@router.post("/members/{email}/remove")
async def remove_member(email: str, request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, MEMBERS)
    try:
        await console.services.ops.remove_member(who.principal, email)
    except SandboxdError as exc:
        return await _members_page(request, console, who, errors=FormErrors(form=exc.message), status=status_for(exc))
    return RedirectResponse(PREFIX + "/members", status_code=303)


@router.post("/members/{email}/token")
async def issue_member_token(email: str, request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, MEMBERS)
    try:
        token = await console.services.ops.issue_member_token(who.principal, email, name="console")
    except SandboxdError as exc:
        return await _members_page(request, console, who, errors=FormErrors(form=exc.message), status=status_for(exc))
    return await _members_page(request, console, who, token=token, status=201)


def _audit_filters(params: dict[str, str]) -> AuditFilters:
    """The audit search's filters from the query string (newest first, as a person reads)."""
    metadata = {params["meta_key"]: params.get("meta_value", "")} if params.get("meta_key") else {}
    return AuditFilters(
        trace_id=params.get("trace_id") or None, key_id=params.get("key_id") or None,
        kind=params.get("kind") or None, action=params.get("action") or None, metadata=metadata,
        since=parse_time(params.get("since", ""), "since"), until=parse_time(params.get("until", ""), "until"),
        newest_first=True,
    )


@router.get("/audit")
async def audit_page(request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    require(who.principal, AUDIT)
    params = {k: v.strip() for k, v in request.query_params.items()}
    errors, rows, cursor, status = FormErrors(), [], None, 200
    try:
        page = await console.services.ops.search_audit(
            who.principal, _audit_filters(params), cursor=params.get("cursor") or None
        )
        rows, cursor = page["rows"], page["cursor"]
    except SandboxdError as exc:
        errors, status = FormErrors.of(exc, ("trace_id", "key_id", "kind", "action", "since", "until")), status_for(exc)
    query = {k: v for k, v in params.items() if k != "cursor" and v}
    return render(request, console, "audit.html", who, status=status, rows=rows, params=params, errors=errors,
                  export_query=urlencode(query), next_query=urlencode({**query, "cursor": cursor}) if cursor else None)


@router.get("/audit/export")
async def audit_export(request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    """A download of what the search selects, as JSONL or CSV: every row, not one page."""
    require(who.principal, AUDIT)
    params = {k: v.strip() for k, v in request.query_params.items()}
    format = params.get("format", "jsonl")
    filters = replace(_audit_filters(params), newest_first=False)  # a file reads in the chain's order
    lines = await console.services.ops.export_audit(who.principal, filters, format=format)
    media = "text/csv" if format == "csv" else "application/x-ndjson"
    name = f"audit-{who.principal.org.name}.{format}"
    return StreamingResponse(
        _encoded(lines), media_type=media,
        headers={"Content-Disposition": f'attachment; filename="{name}"', "Cache-Control": "no-store"},
    )


async def _encoded(lines: AsyncIterator[str]) -> AsyncIterator[bytes]:
    async for line in lines:
        yield line.encode()


@router.get("/plan")
async def plan_page(request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    """The organization's plan and this month's usage."""
    require(who.principal, READ)
    errors, plan, status = FormErrors(), None, 200
    try:
        plan = await console.services.ops.show_plan(who.principal)
    except SandboxdError as exc:
        errors, status = FormErrors(form=exc.message), status_for(exc)
    return render(request, console, "plan.html", who, status=status, plan=plan, errors=errors)
