"""The seams of the execution path: what the service layer asks of the parts that a scale-out
would replace (a shared event log, a distributed thread lock, a shared admission limiter).

Today's implementations: `service.events.StoredEventLogs` (in-process logs stored in the
database), `service.threads.ThreadLocks` (a file lock), `service.admission.ConcurrencyLimiter`
(per process).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..bus import Event, ExecutionLog
from ..errors import RateLimited

#: Gives an admission slot back; calling it again does nothing.
Release = Callable[[], None]


class EventLogs(Protocol):
    """Where executions' event logs are opened, and where ended ones are replayed from."""

    def open(self, trace_id: str) -> ExecutionLog:
        """A new execution's log, stored as it goes."""
        ...

    async def replay(self, trace_id: str, after_seq: int = 0) -> list[Event]:
        """An execution's stored events with seq > `after_seq`, in order."""
        ...

    async def last(self, trace_id: str) -> tuple[int, str] | None:
        """The seq and type of its last stored event, or None if none is stored."""
        ...


class ThreadLock(Protocol):
    """One holder per thread at a time, across every process that can touch the thread."""

    def acquire(self, org_id: str, thread_id: str) -> int:
        """Take the lock, or raise Conflict (409) at once if it is held; returns its token."""
        ...

    def release(self, token: int) -> None: ...

    def held(self, org_id: str, thread_id: str) -> bool: ...


class Admission(Protocol):
    """Execution slots: a global cap and a cap per organization."""

    async def acquire(
        self, org_id: str, org_cap: int | None = None, over_cap: Callable[[int, int], RateLimited] | None = None
    ) -> Release:
        """Take a slot (maybe after a bounded wait); RateLimited (429) or Unavailable (503).
        `org_cap`: the plan's cap; over it, `over_cap(count, cap)` is raised."""
        ...

    def close(self) -> None:
        """Drain: waiters and later requests are refused (503)."""
        ...

    @property
    def running(self) -> int: ...

    @property
    def waiting(self) -> int: ...
