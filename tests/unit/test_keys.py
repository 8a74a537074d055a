"""API keys: the pepper file, the keyed digest, and create/authenticate/revoke on real SQLite."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandboxd.errors import InvalidRequest, NotFound
from sandboxd.service.invalidation import EpochFile
from sandboxd.service.keycache import PrincipalCache
from sandboxd.service.keys import SECRET_FILE, KeyService, load_or_create_secret
from sandboxd.service.tenancy import SandboxConfig, TenancyService
from sandboxd.store import Org, Sandbox, Store, Volume, utcnow

PEPPER = bytes(range(32))
KEY_SHAPE = re.compile(r"\Ask-local-[A-Za-z0-9]{40}\Z")

# --------------------------------------------------------------------------- the pepper file


@pytest.fixture
def permissive_umask() -> Iterator[None]:
    """umask 0: the file's mode must come from the code, not from a friendly umask."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_secret_created_0600_with_64_hex(tmp_path: Path, permissive_umask: None) -> None:
    secret = load_or_create_secret(tmp_path)
    path = tmp_path / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}", text)
    assert secret == bytes.fromhex(text)
    assert len(secret) == 32


def test_secret_stable_across_calls(tmp_path: Path) -> None:
    first = load_or_create_secret(tmp_path)
    second = load_or_create_secret(tmp_path)
    assert first == second
    assert stat.S_IMODE((tmp_path / SECRET_FILE).stat().st_mode) == 0o600


def test_secret_differs_between_data_dirs(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert load_or_create_secret(tmp_path / "a") != load_or_create_secret(tmp_path / "b")


def test_existing_secret_read_not_replaced(tmp_path: Path) -> None:
    (tmp_path / SECRET_FILE).write_text("ab" * 32 + "\n")
    assert load_or_create_secret(tmp_path) == bytes([0xAB]) * 32
    assert (tmp_path / SECRET_FILE).read_text() == "ab" * 32 + "\n"


@pytest.mark.parametrize("content", ["", "abcd", "00" * 31], ids=["empty", "short", "31-bytes"])
def test_short_secret_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / SECRET_FILE).write_text(content)
    with pytest.raises(RuntimeError, match="damaged"):
        load_or_create_secret(tmp_path)


def test_non_hex_secret_refused_as_damaged(tmp_path: Path) -> None:
    (tmp_path / SECRET_FILE).write_text("zz" * 32)
    with pytest.raises(RuntimeError, match="damaged"):
        load_or_create_secret(tmp_path)


# --------------------------------------------------------------------------- digest


def test_digest_is_hmac_sha256_with_pepper() -> None:
    ks = KeyService(store=None, pepper=PEPPER)  # type: ignore[arg-type]
    key = "sk-local-" + "A" * 40
    expected = hmac.new(PEPPER, key.encode(), hashlib.sha256).hexdigest()
    assert ks.digest(key) == expected
    assert re.fullmatch(r"[0-9a-f]{64}", ks.digest(key))
    assert ks.digest(key) != hashlib.sha256(key.encode()).hexdigest()  # keyed, not a plain hash


def test_digest_depends_on_pepper_and_key() -> None:
    key = "sk-local-" + "A" * 40
    a = KeyService(store=None, pepper=PEPPER)  # type: ignore[arg-type]
    b = KeyService(store=None, pepper=bytes(32))  # type: ignore[arg-type]
    assert a.digest(key) == a.digest(key)
    assert a.digest(key) != b.digest(key)
    assert a.digest(key) != a.digest(key[:-1] + "B")


# --------------------------------------------------------------------------- no DB for malformed keys


