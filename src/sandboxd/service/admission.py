"""Admission: execution slots shared fairly between organizations, and failed-auth lockout.

A plan limit (an organization's cap) is refused at once; a full server is not a plan limit, so
a request within its cap waits a few seconds in a bounded queue first. Nothing queues unbounded.
Both are per process (the embedded default is one process); scale-out moves them to Redis.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import defaultdict, deque
from collections.abc import Callable
from contextvars import ContextVar

from ..errors import RateLimited, Unavailable
from ..observability import Metrics

#: The answer for an organization over its plan's cap: (running or waiting, cap) -> 429.
OverCap = Callable[[int, int], RateLimited]

#: Set for one request by a surface that can tell (the REST API: api/disconnect.py) once its
#: caller has gone: a request waiting for a slot then leaves the queue instead of running for nobody.
caller_gone: ContextVar[asyncio.Event | None] = ContextVar("caller_gone", default=None)


class ConcurrencyLimiter:
    """The `Admission` of one process: a global cap sized to the machine, shared fairly
    between organizations.

    - Plan limit: an organization's running plus waiting requests never exceed its cap (its plan's
      `org_cap`, else `per_org_cap`); one more is refused at once with 429.
    - Reserve: an organization that already runs something takes a slot only while more than
      `reserve` are free, so one with nothing running starts at once even while others
      saturate the server.
    - Queue: a request that may not take a slot now waits up to `wait_s` (at most `queue_max`
      wait at once, all orgs), then 429. A freed slot goes to the waiting organization with
      the fewest running, and within it to the oldest request; a waiter cancelled (its client
      gone) leaves the queue and holds no slot.
    - `close()` (drain): waiters and later requests get 503.
    """

    def __init__(
        self, global_cap: int, per_org_cap: int, metrics: Metrics | None = None, *,
        reserve: int = 0, wait_s: float = 0.0, queue_max: int = 0,
    ) -> None:
        self._rejections = (metrics or Metrics()).admission_rejections
        self._global_cap = global_cap
        self._per_org_cap = per_org_cap
        self._reserve = reserve
        self._wait_s = wait_s
        self._queue_max = queue_max
        self._running = 0
        self._by_org: dict[str, int] = defaultdict(int)
        #: Per organization, its waiters oldest first: (arrival number, future of the release).
        self._waiting: dict[str, deque[tuple[int, asyncio.Future[Callable[[], None]]]]] = {}
        self._queued = 0
        self._arrivals = itertools.count()
        self._closed = False

    async def acquire(
        self, org_id: str, org_cap: int | None = None, over_cap: OverCap | None = None
    ) -> Callable[[], None]:
        """Take a slot, waiting for one if the server is full; returns the function that gives
        it back (once). Raises RateLimited (429) or, once closed, Unavailable (503).

        `org_cap` is the organization's plan's (None: unlimited, so the server's `per_org_cap`
        applies). Over the plan's cap, `over_cap(count, cap)` is the answer (service/plans.py
        `concurrency_refused`)."""
        if self._closed:
            raise self._closing()
        cap = org_cap if org_cap is not None else self._per_org_cap
        count = self._by_org.get(org_id, 0) + len(self._waiting.get(org_id, ()))
        if count >= cap:
            self._rejections.labels("org_concurrency").inc()
            if org_cap is not None and over_cap is not None:
                raise over_cap(count, cap)
            raise RateLimited(
                f"your organization already has {cap} executions running or waiting (its limit); "
                "retry shortly", 1,
            )
        if self._may_take(org_id):
            return self._take(org_id)
        if self._wait_s <= 0 or self._queued >= self._queue_max:
            raise self._full()
        waiter: asyncio.Future[Callable[[], None]] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(org_id, deque()).append((next(self._arrivals), waiter))
        self._queued += 1
        try:
            async with asyncio.timeout(self._wait_s):
                return await _unless_gone(waiter)
        except TimeoutError:
            self._leave(org_id, waiter)
            raise self._full() from None
        except BaseException:  # the caller went away (or was cancelled), or closed
            self._leave(org_id, waiter)
            raise

    def close(self) -> None:
        """Drain: every waiter and every later request is refused with 503."""
        self._closed = True
        for queue in self._waiting.values():
            for _, waiter in queue:
                waiter.set_exception(self._closing())
        self._waiting.clear()
        self._queued = 0

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._queued

    # --- private ------------------------------------------------------------------------------

    def _may_take(self, org_id: str) -> bool:
        free = self._global_cap - self._running
        return free > 0 and (self._by_org.get(org_id, 0) == 0 or free > self._reserve)

    def _take(self, org_id: str) -> Callable[[], None]:
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
            self._hand_out()

        return release

    def _hand_out(self) -> None:
        """Give free slots to waiters: the org with the fewest running first, then the oldest."""
        while self._running < self._global_cap:
            eligible = [org for org in self._waiting if self._may_take(org)]
            if not eligible:
                return
            org = min(eligible, key=lambda o: (self._by_org.get(o, 0), self._waiting[o][0][0]))
            _, waiter = self._pop(org)
            if not waiter.done():  # else cancelled, its task not yet resumed to leave
                waiter.set_result(self._take(org))

    def _pop(self, org_id: str) -> tuple[int, asyncio.Future[Callable[[], None]]]:
        queue = self._waiting[org_id]
        head = queue.popleft()
        if not queue:
            del self._waiting[org_id]
        self._queued -= 1
        return head

    def _leave(self, org_id: str, waiter: asyncio.Future[Callable[[], None]]) -> None:
        """A waiter that gives up: out of the queue, or its slot back if one was just handed to it."""
        if waiter.done() and not waiter.cancelled():
            if waiter.exception() is None:
                waiter.result()()
            return
        waiter.cancel()
        queue = self._waiting.get(org_id)
        if queue is None:
            return
        for entry in queue:
            if entry[1] is waiter:
                queue.remove(entry)
                self._queued -= 1
                break
        if not queue:
            del self._waiting[org_id]

    def _full(self) -> RateLimited:
        self._rejections.labels("global_concurrency").inc()
        waited = f" (waited {self._wait_s:g} s for a slot)" if self._wait_s > 0 else ""
        return RateLimited(f"the server is running as many executions as it can{waited}; retry shortly", 1)

    def _closing(self) -> Unavailable:
        self._rejections.labels("shutting_down").inc()
        return Unavailable("the server is shutting down; retry shortly")


async def _unless_gone(waiter: asyncio.Future[Callable[[], None]]) -> Callable[[], None]:
    """The waiter's release, or Unavailable once the request's caller has gone (caller_gone)."""
    gone = caller_gone.get()
    if gone is None:
        return await waiter
    watch = asyncio.ensure_future(gone.wait())
    try:
        await asyncio.wait((waiter, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if gone.is_set():
        raise Unavailable("the client went away while waiting for an execution slot")
    return waiter.result()

