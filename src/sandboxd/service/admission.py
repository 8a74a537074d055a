"""Admission: concurrency caps and failed-auth lockout. Refuse early, never queue unbounded.

Both are per process (the embedded default is one process); scale-out moves them to Redis.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable

from ..errors import RateLimited
from ..observability import Metrics


class ConcurrencyLimiter:
    """A global cap sized to the machine and a per-organization cap."""

    def __init__(self, global_cap: int, per_org_cap: int, metrics: Metrics | None = None) -> None:
        self._rejections = (metrics or Metrics()).admission_rejections
        self._global_cap = global_cap
        self._per_org_cap = per_org_cap
        self._running = 0
        self._by_org: dict[str, int] = defaultdict(int)

    def acquire(self, org_id: str, org_cap: int | None = None) -> Callable[[], None]:
        """Take a slot or raise RateLimited; returns the function that gives it back (once)."""
        cap = org_cap if org_cap is not None else self._per_org_cap
        if self._running >= self._global_cap:
            self._rejections.labels("global_concurrency").inc()
            raise RateLimited("the server is running as many executions as it can; retry shortly", 1)
        if self._by_org[org_id] >= cap:
            self._rejections.labels("org_concurrency").inc()
            raise RateLimited(
                f"your organization already has {cap} executions running (its limit); retry shortly", 1
            )
        self._running += 1
        self._by_org[org_id] += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self._running -= 1
            self._by_org[org_id] -= 1
            if self._by_org[org_id] == 0:
                del self._by_org[org_id]

        return release

    @property
    def running(self) -> int:
        return self._running

