"""The organization's configuration: API keys, sandbox configs, images, volumes, storage
connections, connectors and the webhook secret. Every change is one AdminOps call (audited)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from ..errors import InvalidRequest, SandboxdError
from ..runtime.network import NETWORK_MODES
from ..service import SandboxConfig
from ..service.admin import KeySpec, SandboxChanges, Secret, StorageRef, VolumeRef
from ..service.roles import READ, WRITE, require
from .forms import one, parse_time, read_form, status_for
from .web import PREFIX, CheckedDep, Console, ConsoleDep, FormErrors, Visitor, VisitorDep, render

router = APIRouter()

_SANDBOX_FIELDS = ("name", "cpus", "memory_mib", "network", "allow", "timeout_cap_s", "image", "session")


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
    form = await read_form(request)
    try:
        spec = KeySpec(
            name=one(form, "name"), sandbox=one(form, "sandbox") or "default",
            volumes=tuple(VolumeRef(v, read_only=f"volume_ro:{v}" in form) for v in form.get("volume", [])),
            storage=tuple(StorageRef(s, read_only=f"storage_ro:{s}" in form) for s in form.get("storage", [])),
            connectors=tuple(form.get("connector", [])),
            expires_at=parse_time(one(form, "expires_at"), "expires_at"),
        )
        created = await console.services.ops.create_key(who.principal, spec)
    except SandboxdError as exc:
        errors = FormErrors.of(exc, ("name", "sandbox", "expires_at", "volume", "storage", "connector"))
        return await _keys_page(request, console, who, errors=errors, form=form, status=status_for(exc))
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
    form = await read_form(request)
    try:
        config = _sandbox_config(form)
        await console.services.ops.create_sandbox(who.principal, config, image=one(form, "image") or "host")
    except SandboxdError as exc:
        return await _sandboxes_page(
            request, console, who, errors=FormErrors.of(exc, _SANDBOX_FIELDS), form=form, status=status_for(exc)
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
    form = await read_form(request)
    ops = console.services.ops
    try:
        config = _sandbox_config({**form, "name": name})
        changes = SandboxChanges(
            cpus=config.cpus, memory_mib=config.memory_mib, network=config.network, allow=config.allow,
            timeout_cap_s=config.timeout_cap_s, image=one(form, "image") or "host", session=config.session,
        )
        await ops.update_sandbox(who.principal, name, changes)
    except SandboxdError as exc:
        editing = await ops.show_sandbox(who.principal, name)
        return await _sandboxes_page(
            request, console, who, errors=FormErrors.of(exc, _SANDBOX_FIELDS), form=form, status=status_for(exc),
            editing=editing,
        )
    return RedirectResponse(PREFIX + "/sandboxes", status_code=303)


@router.post("/sandboxes/{name}/delete")
async def delete_sandbox(name: str, request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, WRITE)  # before anything is parsed: a refusal in the API's format
    try:
        await console.services.ops.delete_sandbox(who.principal, name)
    except SandboxdError as exc:
        return await _sandboxes_page(request, console, who, errors=FormErrors(form=exc.message), status=status_for(exc))
    return RedirectResponse(PREFIX + "/sandboxes", status_code=303)


def _sandbox_config(form: dict[str, Any]) -> SandboxConfig:
    def number(name: str, kind: type[int] | type[float], default: float) -> Any:
        text = one(form, name).strip()
        if not text:
            return default
        try:
            return kind(text)
        except ValueError:
            raise InvalidRequest(f"{name} must be a number") from None

    allow = tuple(a.strip() for a in one(form, "allow").replace(",", "\n").splitlines() if a.strip())
    return SandboxConfig(
        name=one(form, "name").strip(),
        cpus=number("cpus", float, SandboxConfig.cpus),
        memory_mib=number("memory_mib", int, SandboxConfig.memory_mib),
        network=one(form, "network") or "none",
        timeout_cap_s=number("timeout_cap_s", int, SandboxConfig.timeout_cap_s),
        allow=allow,
        session=one(form, "session") or "stateless",
    )


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
    return table(request, console, who, "Images", rows, "sandboxd images pull|import|build, or the admin API")


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
    form = await read_form(request)
    try:
        quota = one(form, "quota_mib").strip() or "1024"
        if not quota.isdigit():
            raise InvalidRequest("quota_mib must be a whole number of MiB")
        await console.services.ops.create_volume(who.principal, one(form, "name").strip(), int(quota))
    except SandboxdError as exc:
        return await _volumes_page(request, console, who, FormErrors.of(exc, ("name", "quota_mib", "volume")),
                                   form, status_for(exc))
    return RedirectResponse(PREFIX + "/volumes", status_code=303)


@router.post("/volumes/{name}/delete")
async def delete_volume(name: str, request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, WRITE)  # before anything is parsed: a refusal in the API's format
    try:
        await console.services.ops.delete_volume(who.principal, name)
    except SandboxdError as exc:
        return await _volumes_page(request, console, who, FormErrors(form=exc.message), status=status_for(exc))
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
    form = await read_form(request)
    try:
        spec = ConnectionSpec(
            name=one(form, "name").strip(), kind=one(form, "type"), bucket=one(form, "bucket").strip(),
            endpoint=one(form, "endpoint").strip() or None, region=one(form, "region").strip() or None,
            prefix=one(form, "prefix").strip().strip("/"), read_only=one(form, "read_only") == "yes",
        )
        await console.services.ops.create_storage(who.principal, spec, one(form, "credentials").encode())
    except SandboxdError as exc:
        form.pop("credentials", None)  # a secret is never sent back
        names = ("name", "type", "bucket", "endpoint", "region", "prefix", "credentials")
        return await _storage_page(request, console, who, FormErrors.of(exc, names), form, status_for(exc))
    return RedirectResponse(PREFIX + "/storage", status_code=303)


@router.post("/storage/{name}/delete")
async def delete_storage(name: str, request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, WRITE)
    try:
        await console.services.ops.delete_storage(who.principal, name)
    except SandboxdError as exc:
        return await _storage_page(request, console, who, FormErrors(form=exc.message), status=status_for(exc))
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
    form = await read_form(request)
    try:
        hosts = tuple(h.strip() for h in one(form, "hosts").replace(",", "\n").splitlines() if h.strip())
        options = Options(hosts=hosts, header=one(form, "header").strip() or None,
                          env_var=one(form, "env_var").strip() or None)
        await console.services.ops.create_connector(
            who.principal, one(form, "name").strip(), one(form, "type"), one(form, "secret").encode(), options
        )
    except SandboxdError as exc:
        form.pop("secret", None)  # a secret is never sent back
        names = ("name", "type", "secret", "hosts", "header", "env_var")
        return await _connectors_page(request, console, who, FormErrors.of(exc, names), form, status_for(exc))
    return RedirectResponse(PREFIX + "/connectors", status_code=303)


@router.post("/connectors/{name}/secret")
async def replace_connector_secret(name: str, request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, WRITE)
    form = await read_form(request)
    try:
        await console.services.ops.update_connector(who.principal, name, one(form, "secret").encode())
    except SandboxdError as exc:
        return await _connectors_page(request, console, who, FormErrors(form=f"{name}: {exc.message}"),
                                      status=status_for(exc))
    return RedirectResponse(PREFIX + "/connectors", status_code=303)


@router.post("/connectors/{name}/delete")
async def delete_connector(name: str, request: Request, console: ConsoleDep, who: CheckedDep) -> Response:
    require(who.principal, WRITE)
    try:
        await console.services.ops.delete_connector(who.principal, name)
    except SandboxdError as exc:
        return await _connectors_page(request, console, who, FormErrors(form=exc.message), status=status_for(exc))
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
    form = await read_form(request)
    try:
        created = await console.services.ops.webhook_secret(who.principal, rotate=one(form, "rotate") == "yes")
    except SandboxdError as exc:
        return await _webhook_page(request, console, who, errors=FormErrors(form=exc.message), status=status_for(exc))
    return await _webhook_page(request, console, who, created=created, status=201)


def table(
    request: Request, console: Console, who: Visitor, title: str, rows: list[dict[str, Any]], cli: str
) -> Response:
    columns = list(rows[0]) if rows else []
    return render(request, console, "table.html", who, title=title, rows=rows, columns=columns, cli=cli)
