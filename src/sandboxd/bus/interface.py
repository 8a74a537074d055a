"""The event log interface: what surfaces and the execution job ask of one execution's log.

`EventLog` (in process, stored as it goes) implements it; a shared log (Redis Streams) for
an API/executor split would too: publish on the executor, follow from any API node.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol

from .log import Event, EventType, Writer


class ExecutionLog(Protocol):
    """One execution's numbered events: published in order, followed from any seq."""

    last_append: float

    @property
    def closed(self) -> bool: ...

    @property
    def events(self) -> list[Event]: ...

    async def append(self, type: EventType, **body: Any) -> Event:
        """Publish the next event."""
        ...

    async def close(self, write: Writer, **body: Any) -> Event:
        """Publish the result (the last event), storing what is pending through `write`."""
        ...

    def follow(self, after_seq: int = 0) -> AsyncIterator[Event]:
        """Events after `after_seq`, then live ones, until the result."""
        ...
