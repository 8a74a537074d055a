"""Sealed secrets: what the server must read back (a registry's password) is encrypted at rest."""

from __future__ import annotations

from sandboxd.service.images import ImageService
from sandboxd.service.sealing import Sealer
from sandboxd.store import Store

SECRET = b"s" * 32


def test_seal_round_trip_and_nothing_in_clear() -> None:
    sealer = Sealer(SECRET, "registry credentials")
    sealed = sealer.seal(b"alice:hunter2")
    assert b"hunter2" not in sealed and b"alice" not in sealed
    assert sealer.open(sealed) == b"alice:hunter2"


def test_another_secret_purpose_or_a_changed_byte_does_not_open() -> None:
    sealed = Sealer(SECRET, "registry credentials").seal(b"alice:hunter2")
    assert Sealer(b"t" * 32, "registry credentials").open(sealed) is None
    assert Sealer(SECRET, "webhooks").open(sealed) is None
    tampered = sealed[:-5] + bytes([sealed[-5] ^ 1]) + sealed[-4:]
    assert Sealer(SECRET, "registry credentials").open(tampered) is None


def test_registry_credentials_open_only_for_their_owner_and_registry(store: Store) -> None:
    sealer = Sealer(SECRET, "registry credentials")
    images = ImageService(store, None, sealer, changed=lambda: None)
    sealed = sealer.seal(b"org_a\nghcr.io\nalice:hunter2")
    creds = images._unseal("org_a", "ghcr.io", sealed)
    assert creds is not None and (creds.username, creds.password) == ("alice", "hunter2")
    assert images._unseal("org_b", "ghcr.io", sealed) is None  # a row copied to another org
    assert images._unseal("org_a", "evil.example", sealed) is None  # or to another registry
