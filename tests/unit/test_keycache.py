"""The principal cache: hits, TTL, and revocation seen across processes through the epoch file;
no import cycle between keys.py and keycache.py."""

from __future__ import annotations

import ast
import time
from pathlib import Path

import sandboxd.service
from sandboxd.service.invalidation import EpochFile
from sandboxd.service.keycache import PrincipalCache


def test_hit_until_another_process_revokes(tmp_path: Path) -> None:
    server: PrincipalCache[str] = PrincipalCache(EpochFile(tmp_path / "auth-epoch"), ttl_s=60)
    server.put("d1", "principal")
    assert server.get("d1") == "principal"
    cli: PrincipalCache[str] = PrincipalCache(EpochFile(tmp_path / "auth-epoch"), ttl_s=60)  # e.g. `sandboxd keys revoke`
    cli.invalidate()
    assert server.get("d1") is None
    server.put("d1", "again")
    assert server.get("d1") == "again"
    time.sleep(0.01)
    cli.invalidate()  # a second revocation is seen too
    assert server.get("d1") is None


def test_entries_expire(tmp_path: Path) -> None:
    cache: PrincipalCache[str] = PrincipalCache(EpochFile(tmp_path / "auth-epoch"), ttl_s=0.05)
    cache.put("d", "p")
    assert cache.get("d") == "p"
    time.sleep(0.06)
    assert cache.get("d") is None


def test_ttl_zero_disables_caching(tmp_path: Path) -> None:
    cache: PrincipalCache[str] = PrincipalCache(EpochFile(tmp_path / "auth-epoch"), ttl_s=0)
    cache.put("d", "p")
    assert cache.get("d") is None


def test_size_is_bounded(tmp_path: Path) -> None:
    cache: PrincipalCache[str] = PrincipalCache(EpochFile(tmp_path / "auth-epoch"), ttl_s=60, max_entries=3)
    for n in range(4):
        cache.put(f"d{n}", "p")
    assert cache.get("d3") == "p" and cache.get("d0") is None


class Counter:
    """Any Invalidation will do: the cache only compares tokens."""

    def __init__(self) -> None:
        self.n = 0

    def bump(self) -> None:
        self.n += 1

    def current(self) -> int:
        return self.n


def test_the_cache_works_over_any_invalidation() -> None:
    signal = Counter()
    server: PrincipalCache[str] = PrincipalCache(signal, ttl_s=60)
    other: PrincipalCache[str] = PrincipalCache(signal, ttl_s=60)
    server.put("d", "p")
    other.invalidate()
    assert signal.n == 1 and server.get("d") is None


def test_the_epoch_file_changes_at_every_bump(tmp_path: Path) -> None:
    epoch = EpochFile(tmp_path / "auth-epoch")
    assert epoch.current() == (0, 0)  # no file yet: no revocation ever
    seen = set()
    for _ in range(3):
        epoch.bump()
        seen.add(epoch.current())
        time.sleep(0.002)
    assert len(seen) == 3


def _imports(module: str) -> set[str]:
    """Modules of sandboxd.service that `module` imports, TYPE_CHECKING blocks included."""
    path = Path(sandboxd.service.__file__).parent / f"{module}.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add(node.module or "")
            if node.module is None:
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sandboxd.service."):
            found.add((node.module or "").removeprefix("sandboxd.service."))
    return found


def test_keycache_does_not_import_keys() -> None:
    """keys.py uses the cache; the cache needs nothing from keys.py (no cycle)."""
    assert "keys" not in _imports("keycache")
    assert "keycache" in _imports("keys")
    assert "keys" not in _imports("invalidation")