class ExplodingStore:
    """Any attribute access is a DB hit the code must not make."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"store.{name} touched for a malformed key")


VALID_TOKEN = "Ab3" + "x" * 37

MALFORMED = [
    pytest.param("", id="empty"),
    pytest.param("sk-local-", id="no-token"),
    pytest.param("sk-local-" + VALID_TOKEN[:39], id="token-39"),
    pytest.param("sk-local-" + VALID_TOKEN + "x", id="token-41"),
    pytest.param("sk-local-" + VALID_TOKEN[:39] + "!", id="token-punctuation"),
    pytest.param("sk-local-" + VALID_TOKEN[:39] + "é", id="token-non-ascii"),
    pytest.param("sk-LOCAL-" + VALID_TOKEN, id="region-uppercase"),
    pytest.param("sk--" + VALID_TOKEN, id="region-empty"),
    pytest.param("sk-" + "a" * 17 + "-" + VALID_TOKEN, id="region-17"),
    pytest.param("sk-lo_cal-" + VALID_TOKEN, id="region-underscore"),
    pytest.param("pk-local-" + VALID_TOKEN, id="wrong-prefix"),
    pytest.param("SK-local-" + VALID_TOKEN, id="prefix-uppercase"),
    pytest.param("sk-local" + VALID_TOKEN, id="missing-dash"),
    pytest.param("Bearer sk-local-" + VALID_TOKEN, id="with-scheme"),
    pytest.param(" sk-local-" + VALID_TOKEN, id="leading-space"),
    pytest.param("sk-local-" + VALID_TOKEN + " ", id="trailing-space"),
    pytest.param("sk-local-" + VALID_TOKEN + "\x00", id="trailing-nul"),
    pytest.param("sk-local-" + VALID_TOKEN + "\r\n", id="trailing-crlf"),
    pytest.param("x" * 10_000, id="huge"),
]


@pytest.mark.parametrize("presented", MALFORMED)
async def test_malformed_key_rejected_without_db(presented: str) -> None:
    ks = KeyService(ExplodingStore(), PEPPER)  # type: ignore[arg-type]
    assert await ks.authenticate(presented) is None


async def test_exploding_store_does_explode_for_a_well_formed_key() -> None:
    """The probe above is meaningful: a well-formed key does reach the store."""
    ks = KeyService(ExplodingStore(), PEPPER)  # type: ignore[arg-type]
    with pytest.raises(AssertionError, match="touched"):
        await ks.authenticate("sk-local-" + VALID_TOKEN)


async def test_key_with_trailing_newline_rejected_without_db() -> None:
    ks = KeyService(ExplodingStore(), PEPPER)  # type: ignore[arg-type]
    assert await ks.authenticate("sk-local-" + VALID_TOKEN + "\n") is None


# --------------------------------------------------------------------------- real SQLite


@pytest.fixture
async def tenancy(store: Store) -> TenancyService:
    return TenancyService(store)


@pytest.fixture
async def org(tenancy: TenancyService) -> Org:
    return await tenancy.ensure_defaults()


@pytest.fixture
async def sandbox(tenancy: TenancyService, org: Org) -> Sandbox:
    return await tenancy.sandbox(org, "default")


@pytest.fixture
async def keys(store: Store) -> AsyncIterator[KeyService]:
    service = KeyService(store, PEPPER)
    yield service
    await service.settle()  # its last-use writes, before the store closes


async def test_create_then_authenticate(
    keys: KeyService, store: Store, org: Org, sandbox: Sandbox
) -> None:
    created = await keys.create(org=org, sandbox=sandbox, name="ci")
    assert KEY_SHAPE.match(created.secret)
    record = created.record
    assert record.org_id == org.id and record.sandbox_id == sandbox.id
    assert record.name == "ci" and record.region == "local" and record.revoked_at is None
    assert record.digest == keys.digest(created.secret)
    # The display prefix identifies the key without revealing it: 4 random characters at most.
    assert created.secret.startswith(record.display_prefix)
    assert len(record.display_prefix) == len("sk-local-") + 4

    principal = await keys.authenticate(created.secret)
    assert principal is not None
    assert principal.key_id == record.id
    assert principal.org.id == org.id and principal.org.name == "default"
    assert principal.sandbox.id == sandbox.id and principal.sandbox.name == "default"


async def test_secret_is_not_stored(keys: KeyService, store: Store, org: Org, sandbox: Sandbox) -> None:
    created = await keys.create(org=org, sandbox=sandbox)
    stored = await store.keys.get(created.record.id)
    assert stored is not None
    assert created.secret not in repr(stored)
    assert created.secret[len("sk-local-") :] not in repr(stored)
    assert stored.digest == keys.digest(created.secret)
    assert stored.name == "unnamed"


async def test_keys_are_unique(keys: KeyService, org: Org, sandbox: Sandbox) -> None:
    a = await keys.create(org=org, sandbox=sandbox)
    b = await keys.create(org=org, sandbox=sandbox)
    assert a.secret != b.secret and a.record.id != b.record.id
    pa, pb = await keys.authenticate(a.secret), await keys.authenticate(b.secret)
    assert pa is not None and pb is not None
    assert (pa.key_id, pb.key_id) == (a.record.id, b.record.id)


async def test_region(keys: KeyService, org: Org, sandbox: Sandbox) -> None:
    created = await keys.create(org=org, sandbox=sandbox, region="eu1")
    assert re.fullmatch(r"sk-eu1-[A-Za-z0-9]{40}", created.secret)
    assert created.record.region == "eu1"
    assert await keys.authenticate(created.secret) is not None


@pytest.mark.parametrize("region", ["", "EU", "eu-west", "a" * 17, "eu_1", "é"])
async def test_bad_region_refused(keys: KeyService, org: Org, sandbox: Sandbox, region: str) -> None:
    with pytest.raises(InvalidRequest, match="region"):
        await keys.create(org=org, sandbox=sandbox, region=region)


async def test_sandbox_of_another_org_refused(
    keys: KeyService, tenancy: TenancyService, org: Org, sandbox: Sandbox
) -> None:
    other = await tenancy.ensure_org("other")
    other_box = await tenancy.create_sandbox(other, SandboxConfig(name="big", memory_mib=2048))
    with pytest.raises(InvalidRequest, match="another organization"):
        await keys.create(org=org, sandbox=other_box)
    created = await keys.create(org=other, sandbox=other_box)
    principal = await keys.authenticate(created.secret)
    assert principal is not None
    assert principal.org.id == other.id and principal.sandbox.memory_mib == 2048


async def test_unknown_well_formed_key(keys: KeyService, org: Org, sandbox: Sandbox) -> None:
    await keys.create(org=org, sandbox=sandbox)
    assert await keys.authenticate("sk-local-" + VALID_TOKEN) is None


async def test_other_pepper_cannot_authenticate(
    store: Store, keys: KeyService, org: Org, sandbox: Sandbox
) -> None:
    created = await keys.create(org=org, sandbox=sandbox)
    assert await KeyService(store, bytes(32)).authenticate(created.secret) is None
    assert await keys.authenticate(created.secret) is not None


async def test_near_miss_key_rejected(keys: KeyService, org: Org, sandbox: Sandbox) -> None:
    created = await keys.create(org=org, sandbox=sandbox)
    last = created.secret[-1]
    flipped = created.secret[:-1] + ("a" if last != "a" else "b")
    assert await keys.authenticate(flipped) is None
    other_region = created.secret.replace("sk-local-", "sk-eu1-", 1)
    assert await keys.authenticate(other_region) is None


async def test_revoke(keys: KeyService, store: Store, org: Org, sandbox: Sandbox) -> None:
    keep = await keys.create(org=org, sandbox=sandbox)
    gone = await keys.create(org=org, sandbox=sandbox)
    returned = await keys.revoke(gone.record.id)
    assert returned.id == gone.record.id
    assert await keys.authenticate(gone.secret) is None
    assert await keys.authenticate(keep.secret) is not None  # only that key
    stored = await store.keys.get(gone.record.id)
    assert stored is not None and stored.revoked_at is not None
    await keys.revoke(gone.record.id)  # again: no error, still revoked
    assert await keys.authenticate(gone.secret) is None


async def test_revoke_unknown(keys: KeyService, org: Org) -> None:
    with pytest.raises(NotFound):
        await keys.revoke("key_doesnotexist")


async def test_key_of_deleted_sandbox_rejected(
    keys: KeyService, tenancy: TenancyService, org: Org
) -> None:
    box = await tenancy.create_sandbox(org, SandboxConfig(name="temp"))
    created = await keys.create(org=org, sandbox=box)
    await keys.revoke(created.record.id)
    await tenancy.delete_sandbox(org, "temp")
    assert await keys.authenticate(created.secret) is None


async def test_ensure_defaults_idempotent(tenancy: TenancyService, org: Org) -> None:
    again = await tenancy.ensure_defaults()
    assert again.id == org.id
    boxes = await tenancy.list_sandboxes(org)
    assert [b.name for b in boxes] == ["default"]


async def test_principal_of_a_key_id_ends_with_its_revocation_even_when_cached(
    store: Store, org: Org, sandbox: Sandbox, tmp_path: Path
) -> None:
    """Signed file URLs name their key; the server's cached lookup must see a revocation made by
    another process (`sandboxd keys revoke`) at the next call, not after the cache's TTL."""
    server = KeyService(store, PEPPER, PrincipalCache(EpochFile(tmp_path / "auth-epoch"), ttl_s=3600))
    created = await server.create(org=org, sandbox=sandbox)
    principal = await server.principal_of(created.record.id)
    assert principal is not None and principal.key_id == created.record.id and principal.org.id == org.id
    assert await server.principal_of(created.record.id) is principal  # cached
    assert await server.principal_of("key_unknown") is None
    cli = KeyService(store, PEPPER, PrincipalCache(EpochFile(tmp_path / "auth-epoch"), ttl_s=3600))
    await cli.revoke(created.record.id)
    assert await server.principal_of(created.record.id) is None


