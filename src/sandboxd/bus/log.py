"""The event log of one execution: numbered events, replayable, followable while it runs.

NDJSON streams and reconnects are views of this log: every subscriber sees the same events
with the same `seq` (1, 2, 3, ... with no gaps), from any point, until the `result` event.

Durability. A log built with a `writer` stores its events as they happen, in batches, and
shows a follower only events already stored: whatever seq any client saw survives a crash,
so recovery numbers its events after the last stored one and a reconnect continues without
a gap or a reused seq. Writes cost the hot path, so a log writes nothing until it is needed:

- a follower arrives: pending events are written at once (a short burst of writes goes out
  without waiting, so the first output is not held back), then at most one write per
  `flush_interval_s` while events keep coming;
- the run outlives `flush_interval_s`: the same, so a crash loses at most that much of what
  nobody has seen;
- the end: `close` writes what is left together with the result (one transaction, the
  caller's), so a short run with no follower costs no write of its own.

A write that fails is retried at the next interval; `close` always shows the result, even if
its write failed, so no follower waits forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

EventType = Literal["status", "output", "keepalive", "result"]

#: Stores a batch of events (in seq order, each exactly once).
Writer = Callable[[list["Event"]], Awaitable[None]]

log = logging.getLogger("sandboxd.bus")

_BURST = 3  # writes allowed back to back before the interval applies


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

    def __init__(self, writer: Writer | None = None, *, flush_interval_s: float = 0.1) -> None:
        self._events: list[Event] = []
        self._changed = asyncio.Condition()
        self.last_append = time.monotonic()
        self._writer = writer
        self._interval = flush_interval_s
        self._stored = 0  # events[:_stored] are written (all of them without a writer)
        self._write_lock = asyncio.Lock()
        self._tokens = float(_BURST)
        self._refilled = time.monotonic()
        self._flusher: asyncio.Task[None] | None = None
        self._sealed = False  # closing: the last write is the caller's
        self._timer: asyncio.TimerHandle | None = None
        if writer is not None:
            self._timer = asyncio.get_running_loop().call_later(flush_interval_s, self._start_flushing)

    @property
    def closed(self) -> bool:
        return bool(self._events) and self._events[-1].type == "result"

    @property
    def events(self) -> list[Event]:
        return list(self._events)

    def _visible(self) -> int:
        return self._stored if self._writer is not None else len(self._events)

    async def append(self, type: EventType, **body: Any) -> Event:
        if self.closed:
            raise RuntimeError("event log is closed")
        event = Event(seq=len(self._events) + 1, type=type, body=body)
        self._events.append(event)
        self.last_append = time.monotonic()
        await self._notify()
        return event

    async def close(self, write: Writer, **body: Any) -> Event:
        """Append the result and write every pending event with it through `write` (the
        caller's final transaction) instead of the log's writer. The result is shown to
        followers even if `write` fails (then it raises)."""
        async with self._write_lock:
            event = await self.append("result", **body)
            self._sealed = True
            self._stop_flushing()
            try:
                await write(self._events[self._stored:])
            finally:
                self._stored = len(self._events)
                await self._notify()
        return event

    async def flush(self) -> None:
        """Write the pending events now (a no-op without a writer)."""
        if self._writer is None:
            return
        async with self._write_lock:
            batch = self._events[self._stored:]
            if not batch:
                return
            await self._writer(batch)
            self._stored += len(batch)
        await self._notify()

    async def follow(self, after_seq: int = 0) -> AsyncIterator[Event]:
        """Events with seq > after_seq, then live ones, until the result event."""
        self._start_flushing()  # someone is looking: what they see must be stored first
        position = max(0, after_seq)
        while True:
            while position < self._visible():
                event = self._events[position]
                position += 1
                yield event
                if event.type == "result":
                    return
            if self._ended():
                return  # asked for events past the result: there are none to come
            async with self._changed:
                await self._changed.wait_for(lambda: position < self._visible() or self._ended())

    def _ended(self) -> bool:
        """The result is shown."""
        return self.closed and self._visible() == len(self._events)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def _start_flushing(self) -> None:
        if self._writer is None or self._flusher is not None or self._sealed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._flusher = asyncio.create_task(self._flush_loop(), name="event-log-flusher")

    def _stop_flushing(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flusher is not None:
            self._flusher.cancel()

    async def _flush_loop(self) -> None:
        """Write pending events as they come: a short burst at once, then one write per interval."""
        while True:
            async with self._changed:
                await self._changed.wait_for(lambda: len(self._events) > self._stored)
            now = time.monotonic()
            self._tokens = min(_BURST, self._tokens + (now - self._refilled) / self._interval)
            self._refilled = now
            if self._tokens < 1:
                await asyncio.sleep((1 - self._tokens) * self._interval)
                continue
            self._tokens -= 1
            try:
                await self.flush()
            except Exception:
                log.exception("storing events failed; retrying")
                await asyncio.sleep(self._interval)
