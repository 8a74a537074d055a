"""Read models the pages show, assembled from the services (never a secret)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..service.roles import READ, AdminPrincipal, require
from ..store import ApiKey, Sandbox

if TYPE_CHECKING:
    from ..app import Services


@dataclass(frozen=True)
class KeyView:
    key: ApiKey
    sandbox: str
    creator: str
    volumes: list[str]
    storage: list[str]
    connectors: list[str]

    @property
    def active(self) -> bool:
        return self.key.revoked_at is None


async def keys(services: Services, principal: AdminPrincipal) -> list[KeyView]:
    require(principal, READ)
    store = services.store
    sandboxes = {s.id: s.name for s in await services.tenancy.list_sandboxes(principal.org)}
    members = {m.id: m.email for m in await services.members.list(principal.org)}
    views = []
    for key in await services.keys.list(principal.org.id):
        volumes = [f"{v.slug} ({'ro' if ro else 'rw'})" for v, ro in await store.volumes.bindings(key.id)]
        storage = [
            f"{c.name}{'/' + b.prefix if b.prefix else ''} ({'ro' if b.read_only else 'rw'})"
            for c, b in await store.storage.bindings(key.id)
        ]
        connectors = [c.name for c in await store.connectors.bindings(key.id)]
        creator = members.get(key.created_by or "", "cli" if key.created_by == "root" else (key.created_by or "—"))
        views.append(KeyView(
            key=key, sandbox=sandboxes.get(key.sandbox_id or "", "(deleted)"), creator=creator,
            volumes=volumes, storage=storage, connectors=connectors,
        ))
    views.sort(key=lambda v: (not v.active, -v.key.created_at.timestamp()))
    return views


async def sandboxes(services: Services, principal: AdminPrincipal) -> list[tuple[Sandbox, str]]:
    """Each sandbox config with its image's name."""
    require(principal, READ)
    return [
        (s, await services.images.name_of(s.image_id)) for s in await services.tenancy.list_sandboxes(principal.org)
    ]
