"""API keys: `sk-<region>-<40 base62 chars>`, shown once, stored as HMAC-SHA256 with a pepper.

A fast keyed hash is right for 238-bit random keys (a slow KDF protects low-entropy
passwords); the pepper lives in the data dir, not the database, so a leaked database alone
cannot be used to test guesses (reference/stack-evaluation.md §8).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from ..errors import Conflict, InvalidRequest, NotFound
from ..ids import new_id, random_token
from ..store import (
    ApiKey,
    Connector,
    DuplicateError,
    Image,
    Org,
    Sandbox,
    StorageBinding,
    StorageConnection,
    Store,
    Volume,
    VolumeBinding,
    utcnow,
)
from .keycache import PrincipalCache
from .plans import UNLIMITED, OrgPlan, PlanService, check_key_count

_REGION = re.compile(r"^[a-z0-9]{1,16}$")
_KEY = re.compile(r"^sk-[a-z0-9]{1,16}-[A-Za-z0-9]{40}$")
SECRET_FILE = "server.secret"
#: Cache entries by key id; the others are by digest (64 hex characters), so they never meet.
_ID_PREFIX = "id:"
#: A key's last use is written at most this often (a write per execution would cost every run).
LAST_USED_EVERY_S = 60.0

log = logging.getLogger("sandboxd.keys")


def load_or_create_secret(data_dir: Path) -> bytes:
    """The server's HMAC pepper: 32 random bytes in `<data_dir>/server.secret`, mode 0600."""
    path = data_dir / SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            secret = bytes.fromhex(path.read_text().strip())
        except ValueError:
            secret = b""
        if len(secret) < 32:
            raise RuntimeError(f"{path} is damaged: expected 64 hex characters") from None
        return secret
    secret = secrets.token_bytes(32)
    with os.fdopen(fd, "w") as f:
        f.write(secret.hex())
    return secret


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key, its organization and the sandbox config it is bound to."""

    key: ApiKey | None
    org: Org
    sandbox: Sandbox
    #: Volumes the key is bound to, with read_only per binding.
    volumes: tuple[tuple[Volume, bool], ...] = ()
    #: The sandbox config's runtime image; None: `host` (or, if `sandbox.image_id` is set, an
    #: image deleted since: its runs are refused).
    image: Image | None = None
    #: Storage connections the key is bound to, with each binding (read-only, the key's prefix).
    storage: tuple[tuple[StorageConnection, StorageBinding], ...] = ()
    #: Connectors the key is bound to (their secrets stay sealed: service/connectors.py).
    connectors: tuple[Connector, ...] = ()
    #: The organization's plan (service/plans.py), as it was when the principal was looked up.
    plan: OrgPlan = UNLIMITED

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key else None

    def expired(self, now: datetime) -> bool:
        return self.key is not None and self.key.expires_at is not None and self.key.expires_at <= now


@dataclass(frozen=True)
class CreatedKey:
    record: ApiKey
    secret: str  # the full key; shown once, never stored


class KeyService:
    def __init__(
        self, store: Store, pepper: bytes, cache: PrincipalCache[Principal] | None = None,
        plans: PlanService | None = None,
    ) -> None:
        """`plans`: the organizations' plans (None: every principal is unlimited)."""
        self._store = store
        self._pepper = pepper
        self._cache = cache
        self._plans = plans
        #: key id -> when (monotonic) its last use was written by this process.
        self._used: dict[str, float] = {}
        self._touching: set[asyncio.Task[None]] = set()

    def digest(self, key: str) -> str:
        return hmac.new(self._pepper, key.encode(), hashlib.sha256).hexdigest()

    async def create(
        self,
        *,
        org: Org,
        sandbox: Sandbox,
        name: str = "",
        region: str = "local",
        volumes: list[tuple[Volume, bool]] | None = None,
        storage: list[tuple[StorageConnection, bool, str]] | None = None,
        connectors: list[Connector] | None = None,
        created_by: str | None = None,
        expires_at: datetime | None = None,
    ) -> CreatedKey:
        """`created_by`: a member's id, "root" (the CLI); `expires_at`: refused from then on."""
        if not _REGION.fullmatch(region):
            raise InvalidRequest("region must be 1-16 lowercase letters or digits")
        if len(name) > 128:
            raise InvalidRequest("key name must be at most 128 characters")
        if sandbox.org_id != org.id:
            raise InvalidRequest(f"sandbox {sandbox.name!r} belongs to another organization")
        if expires_at is not None:
            if expires_at.tzinfo is None:
                raise InvalidRequest("expires_at needs a time zone (e.g. 2030-01-01T00:00:00Z)")
            if expires_at <= utcnow():
                raise InvalidRequest("expires_at must be in the future")
        secret = f"sk-{region}-{random_token(40)}"
        record = ApiKey(
            id=new_id("key"),
            org_id=org.id,
            sandbox_id=sandbox.id,
            name=name or "unnamed",
            region=region,
            digest=self.digest(secret),
            display_prefix=secret[: len(region) + 8],
            created_at=utcnow(),
            revoked_at=None,
            created_by=created_by,
            expires_at=expires_at,
        )
        for volume, _ in volumes or []:
            if volume.org_id != org.id:
                raise InvalidRequest(f"volume {volume.slug!r} belongs to another organization")
        slugs = [v.slug for v, _ in volumes or []]
        for connection, _, _ in storage or []:
            if connection.org_id != org.id:
                raise InvalidRequest(f"storage connection {connection.name!r} belongs to another organization")
            if connection.name in slugs:
                raise Conflict(f"a volume and a storage connection are both named {connection.name!r}: "
                               f"both would show at /data/{connection.name}/")
        for connector in connectors or []:
            if connector.org_id != org.id:
                raise InvalidRequest(f"connector {connector.name!r} belongs to another organization")
        if self._plans is not None:
            now = utcnow()
            active = [
                k for k in await self._store.keys.list(org.id)
                if k.revoked_at is None and (k.expires_at is None or k.expires_at > now)
            ]
            check_key_count(await self._plans.plan_of(org), len(active))
        try:
            await self._store.keys.add(record)
        except DuplicateError:  # 2^-238: a second draw is cheaper than an argument
            return await self.create(
                org=org, sandbox=sandbox, name=name, region=region, volumes=volumes, storage=storage,
                connectors=connectors, created_by=created_by, expires_at=expires_at,
            )
        for volume, read_only in volumes or []:
            await self._store.volumes.bind(VolumeBinding(record.id, volume.id, read_only))
        for connection, read_only, prefix in storage or []:
            await self._store.storage.bind(StorageBinding(record.id, connection.id, read_only, prefix))
        for connector in connectors or []:
            await self._store.connectors.bind(record.id, connector.id)
        return CreatedKey(record=record, secret=secret)

    async def list(self, org_id: str | None = None) -> list[ApiKey]:
        """Every key (of one organization, if given), revoked ones too; never the secrets."""
        return await self._store.keys.list(org_id)

    async def revoke(self, key_id: str) -> ApiKey:
        key = await self._store.keys.get(key_id)
        if key is None:
            raise NotFound(f"no API key {key_id!r}")
        await self._store.keys.revoke(key_id)
        self.invalidate()
        return key

    async def bind_volume(self, key_id: str, slug: str, *, read_only: bool) -> None:
        """Bind an active key to a volume of its organization, or change the binding's mode.

        Like a revocation, it bumps the cache's epoch: from the next request on, the key's
        executions mount the volume this way and its upload URLs need a read-write binding."""
        key, volume = await self._key_and_volume(key_id, slug)
        if any(c.name == slug for c, _ in await self._store.storage.bindings(key.id)):
            raise Conflict(f"the key binds a storage connection named {slug!r}: both would show at /data/{slug}/")
        await self._store.volumes.rebind(VolumeBinding(key.id, volume.id, read_only))
        self.invalidate()

    async def unbind_volume(self, key_id: str, slug: str) -> None:
        key, volume = await self._key_and_volume(key_id, slug)
        if not await self._store.volumes.unbind(key.id, volume.id):
            raise NotFound(f"API key {key_id!r} is not bound to volume {slug!r}")
        self.invalidate()

    async def _key_and_volume(self, key_id: str, slug: str) -> tuple[ApiKey, Volume]:
        key = await self._store.keys.get(key_id)
        if key is None or key.revoked_at is not None:
            raise NotFound(f"no active API key {key_id!r}")
        volume = await self._store.volumes.by_slug(key.org_id, slug)
        if volume is None:
            raise NotFound(f"no volume {slug!r} in the key's organization")
        return key, volume

    def invalidate(self) -> None:
        if self._cache is not None:
            self._cache.invalidate()

    async def authenticate(self, presented: str) -> Principal | None:
        """The principal for a presented key, or None if it is malformed, unknown, revoked or
        expired. Its last use is recorded (at most once a minute, in the background)."""
        if not _KEY.fullmatch(presented):
            return None
        digest = self.digest(presented)
        principal = self._cache.get(digest) if self._cache is not None else None
        if principal is None:
            principal = await self._lookup(presented, digest)
            if principal is not None and self._cache is not None:
                self._cache.put(digest, principal)
        if principal is None or principal.expired(utcnow()):  # a cached one may have expired since
            return None
        if principal.key is not None:
            self._used_now(principal.key.id)
        return principal

    def _used_now(self, key_id: str) -> None:
        """Write the key's last use unless this process wrote it in the last minute; off the
        request's path (a task), and one statement that skips a recent enough value."""
        now = time.monotonic()
        if now - self._used.get(key_id, -LAST_USED_EVERY_S) < LAST_USED_EVERY_S:
            return
        self._used[key_id] = now
        if len(self._used) > 100_000:  # bounded: forget the oldest
            del self._used[next(iter(self._used))]
        task = asyncio.get_running_loop().create_task(self._touch(key_id))
        self._touching.add(task)
        task.add_done_callback(self._touching.discard)

    async def _touch(self, key_id: str) -> None:
        at = utcnow()
        try:
            await self._store.keys.touch(key_id, at, older_than=at - timedelta(seconds=LAST_USED_EVERY_S))
        except Exception as exc:  # a last-use time is not worth a failed request or a loud log
            log.warning("could not record the last use of key %s: %s", key_id, exc)

    async def settle(self) -> None:
        """Wait for last-use writes under way (before the store closes)."""
        if self._touching:
            await asyncio.gather(*self._touching, return_exceptions=True)

    async def principal_of(self, key_id: str) -> Principal | None:
        """The principal of the key `key_id` while it is active, else None: for signed file URLs,
        which name their key but do not hold it. Cached like `authenticate`, under the same
        epoch, so a revocation (from this process or a CLI) is seen at the next call."""
        cache_key = _ID_PREFIX + key_id
        if self._cache is not None and (cached := self._cache.get(cache_key)) is not None:
            return cached
        key = await self._store.keys.get(key_id)
        principal = await self._principal(key) if key is not None else None
        if principal is not None and self._cache is not None:
            self._cache.put(cache_key, principal)
        if principal is not None and principal.expired(utcnow()):
            return None
        return principal

    async def _lookup(self, presented: str, digest: str) -> Principal | None:
        key = await self._store.keys.by_digest(digest)
        if key is None or not hmac.compare_digest(key.digest, self.digest(presented)):
            return None
        return await self._principal(key)

    async def local_principal(self, org: Org, sandbox: Sandbox) -> Principal:
        """A run with no key (`sandboxd run`): the sandbox config's limits and image."""
        image = await self._store.images.get(sandbox.image_id) if sandbox.image_id else None
        return Principal(key=None, org=org, sandbox=sandbox, image=image, plan=await self._plan_of(org))

    async def _principal(self, key: ApiKey) -> Principal | None:
        """What an active key may do; None when it is revoked, expired or its sandbox is gone."""
        if key.revoked_at is not None:
            return None
        if key.expires_at is not None and key.expires_at <= utcnow():
            return None
        if key.sandbox_id is None:  # its sandbox was deleted
            return None
        org = await self._store.orgs.get(key.org_id)
        sandbox = await self._store.sandboxes.get(key.sandbox_id)
        if org is None or sandbox is None:
            return None
        volumes = tuple(await self._store.volumes.bindings(key.id))
        storage = tuple(await self._store.storage.bindings(key.id))
        connectors = tuple(await self._store.connectors.bindings(key.id))
        image = await self._store.images.get(sandbox.image_id) if sandbox.image_id else None
        return Principal(
            key=key, org=org, sandbox=sandbox, volumes=volumes, image=image, storage=storage, connectors=connectors,
            plan=await self._plan_of(org),
        )

    async def _plan_of(self, org: Org) -> OrgPlan:
        return await self._plans.plan_of(org) if self._plans is not None else UNLIMITED
