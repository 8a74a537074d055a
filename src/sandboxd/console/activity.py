"""What ran: the dashboard, the executions and one execution, and "Try it"."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from ..api.ndjson import MEDIA_TYPE, ndjson_response
from ..errors import InvalidRequest, NotFound, SandboxdError
from ..runtime.languages import LANGUAGES
from ..service.audit import AuditFilters
from ..service.history import STATUSES, ExecutionQuery
from ..service.requests import parse_execute_request
from ..service.roles import AUDIT, READ, RUN, require
from . import charts
from .forms import parse_time
from .web import PREFIX, CheckedDep, Console, ConsoleDep, FormErrors, Visitor, VisitorDep, client_ip, render

router = APIRouter()


async def _concurrency_limit(console: Console, who: Visitor) -> int:
    """The organization's plan's concurrent-execution limit; unlimited plans: the server's."""
    settings = console.services.settings
    plan = await console.services.plans.plan_of(who.principal.org)
    return plan.limits.concurrent or min(settings.max_concurrent, settings.max_concurrent_per_org)


@router.get("/")
async def dashboard(request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    if not who.can(READ):
        return RedirectResponse(PREFIX + "/try", status_code=303)
    data = await console.history.dashboard(who.principal, concurrency_limit=await _concurrency_limit(console, who))
    per_minute = [m.executions for m in data.minutes]
    span = (data.since.strftime("%H:%M UTC"), "now")
    context: dict[str, Any] = {
        "data": data,
        "per_minute": charts.bars(
            per_minute, "Executions per minute", f"{data.total} executions in the last {len(per_minute)} minutes", span
        ),
        "durations": charts.lines(
            {"p50": [m.p50_ms for m in data.minutes], "p95": [m.p95_ms for m in data.minutes]},
            "Duration p50 and p95 (ms)", f"p50 {data.p50_ms} ms, p95 {data.p95_ms} ms over the period",
            span=span,
        ),
        "mix": charts.status_mix(data),
        "concurrency": charts.lines(
            {"running": [m.concurrent for m in data.minutes]}, "Concurrent executions",
            f"peak {data.peak_concurrent} of a limit of {data.concurrency_limit}", limit=data.concurrency_limit,
            span=span,
        ),
    }
    return render(request, console, "dashboard.html", who, **context)


# --- executions ----------------------------------------------------------------------------


@router.get("/executions")
async def executions_page(request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    require(who.principal, READ)
    params = {k: v.strip() for k, v in request.query_params.items()}
    errors = FormErrors()
    results: list[Any] = []
    try:
        query = ExecutionQuery(
            status=params.get("status") or None, key_id=params.get("key") or None,
            thread_id=params.get("thread") or None, language=params.get("language") or None,
            metadata_key=params.get("meta_key") or None,
            metadata_value=params.get("meta_value") or None,
            since=parse_time(params.get("since", ""), "since"), until=parse_time(params.get("until", ""), "until"),
        )
        results = await console.history.search(who.principal, query)
    except InvalidRequest as exc:
        errors = FormErrors.of(exc, ("since", "until", "meta_key", "meta_value"))
    keys = await console.services.keys.list(who.principal.org.id)
    older = None
    if len(results) == ExecutionQuery.limit:  # a full page: the next one ends where this one does
        last = results[-1].created_at.replace(tzinfo=None).isoformat()
        older = urlencode({**{k: v for k, v in params.items() if v}, "until": last})
    return render(
        request, console, "executions.html", who, status=400 if errors else 200, results=results, params=params,
        errors=errors, keys=keys, key_names={k.id: f"{k.name} ({k.display_prefix}…)" for k in keys},
        statuses=STATUSES, languages=LANGUAGES, older=older,
    )


@router.get("/executions/{trace_id}")
async def execution_page(trace_id: str, request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    execution = await console.history.get(who.principal, trace_id)
    key = next((k for k in await console.services.keys.list(who.principal.org.id) if k.id == execution.key_id), None)
    extras = execution.extras or {}
    resources = extras.get("resources") or {}
    peaks = {}
    if isinstance(resources, dict):
        if resources.get("cpu_ms") is not None:
            peaks["CPU time"] = f"{resources['cpu_ms']} ms"
        if resources.get("memory_peak_bytes") is not None:
            peaks["Memory peak"] = f"{resources['memory_peak_bytes'] / 2**20:.1f} MiB"
    return render(request, console, "execution.html", who, e=execution, key=key, extras=extras, peaks=peaks,
                  code=await _code_of(console, who, trace_id))


async def _code_of(console: Console, who: Visitor, trace_id: str) -> str | None:
    """The code, where the audit log kept it (an organization's setting) and the visitor may read it."""
    if not who.can(AUDIT):
        return None
    try:
        page = await console.services.ops.search_audit(
            who.principal, AuditFilters(trace_id=trace_id, kind="execution"), limit=10
        )
    except SandboxdError:
        return None
    for row in page["rows"]:
        code = (row.get("detail") or {}).get("code")
        if isinstance(code, str):
            return code
    return None


# --- try it --------------------------------------------------------------------------------


@router.get("/try")
async def try_page(request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    require(who.principal, RUN)
    keys = [k for k in await console.services.keys.list(who.principal.org.id) if k.revoked_at is None]
    return render(request, console, "try.html", who, keys=keys, languages=LANGUAGES)


@router.post("/try/run")
async def try_run(request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    """Runs code as one of the organization's keys (its principal: no secret in the browser);
    the answer is the execution's NDJSON stream, as /v1/sandbox/execute streams it. The run is
    the signed-in member's: their id and email and the browser's address go on its audit row.
    On a plan without streaming it runs inline: the events come at once when it ends, after a
    note that says so."""
    require(who.principal, RUN)
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequest("request body is not valid JSON") from None
    if not isinstance(body, dict) or not isinstance(body.get("key_id"), str):
        raise InvalidRequest("choose a key (key_id)")
    key_id = body.pop("key_id")
    principal = await console.services.keys.principal_of(key_id)
    if principal is None or principal.org.id != who.principal.org.id:
        raise NotFound(f"no active API key {key_id!r} in this organization")
    execute = parse_execute_request(body)
    streams = principal.plan.limits.streaming
    submission = await console.services.executions.submit(
        principal, execute, delivery_mode="streaming" if streams else "inline", client_id="sandboxd-console",
        base_url=str(request.base_url), client_ip=client_ip(request), member=who.principal.actor,
    )
    if streams:
        return ndjson_response(submission.log.follow(0))
    await submission.outcome()
    title = principal.plan.title
    note = {"type": "note", "message": f"{title[:1].upper()}{title[1:]} does not stream output: it is shown when the run ends."}
    lines = [json.dumps(note, separators=(",", ":"))]
    lines += [json.dumps(event.to_json(), separators=(",", ":")) async for event in submission.log.follow(0)]
    return Response("\n".join(lines) + "\n", media_type=MEDIA_TYPE, headers={"Cache-Control": "no-store"})
