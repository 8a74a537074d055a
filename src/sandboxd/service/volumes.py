"""Volumes: named, org-wide persistent storage, mounted at /data/<slug>/ for the keys bound to it.

A key is bound to a volume read-write or read-only. Inside the sandbox a read-only binding is
a read-only bind mount. Files in a volume belong to the organization's host group (setgid
directory, sandboxes run with umask 002), so every sandbox of the org can share them while
other organizations' sandboxes cannot even traverse to them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import Conflict, Forbidden, InvalidRequest, NotFound, Unavailable
from ..ids import new_id, reserved_data_name
from ..runtime import Mount
from ..storage import OrgQuotaReached, VolumeStore
from ..store import DuplicateError, Org, Store, Volume, utcnow
from .keys import Principal


@dataclass(frozen=True)
class VolumeAccess:
    """What a principal may do with one volume: where its files are, and whether read-only."""

    volume: Volume
    path: Path
    read_only: bool


@dataclass(frozen=True)
class VolumeBinding:
    """A volume bound to the calling key, as an execution job carries it (no host path)."""

    org_id: str
    slug: str
    read_only: bool

    @classmethod
    def of(cls, principal: Principal) -> tuple[VolumeBinding, ...]:
        return tuple(cls(v.org_id, v.slug, read_only) for v, read_only in principal.volumes)


_SLUG = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")


class VolumeService:
    def __init__(self, store: Store, volumes: VolumeStore | None) -> None:
        self._store = store
        self._volumes = volumes

    def _require_storage(self) -> VolumeStore:
        if self._volumes is None:
            raise Unavailable("volume storage is not available on this server (btrfs-progs and loop mounts are needed)")
        return self._volumes

    async def create(self, org: Org, slug: str, quota_mib: int = 1024) -> Volume:
        if not _SLUG.fullmatch(slug):
            raise InvalidRequest("volume name must be 1-63 lowercase letters, digits, '_' or '-'")
        if why := reserved_data_name(slug):
            raise InvalidRequest(why)
        if not 1 <= quota_mib <= 16 * 1024 * 1024:
            raise InvalidRequest("quota must be between 1 MiB and 16 TiB")
        storage = self._require_storage()
        if await self._store.storage.by_name(org.id, slug) is not None:
            raise Conflict(f"a storage connection is named {slug!r}: both would show at /data/{slug}/; choose another name")
        volume = Volume(id=new_id("vol"), org_id=org.id, slug=slug, quota_mib=quota_mib, created_at=utcnow())
        try:
            await self._store.volumes.add(volume)
        except DuplicateError:
            raise Conflict(f"volume {slug!r} already exists") from None
        try:
            assert org.gid is not None
            await storage.orgs.make_room(org.id, 0)
            await asyncio.to_thread(storage.create, org.id, slug, quota_mib * 1024 * 1024, org.gid)
        except BaseException as exc:
            await self._store.volumes.delete(volume.id)
            if isinstance(exc, OrgQuotaReached):  # the organization's storage cap is used up
                raise Forbidden(str(exc)) from None
            raise
        return volume

    async def get(self, org: Org, slug: str) -> Volume:
        volume = await self._store.volumes.by_slug(org.id, slug)
        if volume is None:
            raise NotFound(f"no volume {slug!r}")
        return volume

    async def list(self, org: Org) -> list[Volume]:
        return await self._store.volumes.list(org.id)

    async def delete(self, org: Org, slug: str) -> None:
        volume = await self.get(org, slug)
        if await self._store.volumes.bound_to_active_keys(volume.id):
            raise Conflict(f"volume {slug!r} is bound to active API keys; revoke them first")
        await asyncio.to_thread(self._require_storage().delete, org.id, slug)
        await self._store.volumes.delete(volume.id)

    async def access(self, principal: Principal, slug: str) -> VolumeAccess:
        """Read-write only through a read-write binding of the caller's key; else read-only."""
        volume = await self.get(principal.org, slug)
        path = await asyncio.to_thread(self._require_storage().ready, volume.org_id, volume.slug)
        if path is None:
            raise NotFound(f"volume {slug!r} has no storage")
        read_only = next((ro for v, ro in principal.volumes if v.id == volume.id), True)
        return VolumeAccess(volume=volume, path=path, read_only=read_only)

    async def mounts(self, bindings: Sequence[VolumeBinding]) -> tuple[Mount, ...]:
        """The bound volumes of an execution, at /data/<slug>/ (paths resolved on this node)."""
        if not bindings:
            return ()
        storage = self._require_storage()
        out = []
        for volume in bindings:
            path = await asyncio.to_thread(storage.ready, volume.org_id, volume.slug)
            if path is None:
                raise VolumeMissing(volume.slug)
            out.append(Mount(str(path), f"/data/{volume.slug}", volume.read_only))
        return tuple(out)


class VolumeMissing(Exception):
    """A bound volume's storage is gone: the execution reports volume_mount_error."""
