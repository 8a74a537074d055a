"""The console's pages: each parses its input, calls the services, and renders a template.

Permissions come from service/roles.py: the navigation and the buttons show only what the
visitor's role may do, and every action asks `require` again on the server.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response, StreamingResponse

from ..api.ndjson import ndjson_response
from ..errors import InvalidRequest, NotFound, SandboxdError, Unavailable
from ..runtime.languages import LANGUAGES
from ..runtime.network import NETWORK_MODES
from ..service import SandboxConfig
from ..service.admin import KeySpec, SandboxChanges, Secret, StorageRef, VolumeRef
from ..service.history import STATUSES, ExecutionQuery
from ..service.requests import parse_execute_request
from ..service.roles import AUDIT, MEMBERS, READ, ROLE_NAMES, RUN, WRITE, require
from . import charts
from .web import PREFIX, CheckedDep, Console, ConsoleDep, FormErrors, Visitor, VisitorDep, render

router = APIRouter()

_SANDBOX_FIELDS = ("name", "cpus", "memory_mib", "network", "allow", "timeout_cap_s", "image", "session")


async def _concurrency_limit(console: Console, who: Visitor) -> int:
    """The plan's concurrent-execution limit (service/plans.py, where the server has plans),
    else the organization's own, else the server's."""
    settings = console.services.settings
    server = min(settings.max_concurrent, settings.max_concurrent_per_org)
    plans = getattr(console.services, "plans", None)
    if plans is not None:
        limit = (await plans.plan_of(who.principal.org)).limits.concurrent
        return int(limit) if limit is not None else server
    return getattr(who.principal.org, "max_concurrent", None) or server


@router.get("/")
async def dashboard(request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    if not who.can(READ):
        return RedirectResponse(PREFIX + "/try", status_code=303)
    data = await console.history.dashboard(who.principal, concurrency_limit=await _concurrency_limit(console, who))
    per_minute = [m.executions for m in data.minutes]
    context: dict[str, Any] = {
        "data": data,
        "per_minute": charts.bars(
            per_minute, "Executions per minute", f"{data.total} executions in the last {len(per_minute)} minutes"
        ),
        "durations": charts.lines(
            {"p50": [m.p50_ms for m in data.minutes], "p95": [m.p95_ms for m in data.minutes]},
            "Duration p50 and p95 (ms)", f"p50 {data.p50_ms} ms, p95 {data.p95_ms} ms over the period",
        ),
        "mix": charts.status_mix(data),
        "concurrency": charts.lines(
            {"running": [m.concurrent for m in data.minutes]}, "Concurrent executions",
            f"peak {data.peak_concurrent} of a limit of {data.concurrency_limit}", limit=data.concurrency_limit,
        ),
    }
    return render(request, console, "dashboard.html", who, **context)


# --- API keys ------------------------------------------------------------------------------


async def _keys_page(
    request: Request, console: Console, who: Visitor, *, created: Secret | None = None,
    errors: FormErrors | None = None, form: dict[str, Any] | None = None, status: int = 200,
) -> Response:
    ops, p = console.services.ops, who.principal
    keys = await ops.list_keys(p)
    members = {m.id: m.email for m in await console.services.members.list(p.org)}
    for key in keys:
        key["creator"] = members.get(key["created_by"] or "", "cli" if key["created_by"] == "root" else key["created_by"])
    context: dict[str, Any] = {"keys": keys, "created": created, "can_write": who.can(WRITE)}
    if who.can(WRITE):
        context.update(
            sandboxes=await ops.list_sandboxes(p), volumes=await ops.list_volumes(p),
            storage=await ops.list_storage(p), connectors=await ops.list_connectors(p),
        )
    return render(request, console, "keys.html", who, status=status, errors=errors, form=form or {}, **context)


@router.get("/keys")
async def keys_page(request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    require(who.principal, READ)
    return await _keys_page(request, console, who)


@router.post("/keys")
async def create_key(request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, WRITE)  # before anything is parsed: a refusal in the API's format
    form = await _form(request)
    try:
        spec = KeySpec(
            name=_one(form, "name"), sandbox=_one(form, "sandbox") or "default",
            volumes=tuple(VolumeRef(v, read_only=f"volume_ro:{v}" in form) for v in form.get("volume", [])),
            storage=tuple(StorageRef(s, read_only=f"storage_ro:{s}" in form) for s in form.get("storage", [])),
            connectors=tuple(form.get("connector", [])),
            expires_at=_time(_one(form, "expires_at"), "expires_at"),
        )
        created = await console.services.ops.create_key(who.principal, spec)
    except SandboxdError as exc:
        errors = FormErrors.of(exc, ("name", "sandbox", "expires_at", "volume", "storage", "connector"))
        return await _keys_page(request, console, who, errors=errors, form=form, status=_status(exc))
    # The secret is in this answer only (not in a URL, never stored): shown once.
    return await _keys_page(request, console, who, created=created, status=201)


@router.post("/keys/{key_id}/revoke")
async def revoke_key(key_id: str, console: ConsoleDep, who: CheckedDep) -> Response:
    await console.services.ops.revoke_key(who.principal, key_id)
    return RedirectResponse(PREFIX + "/keys", status_code=303)


# --- sandbox configs -----------------------------------------------------------------------


async def _sandboxes_page(
    request: Request, console: Console, who: Visitor, *, errors: FormErrors | None = None,
    form: dict[str, Any] | None = None, status: int = 200, editing: dict[str, Any] | None = None,
) -> Response:
    ops, p = console.services.ops, who.principal
    return render(
        request, console, "sandboxes.html" if editing is None else "sandbox_edit.html", who, status=status,
        sandboxes=await ops.list_sandboxes(p), images=await ops.list_images(p),
        network_modes=[(m, m) for m in NETWORK_MODES], errors=errors, form=form or {}, can_write=who.can(WRITE),
        editing=editing,
    )


@router.get("/sandboxes")
async def sandboxes_page(request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    require(who.principal, READ)
    return await _sandboxes_page(request, console, who)


@router.post("/sandboxes")
async def create_sandbox(request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, WRITE)  # before anything is parsed: a refusal in the API's format
    form = await _form(request)
    try:
        config = _sandbox_config(form)
        await console.services.ops.create_sandbox(who.principal, config, image=_one(form, "image") or "host")
    except SandboxdError as exc:
        return await _sandboxes_page(
            request, console, who, errors=FormErrors.of(exc, _SANDBOX_FIELDS), form=form, status=_status(exc)
        )
    return RedirectResponse(PREFIX + "/sandboxes", status_code=303)


@router.get("/sandboxes/{name}")
async def sandbox_page(name: str, request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    view = await console.services.ops.show_sandbox(who.principal, name)
    form = {**view, "allow": "\n".join(view["allow"])}
    return await _sandboxes_page(request, console, who, form=form, editing=view)


@router.post("/sandboxes/{name}")
async def update_sandbox(name: str, request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, WRITE)  # before anything is parsed: a refusal in the API's format
    form = await _form(request)
    ops = console.services.ops
    try:
        config = _sandbox_config({**form, "name": name})
        changes = SandboxChanges(
            cpus=config.cpus, memory_mib=config.memory_mib, network=config.network, allow=config.allow,
            timeout_cap_s=config.timeout_cap_s, image=_one(form, "image") or "host", session=config.session,
        )
        await ops.update_sandbox(who.principal, name, changes)
    except SandboxdError as exc:
        editing = await ops.show_sandbox(who.principal, name)
        return await _sandboxes_page(
            request, console, who, errors=FormErrors.of(exc, _SANDBOX_FIELDS), form=form, status=_status(exc),
            editing=editing,
        )
    return RedirectResponse(PREFIX + "/sandboxes", status_code=303)


@router.post("/sandboxes/{name}/delete")
async def delete_sandbox(name: str, request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, WRITE)  # before anything is parsed: a refusal in the API's format
    try:
        await console.services.ops.delete_sandbox(who.principal, name)
    except SandboxdError as exc:
        return await _sandboxes_page(request, console, who, errors=FormErrors(form=exc.message), status=_status(exc))
    return RedirectResponse(PREFIX + "/sandboxes", status_code=303)


def _sandbox_config(form: dict[str, Any]) -> SandboxConfig:
    def number(name: str, kind: type[int] | type[float], default: float) -> Any:
        text = _one(form, name).strip()
        if not text:
            return default
        try:
            return kind(text)
        except ValueError:
            raise InvalidRequest(f"{name} must be a number") from None

    allow = tuple(a.strip() for a in _one(form, "allow").replace(",", "\n").splitlines() if a.strip())
    return SandboxConfig(
        name=_one(form, "name").strip(),
        cpus=number("cpus", float, SandboxConfig.cpus),
        memory_mib=number("memory_mib", int, SandboxConfig.memory_mib),
        network=_one(form, "network") or "none",
        timeout_cap_s=number("timeout_cap_s", int, SandboxConfig.timeout_cap_s),
        allow=allow,
        session=_one(form, "session") or "stateless",
    )


# --- executions ----------------------------------------------------------------------------


def _time(value: str, name: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be a date and time like 2026-12-07T14:30") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


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
            since=_time(params.get("since", ""), "since"), until=_time(params.get("until", ""), "until"),
        )
        results = await console.history.search(who.principal, query)
    except InvalidRequest as exc:
        errors = FormErrors.of(exc, ("since", "until", "meta_key", "meta_value"))
    keys = await console.services.keys.list(who.principal.org.id)
    return render(
        request, console, "executions.html", who, status=400 if errors else 200, results=results, params=params,
        errors=errors, keys=keys, key_names={k.id: f"{k.name} ({k.display_prefix}…)" for k in keys},
        statuses=STATUSES, languages=LANGUAGES,
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
        rows = await console.services.ops.search_audit(who.principal, trace_id=trace_id, kind="execution")
    except SandboxdError:
        return None
    for row in rows:
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
    the answer is the execution's NDJSON stream, as /v1/sandbox/execute streams it."""
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
    submission = await console.services.executions.submit(
        principal, execute, delivery_mode="streaming", client_id="sandboxd-console", base_url=str(request.base_url)
    )
    return ndjson_response(submission.log.follow(0))


