"""What an execution sees under /data/: its key's volumes and buckets, narrowed by `sub_paths`.

Resolved on the node that runs the sandbox (the volume's path, the bucket's FUSE mount are
this node's). Each listed directory is opened here without following links
(runtime/beneath.py), made if missing and the binding is writable, so that a refusal is the
execution's `volume_mount_error` or `storage_mount_error` with a message naming the entry;
the runtime opens it the same way again and binds the descriptor.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from ..buckets.mounts import Lease
from ..buckets.rclone import MountFailed
from ..errors import SandboxdError
from ..runtime import Mount
from ..runtime.beneath import BeneathError, off_loop, open_beneath
from . import scoping
from .storage import StorageMountBinding, StorageService
from .volumes import VolumeBinding, VolumeMissing, VolumeService


class DataMountError(Exception):
    """A mount of /data could not be made; `code` is the execution's error, the message is
    safe to show (no host path, no secret)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Scoped:
    """One directory shown under /data, as the execution records it."""

    name: str
    type: str
    path: str
    read_only: bool
    #: Where in the volume or bucket ("" = its root; for a bucket, below the bucket's name).
    scope: str

    def record(self) -> dict[str, object]:
        return {"name": self.name, "type": self.type, "path": self.path, "read_only": self.read_only, "scope": self.scope}


def plan(
    volumes: Sequence[VolumeBinding], storage: Sequence[StorageMountBinding], sub_paths: Sequence[str] | None
) -> list[Scoped]:
    """The directories an execution will see (InvalidRequest for a `sub_paths` entry outside
    the key's mounts): decided at submission, recorded with the execution."""
    slugs = [v.slug for v in volumes] + [s.name for s in storage]
    narrowed = scoping.narrow(sub_paths, slugs)
    out: list[Scoped] = []
    for volume in volumes:
        for sub in narrowed.get(volume.slug, ()):
            out.append(Scoped(volume.slug, "volume", scoping.dest(volume.slug, sub), volume.read_only, sub))
    for bucket in storage:
        for sub in narrowed.get(bucket.name, ()):
            scope = scoping.join(bucket.path, sub)
            out.append(Scoped(bucket.name, bucket.kind, scoping.dest(bucket.name, sub), bucket.read_only, scope))
    return out


class DataMounts:
    def __init__(self, volumes: VolumeService, storage: StorageService | None) -> None:
        self._volumes = volumes
        self._storage = storage

    async def prepare(
        self,
        volumes: Sequence[VolumeBinding],
        storage: Sequence[StorageMountBinding],
        sub_paths: Sequence[str] | None,
        gid: int | None,
        leases: list[Lease],
    ) -> tuple[Mount, ...]:
        """The mounts, with bucket mounts leased into `leases` (the caller releases them after
        the run, also on failure); raises DataMountError."""
        narrowed = scoping.narrow(sub_paths, [v.slug for v in volumes] + [s.name for s in storage])
        out: list[Mount] = []
        shown_volumes = [v for v in volumes if v.slug in narrowed]
        try:
            roots = await self._volumes.mounts(shown_volumes)
        except VolumeMissing as exc:
            raise DataMountError("volume_mount_error", f"volume {str(exc)!r} has no storage on this server") from None
        except OSError as exc:
            raise DataMountError("volume_mount_error", f"volumes could not be mounted: {os.strerror(exc.errno or 0)}") from None
        except SandboxdError as exc:
            raise DataMountError("volume_mount_error", f"volumes could not be mounted ({exc.code})") from None
        for volume, root in zip(shown_volumes, roots, strict=True):
            for sub in narrowed[volume.slug]:
                await _check(root.source, sub, not volume.read_only, "volume_mount_error", volume.slug)
                out.append(Mount(root.source, scoping.dest(volume.slug, sub), volume.read_only, sub=sub))
        for bucket in storage:
            if bucket.name not in narrowed:
                continue
            if self._storage is None:
                raise DataMountError("storage_mount_error", "storage connections are not available on this server")
            if gid is None:
                raise DataMountError("storage_mount_error", "the organization has no host group")
            try:
                lease = await self._storage.acquire(bucket, gid)
            except MountFailed as exc:
                raise DataMountError(
                    "storage_mount_error", f"storage connection {bucket.name!r} could not be mounted: {exc.message}"
                ) from None
            leases.append(lease)
            for sub in narrowed[bucket.name]:
                await _check(str(lease.path), sub, not bucket.read_only, "storage_mount_error", bucket.name)
                # Warm sandboxes only for the whole mount: sub_paths come from clients, and each
                # distinct one would be a pool of its own crowding out everyone's.
                out.append(
                    Mount(str(lease.path), scoping.dest(bucket.name, sub), bucket.read_only, sub=sub, pooled=not sub)
                )
        return tuple(out)


async def _check(source: str, sub: str, writable: bool, code: str, slug: str) -> None:
    """The directory exists (made if writable and missing) and no link leads to it."""
    if not sub:
        return
    try:
        fd = await off_loop(lambda: open_beneath(source, sub, create=writable))
    except BeneathError as exc:
        missing = " and the binding is read-only" if exc.missing else ""
        raise DataMountError(code, f"sub_paths entry {scoping.dest(slug, sub)!r} {exc.reason}{missing}") from None
    except OSError as exc:
        raise DataMountError(code, f"sub_paths entry {scoping.dest(slug, sub)!r}: {os.strerror(exc.errno or 0)}") from None
    os.close(fd)
