"""The event log of one execution: numbered events, replayable, followable while it runs.

NDJSON streams and reconnects are views of this log: every subscriber sees the same events
with the same `seq` (1, 2, 3, ... with no gaps), from any point, until the `result` event.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

EventType = Literal["status", "output", "keepalive", "result"]


@dataclass(frozen=True)
class Event:
    seq: int
    type: EventType
    body: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"type": self.type, **self.body, "seq": self.seq}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        body = {k: v for k, v in data.items() if k not in ("type", "seq")}
        return cls(seq=int(data["seq"]), type=data["type"], body=body)


class EventLog:
    """Append-only, in memory while the execution runs. Closed by its `result` event."""

    def __init__(self) -> None:
        self._events: list[Event] = []
        self._changed = asyncio.Condition()
        self.last_append = time.monotonic()

    @property
    def closed(self) -> bool:
        return bool(self._events) and self._events[-1].type == "result"

    @property
    def events(self) -> list[Event]:
        return list(self._events)

    async def append(self, type: EventType, **body: Any) -> Event:
        if self.closed:
            raise RuntimeError("event log is closed")
        event = Event(seq=len(self._events) + 1, type=type, body=body)
        self._events.append(event)
        self.last_append = time.monotonic()
        async with self._changed:
            self._changed.notify_all()
        return event

    async def follow(self, after_seq: int = 0) -> AsyncIterator[Event]:
        """Events with seq > after_seq, then live ones, until the result event."""
        position = max(0, after_seq)
        while True:
            while position < len(self._events):
                event = self._events[position]
                position += 1
                yield event
                if event.type == "result":
                    return
            if self.closed:  # asked for events past the result: there are none to come
                return
            async with self._changed:
                await self._changed.wait_for(lambda: position < len(self._events) or self.closed)
