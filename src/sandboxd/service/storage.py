"""Storage connections: an organization's buckets (S3, GCS, Azure Blob) at /data/<name>/.

The server holds the credentials (sealed at rest, service/sealing.py) and makes the mount
(buckets/); the sandbox only ever gets a bind of the scoped directory. Credentials are given
once, at creation, and no command or API shows them again; a connection cannot be changed,
only deleted (refused while an active key is bound) and made again.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..buckets import providers, rclone
from ..buckets.mounts import BucketMounts, Lease, MountKey
from ..errors import Conflict, InvalidRequest, NotFound, Unavailable
from ..ids import NAME_PATTERN, NAME_RULE, new_id, reserved_data_name
from ..store import DuplicateError, Org, Store, StorageConnection, utcnow
from . import scoping
from .keys import Principal
from .sealing import Sealer

_NAME = NAME_PATTERN.strip("^$")


@dataclass(frozen=True)
class StorageMountBinding:
    """A bucket bound to the calling key, as an execution job carries it (no secret)."""

    org_id: str
    connection_id: str
    name: str
    kind: str
    #: Refused writes: the binding's or the connection's.
    read_only: bool
    #: The path in the bucket the key sees: the connection's prefix, then the key's.
    path: str
    #: The connection itself is read-only (rclone mounts it so).
    connection_read_only: bool = False

    @classmethod
    def of(cls, principal: Principal) -> tuple[StorageMountBinding, ...]:
        return tuple(
            cls(c.org_id, c.id, c.name, c.kind, b.read_only or c.read_only, scoping.join(c.prefix, b.prefix), c.read_only)
            for c, b in principal.storage
        )


@dataclass(frozen=True)
class ConnectionSpec:
    """What `storage create` takes, besides the credentials."""

    name: str
    kind: str
    bucket: str
    endpoint: str | None = None
    region: str | None = None
    prefix: str = ""
    read_only: bool = False


def describe(connection: StorageConnection) -> dict[str, Any]:
    """A connection as every surface shows it: never its credentials."""
    return {
        "name": connection.name,
        "type": connection.kind,
        "bucket": connection.bucket,
        "endpoint": connection.endpoint,
        "region": connection.region,
        "prefix": connection.prefix,
        "read_only": connection.read_only,
        "mounted_at": scoping.dest(connection.name, "") + "/",
        "created_at": connection.created_at.isoformat(),
    }


class StorageService:
    def __init__(self, store: Store, sealer: Sealer, mounts: BucketMounts | None = None, *, work_dir: Path) -> None:
        self._store = store
        self._sealer = sealer
        self.mounts = mounts
        self._work_dir = work_dir

    async def create(self, org: Org, spec: ConnectionSpec, credentials: bytes) -> StorageConnection:
        if not re.fullmatch(_NAME, spec.name):
            raise InvalidRequest(f"storage connection name must be {NAME_RULE}")
        if why := reserved_data_name(spec.name):
            raise InvalidRequest(why)
        if spec.kind not in providers.KINDS:
            raise InvalidRequest(f"storage type must be one of {', '.join(providers.KINDS)}")
        parsed = providers.parse_credentials(spec.kind, credentials)
        providers.Remote(  # checks the bucket's name, the endpoint and the region
            kind=spec.kind, bucket=spec.bucket, credentials=parsed, endpoint=spec.endpoint, region=spec.region
        )
        if await self._store.volumes.by_slug(org.id, spec.name) is not None:
            raise Conflict(f"a volume is named {spec.name!r}: both would show at /data/{spec.name}/; choose another name")
        connection = StorageConnection(
            id=new_id("stc"),
            org_id=org.id,
            name=spec.name,
            kind=spec.kind,
            bucket=spec.bucket,
            endpoint=spec.endpoint,
            region=spec.region,
            prefix=scoping.prefix_of(spec.prefix, "prefix"),
            read_only=spec.read_only,
            sealed=b"",
            created_at=utcnow(),
        )
        # Sealed with the connection's id: a row's secret copied onto another row does not open.
        plain = json.dumps({"id": connection.id, "credentials": parsed}).encode()
        connection = StorageConnection(**{**connection.__dict__, "sealed": self._sealer.seal(plain)})
        try:
            await self._store.storage.add(connection)
        except DuplicateError:
            raise Conflict(f"storage connection {spec.name!r} already exists") from None
        return connection

    async def get(self, org: Org, name: str) -> StorageConnection:
        connection = await self._store.storage.by_name(org.id, name)
        if connection is None:
            raise NotFound(f"no storage connection {name!r}")
        return connection

    async def list(self, org: Org) -> list[StorageConnection]:
        return await self._store.storage.list(org.id)

    async def delete(self, org: Org, name: str) -> None:
        connection = await self.get(org, name)
        if not await self._store.storage.delete_unbound(connection.id):
            keys = await self._store.storage.bound_keys(connection.id)
            raise Conflict(
                f"storage connection {name!r} is bound to active API keys ({', '.join(keys)}); revoke them first"
            )
        if self.mounts is not None:
            await self.mounts.drop(connection.id)

    async def test(self, org: Org, name: str) -> None:
        """Mount the connection as a key without a prefix of its own would see it, list, unmount;
        rclone.MountFailed says what failed in words a user can act on."""
        connection = await self.get(org, name)
        self._work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        await rclone.check(self.remote(connection), connection.prefix, work_dir=self._work_dir)

    def remote(self, connection: StorageConnection) -> providers.Remote:
        """The connection with its credentials opened: for rclone, never for a surface."""
        opened = self._sealer.open(connection.sealed)
        data = json.loads(opened) if opened is not None else None
        if not isinstance(data, dict) or data.get("id") != connection.id:
            raise rclone.MountFailed(
                f"the credentials of storage connection {connection.name!r} cannot be opened "
                "(the data dir's server.secret changed?); delete the connection and create it again"
            )
        return providers.Remote(
            kind=connection.kind, bucket=connection.bucket, credentials=data["credentials"],
            endpoint=connection.endpoint, region=connection.region,
        )

    async def resolve_bindings(
        self, org: Org, specs: Sequence[str], volume_slugs: Sequence[str] = ()
    ) -> builtins.list[tuple[StorageConnection, bool, str]]:
        """`--storage NAME[:ro][:prefix=PATH]` entries -> (connection, read_only, key prefix)."""
        return await self.resolve(org, [scoping.parse_binding(spec) for spec in specs], volume_slugs)

    async def resolve(
        self, org: Org, bindings: Sequence[tuple[str, bool, str]], volume_slugs: Sequence[str] = ()
    ) -> builtins.list[tuple[StorageConnection, bool, str]]:
        """(name, read_only, key prefix) entries -> (connection, read_only, key prefix)."""
        out: builtins.list[tuple[StorageConnection, bool, str]] = []
        for name, read_only, raw_prefix in bindings:
            prefix = scoping.prefix_of(raw_prefix, "the key's prefix")
            connection = await self._store.storage.by_name(org.id, name)
            if connection is None:
                raise NotFound(f"no storage connection {name!r} in organization {org.name!r}")
            if name in volume_slugs:
                raise Conflict(f"the key binds a volume named {name!r} too: both would show at /data/{name}/")
            if any(c.id == connection.id for c, _, _ in out):
                raise InvalidRequest(f"storage connection {name!r} is bound twice")
            out.append((connection, read_only, prefix))
        return out

    async def acquire(self, binding: StorageMountBinding, gid: int) -> Lease:
        """The bucket mount for one execution (reused; mounted on first use, when the
        connection is read from the store for its credentials)."""
        if self.mounts is None:
            raise Unavailable("bucket mounts are not available on this node")

        async def remote() -> providers.Remote:
            connection = await self._store.storage.get(binding.connection_id)
            if connection is None:
                raise rclone.MountFailed(f"storage connection {binding.name!r} was deleted")
            return self.remote(connection)

        key = MountKey(binding.connection_id, binding.path, binding.connection_read_only, gid)
        return await self.mounts.acquire(key, remote, writable=not binding.read_only)
