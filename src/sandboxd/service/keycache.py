"""Principals by key digest (and by key id, for signed file URLs), so an authenticated request
costs no database round trip.

Only a revocation or a change of a key's volume bindings can change what an active key may do:
a sandbox config or a volume cannot be deleted while an active key is bound to it, and configs
are not edited in place. Both bump the invalidation signal (`KeyService.revoke`, `bind_volume`,
`unbind_volume`, from the server or from a CLI process); every lookup compares its token with
the one the cache was filled under and starts empty when it moved. The TTL bounds how long an
entry lives in any case, for a server whose revocations happen where it cannot see the signal.

The cache does not know what a principal is (it holds any value), so it needs nothing from
`keys.py`, which uses it.
"""

from __future__ import annotations

import time
from typing import Generic, TypeVar

from .invalidation import Invalidation

P = TypeVar("P")


class PrincipalCache(Generic[P]):
    def __init__(self, invalidation: Invalidation, ttl_s: float = 30.0, max_entries: int = 10_000) -> None:
        self._invalidation = invalidation
        self._ttl_s = ttl_s
        self._max = max_entries
        self._epoch = invalidation.current()
        self._entries: dict[str, tuple[P, float]] = {}

    def get(self, key: str) -> P | None:
        epoch = self._invalidation.current()
        if epoch != self._epoch:
            self._entries.clear()
            self._epoch = epoch
            return None
        hit = self._entries.get(key)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, key: str, principal: P) -> None:
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[key] = (principal, time.monotonic() + self._ttl_s)

    def invalidate(self) -> None:
        """Every process under this invalidation signal drops its cached principals."""
        self._invalidation.bump()
        self._entries.clear()
        self._epoch = self._invalidation.current()
