"""Admin operations: the one audited layer the CLI, the admin API and the console call.

Each operation takes the caller's `AdminPrincipal` (service/roles.py), asks `require` once,
acts in the principal's organization (an operator, who holds OPERATE, may name another one),
calls the service that owns the resource, and records the change in the audit log:
`audit.admin(actor, "key.create", org_id=..., target=..., before=..., after=...)`, with plain
JSON views. A view never holds a secret: a key shows its prefix, a connector its config, a
storage connection its bucket; secrets are write-only and a new one is returned once, beside
its view, never in it.

Reads (list, show) are not audited; every change is. Validation stays in the services (and
here), not in the surfaces, so the API, the console and the CLI refuse the same things.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from ..connectors import kinds
from ..errors import Conflict, Forbidden, InvalidRequest, NotFound, Unavailable
from ..images import skopeo
from ..images.store import Progress
from ..runtime import LANGUAGES
from ..store import AdminToken, ApiKey, Image, Member, Org, Sandbox, Store, Thread, Usage, Volume, utcnow
from . import scoping
from .audit import FORMATS as AUDIT_FORMATS
from .audit import AuditFilters, AuditLog, row_json
from .connectors import ConnectorService
from .connectors import describe as describe_connector
from .images import HOST, ImageService
from .keys import KeyService
from .members import MemberService
from .roles import AUDIT, MEMBERS, OPERATE, READ, WRITE, Actor, AdminPrincipal, require
from .storage import ConnectionSpec, StorageService
from .storage import describe as describe_storage
from .tenancy import SandboxConfig, TenancyService
from .plans import OrgPlan, PlanLimits, PlanService
from .threads import ThreadService
from .usage import UsageService, check_month
from .volumes import VolumeService
from .webhooks import WebhookService

View = dict[str, Any]


class AdminAudit(Protocol):
    """Where admin actions are recorded: service/audit.py `AuditLog` (tests: an in-memory one)."""

    async def admin(
        self, actor: Actor, action: str, *, org_id: str | None, target: str,
        before: Mapping[str, Any] | None = None, after: Mapping[str, Any] | None = None,
    ) -> None: ...


# --- what the surfaces send -------------------------------------------------------------------


@dataclass(frozen=True)
class VolumeRef:
    name: str
    read_only: bool = False


@dataclass(frozen=True)
class StorageRef:
    name: str
    read_only: bool = False
    #: The key's own prefix below the connection's ("" = all the connection shows).
    prefix: str = ""


@dataclass(frozen=True)
class KeySpec:
    name: str = ""
    sandbox: str = "default"
    region: str = "local"
    volumes: tuple[VolumeRef, ...] = ()
    storage: tuple[StorageRef, ...] = ()
    connectors: tuple[str, ...] = ()
    #: Refused from then on (timezone-aware); None: never expires.
    expires_at: datetime | None = None


@dataclass(frozen=True)
class SandboxChanges:
    """A partial update of a sandbox config: None leaves a field as it is."""

    cpus: float | None = None
    memory_mib: int | None = None
    network: str | None = None
    allow: tuple[str, ...] | None = None
    timeout_cap_s: int | None = None
    image: str | None = None
    session: str | None = None


@dataclass(frozen=True)
class Secret:
    """A new secret, shown once: the caller prints or returns it, nothing keeps it."""

    view: View
    secret: str


def _within_host(p: AdminPrincipal, config: SandboxConfig) -> None:
    """An organization's own admins size sandboxes within the host (and their plan); the
    installation's operators may go beyond it (e.g. for a cluster's larger nodes)."""
    if p.can(OPERATE):
        return
    cpus = os.cpu_count() or 1
    memory_mib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    if config.cpus > cpus:
        raise Forbidden(f"cpus {config.cpus:g} is more than this host has ({cpus}); ask the operator")
    if config.memory_mib > memory_mib:
        raise Forbidden(f"memory_mib {config.memory_mib} is more than this host has ({memory_mib}); ask the operator")


# --- views: plain JSON, never a secret --------------------------------------------------------


def _at(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def org_view(org: Org) -> View:
    return {"id": org.id, "name": org.name, "created_at": _at(org.created_at)}


def sandbox_view(sandbox: Sandbox, image: str) -> View:
    """As `sandboxes list` prints it (the CLI's field order)."""
    return {
        "name": sandbox.name, "id": sandbox.id, "cpus": sandbox.cpus, "memory_mib": sandbox.memory_mib,
        "network": sandbox.network, "allow": sandbox.network_allow or [], "timeout_cap_s": sandbox.timeout_cap_s,
        "image": image, "session": sandbox.session,
    }


def image_view(image: Image) -> View:
    return {
        "name": image.name,
        "id": image.id,
        "org": image.org_id,
        "digest": image.digest,
        "languages": sorted(image.config.get("binaries", {})),
        "size_bytes": image.size_bytes,
        "source": image.source,
        "created_at": image.created_at.isoformat(timespec="seconds"),
    }


def host_image_view() -> View:
    """The built-in `host` image (the host's /usr): listed first, nothing stored."""
    return {"name": HOST, "id": None, "org": None, "digest": None, "languages": sorted(LANGUAGES),
            "source": "the host's /usr"}


def volume_view(volume: Volume) -> View:
    return {"name": volume.slug, "id": volume.id, "quota_mib": volume.quota_mib}


def member_view(member: Member) -> View:
    return {
        "id": member.id, "email": member.email, "role": member.role, "oidc": member.subject is not None,
        "created_at": _at(member.created_at), "last_seen_at": _at(member.last_seen_at),
    }


def token_view(token: AdminToken) -> View:
    return {
        "id": token.id, "name": token.name, "prefix": token.display_prefix, "created_at": _at(token.created_at),
        "expires_at": _at(token.expires_at), "revoked_at": _at(token.revoked_at),
        "last_used_at": _at(token.last_used_at),
    }


def thread_view(thread: Thread) -> View:
    return {
        "thread_id": thread.thread_id, "uid": thread.uid, "created_at": _at(thread.created_at),
        "last_used_at": _at(thread.last_used_at), "last_image": thread.image_digest,
    }


def plan_view(plan: OrgPlan) -> View:
    return {
        "name": plan.name, "title": plan.title, "custom": plan.custom, "limits": asdict(plan.limits),
        "upgrade": plan.upgrade[0] if plan.upgrade is not None else None,
    }


def usage_view(usage: Usage) -> View:
    return {
        "month": usage.month, "executions": usage.executions, "cpu_seconds": usage.cpu_seconds,
        "gib_seconds": usage.gib_seconds,
    }


def key_status(key: ApiKey, now: datetime) -> str:
    if key.revoked_at is not None:
        return "revoked"
    if key.expires_at is not None and key.expires_at <= now:
        return "expired"
    return "active"


class AdminOps:
    def __init__(
        self,
        *,
        store: Store,
        keys: KeyService,
        tenancy: TenancyService,
        images: ImageService,
        volumes: VolumeService,
        storage: StorageService,
        connectors: ConnectorService,
        webhooks: WebhookService,
        members: MemberService,
        threads: ThreadService,
        plans: PlanService,
        usage: UsageService,
        audit: AdminAudit,
    ) -> None:
        self._store = store
        self._keys = keys
        self._tenancy = tenancy
        self._images = images
        self._volumes = volumes
        self._storage = storage
        self._connectors = connectors
        self._webhooks = webhooks
        self._members = members
        self._threads = threads
        self._plans = plans
        self._usage = usage
        self.audit = audit

    # --- helpers ----------------------------------------------------------------------------

    async def _org(self, p: AdminPrincipal, org: str | None) -> Org:
        """The principal's organization, or (operators only) the one named."""
        if org is None or org == p.org.name:
            return p.org
        require(p, OPERATE)
        return await self._tenancy.org(org)

    async def _record(
        self, p: AdminPrincipal, action: str, org: Org | None, target: str,
        before: Mapping[str, Any] | None = None, after: Mapping[str, Any] | None = None,
    ) -> None:
        await self.audit.admin(
            p.actor, action, org_id=org.id if org is not None else None, target=target, before=before, after=after
        )

    # --- organizations ----------------------------------------------------------------------

    async def list_orgs(self, p: AdminPrincipal) -> list[View]:
        """Every organization for an operator; the principal's own otherwise."""
        require(p, READ)
        if not p.can(OPERATE):
            return [org_view(p.org)]
        return [org_view(o) for o in await self._tenancy.list_orgs()]

    async def create_org(self, p: AdminPrincipal, name: str, *, exist_ok: bool = False) -> View:
        """A new organization with its default sandbox config (operators)."""
        require(p, OPERATE)
        existing = await self._store.orgs.by_name(name)
        if existing is not None:
            if not exist_ok:
                raise Conflict(f"organization {name!r} already exists")
            return org_view(existing)
        org = await self._tenancy.ensure_org(name)
        view = org_view(org)
        await self._record(p, "org.create", None, org.id, after=view)  # the installation's chain
        return view

    # --- members ----------------------------------------------------------------------------

    async def list_members(self, p: AdminPrincipal, *, org: str | None = None) -> list[View]:
        require(p, READ)
        return [member_view(m) for m in await self._members.list(await self._org(p, org))]

    async def add_member(self, p: AdminPrincipal, email: str, role: str, *, org: str | None = None) -> View:
        require(p, MEMBERS)
        the_org = await self._org(p, org)
        view = member_view(await self._members.add(the_org, email, role))
        await self._record(p, "member.add", the_org, view["id"], after=view)
        return view

    async def set_member_role(self, p: AdminPrincipal, email: str, role: str, *, org: str | None = None) -> View:
        require(p, MEMBERS)
        the_org = await self._org(p, org)
        before, after = await self._members.set_role(the_org, email, role)
        view = member_view(after)
        await self._record(p, "member.set_role", the_org, after.id, before=member_view(before), after=view)
        return view

    async def remove_member(self, p: AdminPrincipal, email: str, *, org: str | None = None) -> None:
        """Their tokens and console sessions stop working at once."""
        require(p, MEMBERS)
        the_org = await self._org(p, org)
        member = await self._members.remove(the_org, email)
        await self._record(p, "member.remove", the_org, member.id, before=member_view(member))

    async def issue_member_token(
        self, p: AdminPrincipal, email: str, *, name: str = "", expires_at: datetime | None = None,
        org: str | None = None,
    ) -> Secret:
        """An admin token for a member: its view, and the token (shown once)."""
        require(p, MEMBERS)
        the_org = await self._org(p, org)
        member = await self._members.get(the_org, email)
        if p.via != "cli" and p.actor.id != member.id and not await self._members.unclaimed(member):
            # A token acts as its member: making one for a colleague who already signs in would
            # let the maker act under their name. Their first one (an invitation) is fine.
            raise Forbidden(
                f"{email!r} already signs in; only they can make their admin tokens "
                "(or root on the server's host: `sandboxd members token`)"
            )
        issued = await self._members.issue_token(member, name, expires_at)
        view = {**token_view(issued.record), "member": member.email}
        await self._record(p, "member.token", the_org, issued.record.id, after=view)
        return Secret(view, issued.secret)

    async def list_member_tokens(self, p: AdminPrincipal, email: str, *, org: str | None = None) -> list[View]:
        require(p, MEMBERS)
        member = await self._members.get(await self._org(p, org), email)
        return [token_view(t) for t in await self._members.tokens(member)]

    async def revoke_member_token(self, p: AdminPrincipal, email: str, token_id: str, *, org: str | None = None) -> View:
        require(p, MEMBERS)
        the_org = await self._org(p, org)
        member = await self._members.get(the_org, email)
        before = token_view(await self._members.revoke_token(member, token_id))
        await self._record(p, "member.token_revoke", the_org, token_id, before=before)
        return before

    # --- API keys ---------------------------------------------------------------------------

    async def create_key(self, p: AdminPrincipal, spec: KeySpec, *, org: str | None = None) -> Secret:
        """A new key: its view, and its secret (shown once)."""
        require(p, WRITE)
        the_org = await self._org(p, org)
        sandbox = await self._tenancy.sandbox(the_org, spec.sandbox)
        volumes = [(await self._volumes.get(the_org, v.name), v.read_only) for v in spec.volumes]
        if len({v.id for v, _ in volumes}) < len(volumes):
            raise InvalidRequest("a volume is bound twice")
        storage = await self._storage.resolve(
            the_org, [(s.name, s.read_only, s.prefix) for s in spec.storage], [v.slug for v, _ in volumes]
        )
        connectors = await self._connectors.resolve(the_org, spec.connectors)
        created = await self._keys.create(
            org=the_org, sandbox=sandbox, name=spec.name, region=spec.region, volumes=volumes, storage=storage,
            connectors=connectors, created_by=p.actor.id, expires_at=spec.expires_at,
        )
        view = await self._key_view(created.record)
        await self._record(p, "key.create", the_org, created.record.id, after=view)
        return Secret(view, created.secret)

    async def list_keys(self, p: AdminPrincipal, *, org: str | None = None, every_org: bool = False) -> list[View]:
        """Keys (revoked ones too) with what each binds; `every_org`: all organizations' (operators)."""
        require(p, READ)
        if every_org:
            require(p, OPERATE)
            keys = await self._keys.list(None)
        else:
            keys = await self._keys.list((await self._org(p, org)).id)
        return [await self._key_view(k) for k in keys]

    async def show_key(self, p: AdminPrincipal, key_id: str) -> View:
        require(p, READ)
        return await self._key_view(await self._key(p, key_id))

    async def revoke_key(self, p: AdminPrincipal, key_id: str) -> View:
        require(p, WRITE)
        key = await self._key(p, key_id)
        before = await self._key_view(key)
        await self._keys.revoke(key.id)
        after = await self._key_view(await self._key(p, key_id))
        await self._record(p, "key.revoke", await self._org_of(key), key.id, before=before, after=after)
        return after

    async def bind_volume(self, p: AdminPrincipal, key_id: str, volume: str, *, read_only: bool) -> View:
        require(p, WRITE)
        key = await self._key(p, key_id)
        before = await self._key_view(key)
        await self._keys.bind_volume(key.id, volume, read_only=read_only)
        after = await self._key_view(key)
        await self._record(p, "key.bind", await self._org_of(key), key.id, before=before, after=after)
        return after

    async def unbind_volume(self, p: AdminPrincipal, key_id: str, volume: str) -> View:
        require(p, WRITE)
        key = await self._key(p, key_id)
        before = await self._key_view(key)
        await self._keys.unbind_volume(key.id, volume)
        after = await self._key_view(key)
        await self._record(p, "key.unbind", await self._org_of(key), key.id, before=before, after=after)
        return after

    async def _key(self, p: AdminPrincipal, key_id: str) -> ApiKey:
        """A key of the principal's organization (any, for an operator); 404 otherwise."""
        key = await self._store.keys.get(key_id)
        if key is None or (key.org_id != p.org.id and not p.can(OPERATE)):
            raise NotFound(f"no API key {key_id!r}")
        return key

    async def _org_of(self, key: ApiKey) -> Org | None:
        return await self._store.orgs.get(key.org_id)

    async def _key_view(self, key: ApiKey) -> View:
        sandbox = await self._store.sandboxes.get(key.sandbox_id) if key.sandbox_id else None
        image = await self._images.name_of(sandbox.image_id) if sandbox is not None else None
        return {
            "id": key.id,
            "prefix": key.display_prefix,
            "name": key.name,
            "status": key_status(key, utcnow()),
            "created_by": key.created_by,
            "created_at": _at(key.created_at),
            "last_used_at": _at(key.last_used_at),
            "expires_at": _at(key.expires_at),
            "revoked_at": _at(key.revoked_at),
            "sandbox": sandbox.name if sandbox is not None else None,
            "image": image,
            "volumes": [{"name": v.slug, "read_only": ro} for v, ro in await self._store.volumes.bindings(key.id)],
            "storage": [
                {"name": c.name, "read_only": b.read_only, "prefix": b.prefix}
                for c, b in await self._store.storage.bindings(key.id)
            ],
            "connectors": [c.name for c in await self._store.connectors.bindings(key.id)],
        }

    # --- sandbox configs --------------------------------------------------------------------

    async def create_sandbox(
        self, p: AdminPrincipal, config: SandboxConfig, *, image: str = HOST, org: str | None = None
    ) -> View:
        require(p, WRITE)
        the_org = await self._org(p, org)
        _within_host(p, config)
        found = await self._images.find(the_org, image)
        view = await self._sandbox_view(await self._tenancy.create_sandbox(the_org, config, found))
        await self._record(p, "sandbox.create", the_org, view["id"], after=view)
        return view

    async def update_sandbox(
        self, p: AdminPrincipal, name: str, changes: SandboxChanges, *, org: str | None = None
    ) -> View:
        """Change what is given; the keys' next executions use it (threads keep their homes)."""
        require(p, WRITE)
        the_org = await self._org(p, org)
        current = await self._tenancy.sandbox(the_org, name)
        before = await self._sandbox_view(current)
        network = changes.network if changes.network is not None else current.network
        allow = changes.allow if changes.allow is not None else tuple(current.network_allow or ())
        if network != "allowlist" and changes.allow is None:
            allow = ()  # leaving the allowlist mode drops its list
        config = SandboxConfig(
            name=current.name,
            cpus=changes.cpus if changes.cpus is not None else current.cpus,
            memory_mib=changes.memory_mib if changes.memory_mib is not None else current.memory_mib,
            network=network,
            allow=allow,
            timeout_cap_s=changes.timeout_cap_s if changes.timeout_cap_s is not None else current.timeout_cap_s,
            session=changes.session if changes.session is not None else current.session,
        )
        _within_host(p, config)
        image = await self._images.find(the_org, changes.image if changes.image is not None else before["image"])
        view = await self._sandbox_view(await self._tenancy.update_sandbox(the_org, config, image))
        await self._record(p, "sandbox.update", the_org, current.id, before=before, after=view)
        return view

    async def list_sandboxes(self, p: AdminPrincipal, *, org: str | None = None) -> list[View]:
        require(p, READ)
        the_org = await self._org(p, org)
        return [await self._sandbox_view(s) for s in await self._tenancy.list_sandboxes(the_org)]

    async def show_sandbox(self, p: AdminPrincipal, name: str, *, org: str | None = None) -> View:
        require(p, READ)
        return await self._sandbox_view(await self._tenancy.sandbox(await self._org(p, org), name))

    async def delete_sandbox(self, p: AdminPrincipal, name: str, *, org: str | None = None) -> None:
        require(p, WRITE)
        the_org = await self._org(p, org)
        before = await self._sandbox_view(await self._tenancy.sandbox(the_org, name))
        await self._tenancy.delete_sandbox(the_org, name)
        await self._record(p, "sandbox.delete", the_org, before["id"], before=before)

    async def _sandbox_view(self, sandbox: Sandbox) -> View:
        return sandbox_view(sandbox, await self._images.name_of(sandbox.image_id))

    # --- images -----------------------------------------------------------------------------
    # `builtin`: the images every organization can use (no owner); operators only.

    async def _image_org(self, p: AdminPrincipal, org: str | None, builtin: bool) -> Org | None:
        if builtin:
            require(p, OPERATE)
            return None
        return await self._org(p, org)

    async def list_images(self, p: AdminPrincipal, *, org: str | None = None, builtin: bool = False) -> list[View]:
        """An organization's images and the built-in ones (`builtin`: every image, operators)."""
        require(p, READ)
        owner = await self._image_org(p, org, builtin)
        return [host_image_view(), *(image_view(i) for i in await self._images.list(owner))]

    async def show_image(
        self, p: AdminPrincipal, name: str, *, org: str | None = None, builtin: bool = False
    ) -> View:
        require(p, READ)
        info = await self._images.show(await self._image_org(p, org, builtin), name)
        config = info.record.config
        return {
            **image_view(info.record), "disk_bytes": info.disk_bytes, "layers": len(config.get("layers", [])),
            "compressed_bytes": config.get("blob_bytes"), "env": config.get("env", {}),
            "binaries": config.get("binaries", {}),
        }

    async def delete_image(self, p: AdminPrincipal, name: str, *, org: str | None = None, builtin: bool = False) -> None:
        require(p, WRITE)
        owner = await self._image_org(p, org, builtin)
        found = await self._images.find(owner, name)
        await self._images.delete(owner, name)
        before = image_view(found) if found is not None else {"name": name}
        await self._record(p, "image.delete", owner, before.get("id") or name, before=before)

    async def import_image(
        self, p: AdminPrincipal, name: str, path: Path, progress: Progress, *, org: str | None = None,
        builtin: bool = False,
    ) -> View:
        """From a file on the server's host: the CLI's (root on the host)."""
        require(p, WRITE)
        owner = await self._image_org(p, org, builtin)
        view = image_view(await self._images.import_path(owner, name, path, progress))
        await self._record(p, "image.import", owner, view["id"], after=view)
        return view

    async def pull_image(
        self, p: AdminPrincipal, name: str, ref: str, progress: Progress, *,
        credentials: skopeo.Credentials | None = None, plain_http: bool = False, org: str | None = None,
        builtin: bool = False,
    ) -> View:
        require(p, WRITE)
        owner = await self._image_org(p, org, builtin)
        image = await self._images.pull(
            owner, name, ref, credentials=credentials, plain_http=plain_http, progress=progress
        )
        view = image_view(image)
        await self._record(p, "image.pull", owner, view["id"], after=view)
        return view

    async def build_image(
        self, p: AdminPrincipal, name: str, packages: Sequence[str], progress: Progress, *, suite: str,
        mirror: str | None, org: str | None = None, builtin: bool = False,
    ) -> View:
        require(p, WRITE)
        owner = await self._image_org(p, org, builtin)
        image = await self._images.build(owner, name, packages, suite=suite, mirror=mirror, progress=progress)
        view = image_view(image)
        await self._record(p, "image.build", owner, view["id"], after=view)
        return view

    # --- volumes ----------------------------------------------------------------------------

    async def create_volume(self, p: AdminPrincipal, name: str, quota_mib: int = 1024, *, org: str | None = None) -> View:
        require(p, WRITE)
        the_org = await self._org(p, org)
        view = volume_view(await self._volumes.create(the_org, name, quota_mib))
        await self._record(p, "volume.create", the_org, view["id"], after=view)
        return view

    async def list_volumes(self, p: AdminPrincipal, *, org: str | None = None) -> list[View]:
        require(p, READ)
        return [volume_view(v) for v in await self._volumes.list(await self._org(p, org))]

    async def show_volume(self, p: AdminPrincipal, name: str, *, org: str | None = None) -> View:
        require(p, READ)
        return volume_view(await self._volumes.get(await self._org(p, org), name))

    async def delete_volume(self, p: AdminPrincipal, name: str, *, org: str | None = None) -> None:
        require(p, WRITE)
        the_org = await self._org(p, org)
        before = volume_view(await self._volumes.get(the_org, name))
        await self._volumes.delete(the_org, name)
        await self._record(p, "volume.delete", the_org, before["id"], before=before)

    # --- storage connections (credentials write-only) ---------------------------------------

    async def create_storage(
        self, p: AdminPrincipal, spec: ConnectionSpec, credentials: bytes, *, org: str | None = None
    ) -> View:
        require(p, WRITE)
        the_org = await self._org(p, org)
        connection = await self._storage.create(the_org, spec, credentials)
        view = describe_storage(connection)
        await self._record(p, "storage.create", the_org, connection.id, after=view)
        return view

    async def list_storage(self, p: AdminPrincipal, *, org: str | None = None) -> list[View]:
        require(p, READ)
        return [describe_storage(c) for c in await self._storage.list(await self._org(p, org))]

    async def show_storage(self, p: AdminPrincipal, name: str, *, org: str | None = None) -> View:
        """With the active keys bound to it."""
        require(p, READ)
        connection = await self._storage.get(await self._org(p, org), name)
        return {**describe_storage(connection), "keys": await self._store.storage.bound_keys(connection.id)}

    async def test_storage(self, p: AdminPrincipal, name: str, *, org: str | None = None) -> None:
        """Mount, list and unmount (rclone.MountFailed says what failed)."""
        require(p, READ)
        await self._storage.test(await self._org(p, org), name)

    async def delete_storage(self, p: AdminPrincipal, name: str, *, org: str | None = None) -> None:
        require(p, WRITE)
        the_org = await self._org(p, org)
        connection = await self._storage.get(the_org, name)
        before = describe_storage(connection)
        await self._storage.delete(the_org, name)
        await self._record(p, "storage.delete", the_org, connection.id, before=before)

    # --- connectors (secrets write-only) ----------------------------------------------------

    async def create_connector(
        self, p: AdminPrincipal, name: str, kind: str, secret: bytes, options: kinds.Options, *,
        org: str | None = None,
    ) -> View:
        require(p, WRITE)
        the_org = await self._org(p, org)
        connector = await self._connectors.create(the_org, name, kind, secret, options)
        view = describe_connector(connector)
        await self._record(p, "connector.create", the_org, connector.id, after=view)
        return view

    async def update_connector(self, p: AdminPrincipal, name: str, secret: bytes, *, org: str | None = None) -> View:
        """Replace the secret (the audit row says it changed, never what it is)."""
        require(p, WRITE)
        the_org = await self._org(p, org)
        before = describe_connector(await self._connectors.get(the_org, name))
        connector = await self._connectors.update(the_org, name, secret)
        view = describe_connector(connector)
        await self._record(p, "connector.update", the_org, connector.id, before=before, after=view)
        return view

    async def list_connectors(self, p: AdminPrincipal, *, org: str | None = None) -> list[View]:
        require(p, READ)
        return [describe_connector(c) for c in await self._connectors.list(await self._org(p, org))]

    async def show_connector(self, p: AdminPrincipal, name: str, *, org: str | None = None) -> View:
        require(p, READ)
        connector = await self._connectors.get(await self._org(p, org), name)
        return {**describe_connector(connector), "keys": await self._store.connectors.bound_keys(connector.id)}

    async def delete_connector(self, p: AdminPrincipal, name: str, *, org: str | None = None) -> None:
        require(p, WRITE)
        the_org = await self._org(p, org)
        connector = await self._connectors.get(the_org, name)
        before = describe_connector(connector)
        await self._connectors.delete(the_org, name)
        await self._record(p, "connector.delete", the_org, connector.id, before=before)

    async def rotate_connectors_key(self, p: AdminPrincipal) -> int:
        """Every connector re-sealed under a new key file (the installation's: operators)."""
        require(p, OPERATE)
        count = await self._connectors.rotate_key()
        await self._record(p, "connector.rotate_key", None, "connectors-key", after={"resealed": count})
        return count

    # --- threads (their homes hold the agents' files: a deletion is recorded) ----------------

    async def list_threads(self, p: AdminPrincipal, *, org: str | None = None) -> list[View]:
        require(p, READ)
        return [thread_view(t) for t in await self._threads.list((await self._org(p, org)).id)]

    async def delete_thread(self, p: AdminPrincipal, thread_id: str, *, org: str | None = None) -> None:
        """The thread and its home (409 while an execution holds it)."""
        require(p, WRITE)
        the_org = await self._org(p, org)
        before = thread_view(await self._threads.get(the_org.id, thread_id))
        await self._threads.delete(the_org.id, thread_id)
        await self._record(p, "thread.delete", the_org, thread_id, before=before)

    # --- webhook secret ---------------------------------------------------------------------

    async def webhook_secret(self, p: AdminPrincipal, *, rotate: bool = False, org: str | None = None) -> Secret:
        """Create (or `rotate`) the organization's webhook signing secret; shown once."""
        require(p, WRITE)
        the_org = await self._org(p, org)
        secret = await self._webhooks.create_secret(the_org.id, rotate=rotate)
        view = {"org": the_org.name, "rotated": rotate}
        await self._record(p, "webhook.rotate" if rotate else "webhook.create", the_org, the_org.id, after=view)
        return Secret(view, secret)

    # --- plans and usage ----------------------------------------------------------------------

    async def show_plan(self, p: AdminPrincipal, *, org: str | None = None) -> View:
        """The plan the organization is on, and what it used this month."""
        require(p, READ)
        the_org = await self._org(p, org)
        plan = plan_view(await self._plans.plan_of(the_org))
        return {"org": the_org.name, "plan": plan, "usage": usage_view(await self._usage.usage(the_org))}

    async def list_plans(self, p: AdminPrincipal, *, org: str | None = None) -> list[View]:
        """The presets (with this installation's figures) and the organization's custom plans."""
        require(p, READ)
        return [plan_view(plan) for plan in await self._plans.list(await self._org(p, org))]

    async def usage(self, p: AdminPrincipal, *, month: str | None = None, org: str | None = None) -> View:
        """What the organization used in `month` (YYYY-MM, UTC; default this month)."""
        require(p, READ)
        if month is not None:
            check_month(month)  # "" too: the service would read it as "this month"
        return usage_view(await self._usage.usage(await self._org(p, org), month))

    async def assign_plan(self, p: AdminPrincipal, name: str, *, org: str | None = None) -> View:
        """Put the organization on plan `name` (operators: plans are the installation's terms)."""
        require(p, OPERATE)
        the_org = await self._org(p, org)
        before = (await self._plans.plan_of(the_org)).name
        assigned = await self._plans.assign(the_org, name)
        await self._record(p, "plan.assign", the_org, the_org.name, before={"plan": before},
                           after={"plan": assigned.name})
        return plan_view(assigned)

    async def create_plan(self, p: AdminPrincipal, name: str, limits: PlanLimits, *, org: str | None = None) -> View:
        """A custom plan of the organization (operators); assign it with `assign_plan`."""
        require(p, OPERATE)
        the_org = await self._org(p, org)
        made = await self._plans.create_custom(the_org, name, limits)
        await self._record(p, "plan.create", the_org, name, after=asdict(made.limits))
        return plan_view(made)

    # --- the audit log ----------------------------------------------------------------------

    async def search_audit(
        self, p: AdminPrincipal, filters: AuditFilters, *, limit: int = 100, cursor: str | None = None,
        org: str | None = None,
    ) -> View:
        """A page of the organization's audit rows, and the cursor of the next page (None: last)."""
        require(p, AUDIT)
        the_org = await self._org(p, org)
        page = await self._audit_log().search(replace(filters, org_id=the_org.id), limit=limit, cursor=cursor)
        return {"rows": [row_json(r) for r in page.rows], "cursor": page.cursor}

    async def export_audit(
        self, p: AdminPrincipal, filters: AuditFilters, *, format: str = "jsonl", org: str | None = None
    ) -> AsyncIterator[str]:
        """The organization's audit rows as JSONL or CSV text, a line at a time."""
        require(p, AUDIT)
        the_org = await self._org(p, org)
        if format not in AUDIT_FORMATS:
            raise InvalidRequest("format must be jsonl or csv")
        return self._audit_log().export(replace(filters, org_id=the_org.id), format)

    def _audit_log(self) -> AuditLog:
        if not isinstance(self.audit, AuditLog):
            raise Unavailable("this server keeps no searchable audit log")
        return self.audit


def parse_time(text: str | None, name: str) -> datetime | None:
    """An RFC 3339 time with its zone (`2030-01-31T00:00:00Z`), as the surfaces take one."""
    if text is None:
        return None
    try:
        at = datetime.fromisoformat(text.strip().upper().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"{name} must be an RFC 3339 time like 2030-01-31T00:00:00Z") from None
    if at.tzinfo is None:
        raise InvalidRequest(f"{name} needs a time zone (e.g. 2030-01-31T00:00:00Z)")
    return at


def audit_filters(
    *, trace_id: str | None = None, key_id: str | None = None, kind: str | None = None, action: str | None = None,
    metadata: Sequence[str] = (), since: str | None = None, until: str | None = None,
    newest_first: bool = False,
) -> AuditFilters:
    """What an audit search selects; `metadata` entries are KEY=VALUE (every one must match)."""
    pairs: dict[str, str] = {}
    for entry in metadata:
        key, sep, value = entry.partition("=")
        if not sep or not key:
            raise InvalidRequest(f"metadata takes KEY=VALUE, not {entry[:80]!r}")
        pairs[key] = value
    return AuditFilters(
        trace_id=trace_id, key_id=key_id, kind=kind, action=action, metadata=pairs,
        since=parse_time(since, "since"), until=parse_time(until, "until"), newest_first=newest_first,
    )


def parse_volume_ref(spec: str) -> VolumeRef:
    """The CLI's `NAME`, `NAME:rw` or `NAME:ro`."""
    name, _, mode = spec.partition(":")
    if mode not in ("", "ro", "rw"):
        raise InvalidRequest(f"--volume {spec!r}: the mode after ':' must be ro or rw")
    return VolumeRef(name, mode == "ro")


def parse_storage_ref(spec: str) -> StorageRef:
    """The CLI's `NAME[:ro][:prefix=PATH]`."""
    name, read_only, prefix = scoping.parse_binding(spec)
    return StorageRef(name, read_only, prefix)
