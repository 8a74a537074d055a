"""The principal cache: hits, TTL, and revocation seen across processes through the epoch file."""

from __future__ import annotations

import time
from pathlib import Path

from sandboxd.service.keycache import PrincipalCache


def test_hit_until_another_process_revokes(tmp_path: Path) -> None:
    server = PrincipalCache(tmp_path / "auth-epoch", ttl_s=60)
    server.put("d1", "principal")  # type: ignore[arg-type]
    assert server.get("d1") == "principal"
    cli = PrincipalCache(tmp_path / "auth-epoch", ttl_s=60)  # e.g. `sandboxd keys revoke`
    cli.invalidate()
    assert server.get("d1") is None
    server.put("d1", "again")  # type: ignore[arg-type]
    assert server.get("d1") == "again"
    time.sleep(0.01)
    cli.invalidate()  # a second revocation is seen too
    assert server.get("d1") is None


def test_entries_expire(tmp_path: Path) -> None:
    cache = PrincipalCache(tmp_path / "auth-epoch", ttl_s=0.05)
    cache.put("d", "p")  # type: ignore[arg-type]
    assert cache.get("d") == "p"
    time.sleep(0.06)
    assert cache.get("d") is None


def test_ttl_zero_disables_caching(tmp_path: Path) -> None:
    cache = PrincipalCache(tmp_path / "auth-epoch", ttl_s=0)
    cache.put("d", "p")  # type: ignore[arg-type]
    assert cache.get("d") is None


def test_size_is_bounded(tmp_path: Path) -> None:
    cache = PrincipalCache(tmp_path / "auth-epoch", ttl_s=60, max_entries=3)
    for n in range(4):
        cache.put(f"d{n}", "p")  # type: ignore[arg-type]
    assert cache.get("d3") == "p" and cache.get("d0") is None
