"""Failed-auth lockout: key guessing is limited per client, and never locks other clients out.

`allowed` failed authentications from one client (clients.client_key: an address, an IPv6 /64)
within `window_s` lock it out for `lockout_s`. During a lockout a request from that client is
refused (429) without its key being looked up, unless the key's digest has already
authenticated from that client (in the last `remember_s`): such a key is looked up as usual.

So the other clients behind one address (a NAT, an agent platform holding many tenants' keys)
keep working while one of them presents bad keys, and a guesser learns nothing new: a lockout
answer only tells whether a key is one that already worked from this same client, so the
only lookups that can reveal whether an unknown key is valid are the `allowed` failures per
window. Why this and not the alternatives: docs/security.md (failed-auth lockout).

Per process, like admission; scale-out moves it to Redis.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from ..clients import client_key
from ..errors import RateLimited
from ..observability import Metrics

#: How long a key that authenticated from a client stays usable by it through a lockout.
REMEMBER_S = 24 * 3600.0
#: Bound on remembered (client, key) pairs and on tracked clients, under a spray of addresses.
_MAX_ENTRIES = 100_000


class AuthFailureLimiter:
    def __init__(
        self, allowed: int, window_s: float, lockout_s: float,
        clock: Callable[[], float] = time.monotonic, metrics: Metrics | None = None,
        remember_s: float = REMEMBER_S,
    ) -> None:
        self._rejections = (metrics or Metrics()).admission_rejections
        self._allowed = allowed
        self._window_s = window_s
        self._lockout_s = lockout_s
        self._remember_s = remember_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}
        self._locked_until: dict[str, float] = {}
        #: (client, key digest) -> until when; insertion order is the order of last use
        self._known: dict[tuple[str, str], float] = {}

    def check(self, address: str, digest: str | None) -> None:
        """Raise RateLimited while `address` is locked out, unless `digest` worked from it before.

        The refusal is decided without a lookup of the key (no store or cache access), so it
        takes the same time and says the same thing for a valid key as for a guess.
        """
        client = client_key(address)
        until = self._locked_until.get(client)
        if until is None:
            return
        now = self._clock()
        remaining = until - now
        if remaining <= 0:
            del self._locked_until[client]
            return
        if digest is not None and self._known.get((client, digest), 0.0) > now:
            return
        self._rejections.labels("auth_lockout").inc()
        raise RateLimited("too many failed authentication attempts; retry later", int(remaining) + 1)

    def failed(self, address: str, digest: str | None = None) -> None:
        """Count a missing, unknown or revoked key from `address`."""
        client = client_key(address)
        now = self._clock()
        if digest is not None:
            self._known.pop((client, digest), None)  # e.g. revoked since it last worked
        recent = self._failures.setdefault(client, deque())
        recent.append(now)
        while recent and recent[0] <= now - self._window_s:
            recent.popleft()
        if len(recent) >= self._allowed:
            self._locked_until[client] = now + self._lockout_s
            recent.clear()
        self._prune(now)

    def succeeded(self, address: str, digest: str) -> None:
        """Remember that the key with `digest` authenticated from `address`."""
        pair = (client_key(address), digest)
        self._known.pop(pair, None)
        self._known[pair] = self._clock() + self._remember_s
        if len(self._known) > _MAX_ENTRIES:  # forget the least recently used
            del self._known[next(iter(self._known))]

    def _prune(self, now: float) -> None:
        """Bound memory under a spray of source addresses."""
        if len(self._failures) > _MAX_ENTRIES // 10:
            for client in [c for c, q in self._failures.items() if not q or q[-1] <= now - self._window_s]:
                del self._failures[client]
        if len(self._locked_until) > _MAX_ENTRIES // 10:
            for client in [c for c, t in self._locked_until.items() if t <= now]:
                del self._locked_until[client]