async def test_a_binding_changed_by_another_process_is_seen_at_once(
    store: Store, org: Org, sandbox: Sandbox, tmp_path: Path
) -> None:
    server = KeyService(store, PEPPER, PrincipalCache(EpochFile(tmp_path / "auth-epoch"), ttl_s=3600))
    cli = KeyService(store, PEPPER, PrincipalCache(EpochFile(tmp_path / "auth-epoch"), ttl_s=3600))
    volume = await store.volumes.add(Volume(id="vol_1", org_id=org.id, slug="data", quota_mib=10, created_at=utcnow()))
    created = await server.create(org=org, sandbox=sandbox, volumes=[(volume, False)])
    key_id = created.record.id

    async def bindings() -> list[tuple[str, bool]]:
        principal = await server.principal_of(key_id)
        assert principal is not None
        return [(v.slug, ro) for v, ro in principal.volumes]

    assert await bindings() == [("data", False)]
    await cli.bind_volume(key_id, "data", read_only=True)
    assert await bindings() == [("data", True)]
    await cli.unbind_volume(key_id, "data")
    assert await bindings() == []
    with pytest.raises(NotFound, match="not bound"):
        await cli.unbind_volume(key_id, "data")
    with pytest.raises(NotFound, match="no volume"):
        await cli.bind_volume(key_id, "other", read_only=False)
    await cli.revoke(key_id)
    with pytest.raises(NotFound, match="no active API key"):
        await cli.bind_volume(key_id, "data", read_only=False)