# --- images, volumes, storage, connectors, webhook secret, members, audit --------------------


@router.get("/images")
async def images_page(request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    rows = [
        {"name": i["name"], "languages": ", ".join(i["languages"]), "source": i["source"],
         "digest": (i["digest"] or "")[:19] or None,
         "size": f"{i['size_bytes'] / 2**20:.1f} MiB" if i.get("size_bytes") else None,
         "scope": "built-in" if i["org"] is None else "this organization"}
        for i in await console.services.ops.list_images(who.principal)
    ]
    return _table(request, console, who, "Images", rows, "sandboxd images pull|import|build, or the admin API")


async def _volumes_page(
    request: Request, console: Console, who: Visitor, errors: FormErrors | None = None,
    form: dict[str, Any] | None = None, status: int = 200,
) -> Response:
    volumes = await console.services.ops.list_volumes(who.principal)
    return render(request, console, "volumes.html", who, status=status, volumes=volumes, errors=errors,
                  form=form or {}, can_write=who.can(WRITE))


@router.get("/volumes")
async def volumes_page(request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    require(who.principal, READ)
    return await _volumes_page(request, console, who)


@router.post("/volumes")
async def create_volume(request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, WRITE)  # before anything is parsed: a refusal in the API's format
    form = await _form(request)
    try:
        quota = _one(form, "quota_mib").strip() or "1024"
        if not quota.isdigit():
            raise InvalidRequest("quota_mib must be a whole number of MiB")
        await console.services.ops.create_volume(who.principal, _one(form, "name").strip(), int(quota))
    except SandboxdError as exc:
        return await _volumes_page(request, console, who, FormErrors.of(exc, ("name", "quota_mib", "volume")),
                                   form, _status(exc))
    return RedirectResponse(PREFIX + "/volumes", status_code=303)


@router.post("/volumes/{name}/delete")
async def delete_volume(name: str, request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, WRITE)  # before anything is parsed: a refusal in the API's format
    try:
        await console.services.ops.delete_volume(who.principal, name)
    except SandboxdError as exc:
        return await _volumes_page(request, console, who, FormErrors(form=exc.message), status=_status(exc))
    return RedirectResponse(PREFIX + "/volumes", status_code=303)


async def _storage_page(
    request: Request, console: Console, who: Visitor, errors: FormErrors | None = None,
    form: dict[str, Any] | None = None, status: int = 200,
) -> Response:
    from ..buckets.providers import KINDS

    rows = await console.services.ops.list_storage(who.principal)
    return render(request, console, "storage.html", who, status=status, rows=rows, kinds=KINDS, errors=errors,
                  form=form or {}, can_write=who.can(WRITE))


@router.get("/storage")
async def storage_page(request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    require(who.principal, READ)
    return await _storage_page(request, console, who)


@router.post("/storage")
async def create_storage(request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    from ..service.storage import ConnectionSpec

    require(who.principal, WRITE)
    form = await _form(request)
    try:
        spec = ConnectionSpec(
            name=_one(form, "name").strip(), kind=_one(form, "type"), bucket=_one(form, "bucket").strip(),
            endpoint=_one(form, "endpoint").strip() or None, region=_one(form, "region").strip() or None,
            prefix=_one(form, "prefix").strip().strip("/"), read_only=_one(form, "read_only") == "yes",
        )
        await console.services.ops.create_storage(who.principal, spec, _one(form, "credentials").encode())
    except SandboxdError as exc:
        form.pop("credentials", None)  # a secret is never sent back
        names = ("name", "type", "bucket", "endpoint", "region", "prefix", "credentials")
        return await _storage_page(request, console, who, FormErrors.of(exc, names), form, _status(exc))
    return RedirectResponse(PREFIX + "/storage", status_code=303)


@router.post("/storage/{name}/delete")
async def delete_storage(name: str, request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, WRITE)
    try:
        await console.services.ops.delete_storage(who.principal, name)
    except SandboxdError as exc:
        return await _storage_page(request, console, who, FormErrors(form=exc.message), status=_status(exc))
    return RedirectResponse(PREFIX + "/storage", status_code=303)


async def _connectors_page(
    request: Request, console: Console, who: Visitor, errors: FormErrors | None = None,
    form: dict[str, Any] | None = None, status: int = 200,
) -> Response:
    from ..connectors.kinds import KINDS

    rows = await console.services.ops.list_connectors(who.principal)
    return render(request, console, "connectors.html", who, status=status, rows=rows, kinds=KINDS, errors=errors,
                  form=form or {}, can_write=who.can(WRITE))


@router.get("/connectors")
async def connectors_page(request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    require(who.principal, READ)
    return await _connectors_page(request, console, who)


@router.post("/connectors")
async def create_connector(request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    from ..connectors.kinds import Options

    require(who.principal, WRITE)
    form = await _form(request)
    try:
        hosts = tuple(h.strip() for h in _one(form, "hosts").replace(",", "\n").splitlines() if h.strip())
        options = Options(hosts=hosts, header=_one(form, "header").strip() or None,
                          env_var=_one(form, "env_var").strip() or None)
        await console.services.ops.create_connector(
            who.principal, _one(form, "name").strip(), _one(form, "type"), _one(form, "secret").encode(), options
        )
    except SandboxdError as exc:
        form.pop("secret", None)  # a secret is never sent back
        names = ("name", "type", "secret", "hosts", "header", "env_var")
        return await _connectors_page(request, console, who, FormErrors.of(exc, names), form, _status(exc))
    return RedirectResponse(PREFIX + "/connectors", status_code=303)


@router.post("/connectors/{name}/secret")
async def replace_connector_secret(name: str, request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, WRITE)
    form = await _form(request)
    try:
        await console.services.ops.update_connector(who.principal, name, _one(form, "secret").encode())
    except SandboxdError as exc:
        return await _connectors_page(request, console, who, FormErrors(form=f"{name}: {exc.message}"),
                                      status=_status(exc))
    return RedirectResponse(PREFIX + "/connectors", status_code=303)


@router.post("/connectors/{name}/delete")
async def delete_connector(name: str, request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, WRITE)
    try:
        await console.services.ops.delete_connector(who.principal, name)
    except SandboxdError as exc:
        return await _connectors_page(request, console, who, FormErrors(form=exc.message), status=_status(exc))
    return RedirectResponse(PREFIX + "/connectors", status_code=303)


async def _webhook_page(
    request: Request, console: Console, who: Visitor, *, created: Secret | None = None,
    errors: FormErrors | None = None, status: int = 200,
) -> Response:
    require(who.principal, READ)
    has = await console.services.store.webhooks.secret(who.principal.org.id) is not None
    return render(request, console, "webhook.html", who, status=status, has=has, created=created, errors=errors,
                  can_write=who.can(WRITE))


@router.get("/webhook")
async def webhook_page(request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    return await _webhook_page(request, console, who)


@router.post("/webhook")
async def webhook_secret(request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, WRITE)  # before anything is parsed: a refusal in the API's format
    form = await _form(request)
    try:
        created = await console.services.ops.webhook_secret(who.principal, rotate=_one(form, "rotate") == "yes")
    except SandboxdError as exc:
        return await _webhook_page(request, console, who, errors=FormErrors(form=exc.message), status=_status(exc))
    return await _webhook_page(request, console, who, created=created, status=201)


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
    form = await _form(request)
    try:
        await console.services.ops.add_member(who.principal, _one(form, "email").strip(), _one(form, "role"))
    except SandboxdError as exc:
        return await _members_page(request, console, who, errors=FormErrors.of(exc, ("email", "role")), form=form,
                                   status=_status(exc))
    return RedirectResponse(PREFIX + "/members", status_code=303)


@router.post("/members/{email}/role")
async def set_member_role(email: str, request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, MEMBERS)
    form = await _form(request)
    try:
        await console.services.ops.set_member_role(who.principal, email, _one(form, "role"))
    except SandboxdError as exc:
        return await _members_page(request, console, who, errors=FormErrors(form=exc.message), status=_status(exc))
    return RedirectResponse(PREFIX + "/members", status_code=303)


@router.post("/members/{email}/remove")
async def remove_member(email: str, request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, MEMBERS)
    try:
        await console.services.ops.remove_member(who.principal, email)
    except SandboxdError as exc:
        return await _members_page(request, console, who, errors=FormErrors(form=exc.message), status=_status(exc))
    return RedirectResponse(PREFIX + "/members", status_code=303)


@router.post("/members/{email}/token")
async def issue_member_token(email: str, request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, MEMBERS)
    try:
        token = await console.services.ops.issue_member_token(who.principal, email, name="console")
    except SandboxdError as exc:
        return await _members_page(request, console, who, errors=FormErrors(form=exc.message), status=_status(exc))
    return await _members_page(request, console, who, token=token, status=201)


def _audit_filters(params: dict[str, str]) -> dict[str, Any]:
    """The audit search's filters (service/audit.py AuditFilters' names) from the query string."""
    filters: dict[str, Any] = {}
    for name in ("trace_id", "key_id", "kind", "action"):
        if params.get(name):
            filters[name] = params[name]
    if params.get("meta_key"):
        filters["metadata"] = {params["meta_key"]: params.get("meta_value", "")}
    for name in ("since", "until"):
        if (at := _time(params.get(name, ""), name)) is not None:
            filters[name] = at
    return filters


@router.get("/audit")
async def audit_page(request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    require(who.principal, AUDIT)
    params = {k: v.strip() for k, v in request.query_params.items()}
    errors, rows, status = FormErrors(), [], 200
    try:
        rows = await console.services.ops.search_audit(who.principal, **_audit_filters(params))
    except SandboxdError as exc:
        errors, status = FormErrors.of(exc, ("trace_id", "key_id", "kind", "action", "since", "until")), _status(exc)
    return render(request, console, "audit.html", who, status=status, rows=rows, params=params, errors=errors,
                  export_query=request.url.query)


@router.get("/audit/export")
async def audit_export(request: Request, console: ConsoleDep, who: VisitorDep) -> Response:
    """A download of what the search selects, as JSONL or CSV (AdminOps.export_audit)."""
    require(who.principal, AUDIT)
    params = {k: v.strip() for k, v in request.query_params.items()}
    format = params.get("format", "jsonl")
    if format not in ("jsonl", "csv"):
        raise InvalidRequest("format must be jsonl or csv")
    export = getattr(console.services.ops, "export_audit", None)  # AdminOps' seam to the audit log
    if export is None:
        raise Unavailable("the audit log cannot be exported on this server yet")
    lines = export(who.principal, format=format, **_audit_filters(params))
    if inspect.isawaitable(lines):  # a coroutine that returns the lines, or an async generator
        lines = await lines
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
    """The organization's plan and this month's usage (AdminOps.show_plan)."""
    require(who.principal, READ)
    errors, plan, status = FormErrors(), None, 200
    try:
        plan = await console.services.ops.show_plan(who.principal)
    except SandboxdError as exc:
        errors, status = FormErrors(form=exc.message), _status(exc)
    return render(request, console, "plan.html", who, status=status, plan=plan, errors=errors)


def _table(
    request: Request, console: Console, who: Visitor, title: str, rows: list[dict[str, Any]], cli: str
) -> Response:
    columns = list(rows[0]) if rows else []
    return render(request, console, "table.html", who, title=title, rows=rows, columns=columns, cli=cli)


# --- helpers -------------------------------------------------------------------------------


#: Form fields that may repeat (checkboxes): kept as lists.
_MULTI = ("volume", "storage", "connector")


async def _form(request: Request) -> dict[str, Any]:
    form = await request.form()
    values: dict[str, Any] = {}
    for name, value in form.multi_items():
        if not isinstance(value, str) or name == "csrf_token":
            continue
        if name in _MULTI:
            values.setdefault(name, []).append(value)
        else:
            values[name] = value
    return values


def _one(form: dict[str, Any], name: str) -> str:
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


def _status(exc: SandboxdError) -> int:
    from ..api.errors import status_of

    return status_of(exc)