# --------------------------------------------------------------------------- expiry, creator, last use


async def test_an_expired_key_is_refused_even_when_cached(
    store: Store, org: Org, sandbox: Sandbox, tmp_path: Path
) -> None:
    from datetime import timedelta

    service = KeyService(store, PEPPER, PrincipalCache(EpochFile(tmp_path / "auth-epoch"), ttl_s=3600))
    soon = utcnow() + timedelta(seconds=1)
    created = await service.create(org=org, sandbox=sandbox, created_by="mem_1", expires_at=soon)
    assert created.record.created_by == "mem_1" and created.record.expires_at == soon
    assert await service.authenticate(created.secret) is not None  # now cached
    import asyncio

    await asyncio.sleep((soon - utcnow()).total_seconds() + 0.05)
    assert await service.authenticate(created.secret) is None
    assert await service.principal_of(created.record.id) is None
    await service.settle()


async def test_expiry_in_the_past_or_without_a_zone_is_refused(keys: KeyService, org: Org, sandbox: Sandbox) -> None:
    from datetime import datetime, timedelta

    with pytest.raises(InvalidRequest, match="future"):
        await keys.create(org=org, sandbox=sandbox, expires_at=utcnow() - timedelta(seconds=1))
    with pytest.raises(InvalidRequest, match="time zone"):
        await keys.create(org=org, sandbox=sandbox, expires_at=datetime(2999, 1, 1))


async def test_last_use_is_written_once_a_minute(keys: KeyService, store: Store, org: Org, sandbox: Sandbox) -> None:
    created = await keys.create(org=org, sandbox=sandbox)
    assert (await store.keys.get(created.record.id)).last_used_at is None  # type: ignore[union-attr]
    await keys.authenticate(created.secret)
    await keys.settle()
    first = (await store.keys.get(created.record.id)).last_used_at  # type: ignore[union-attr]
    assert first is not None
    await keys.authenticate(created.secret)
    await keys.settle()
    assert (await store.keys.get(created.record.id)).last_used_at == first  # type: ignore[union-attr]
