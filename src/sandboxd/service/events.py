"""Executions' event logs as they run today: in this process, stored in the database as they go."""

from __future__ import annotations

from dataclasses import dataclass

from ..bus import Event, EventLog, ExecutionLog
from ..store import Store


@dataclass(frozen=True)
class EventSettings:
    """How output becomes events and how often a running log is written (settings
    `output_event_interval_ms`, `output_event_max_bytes`, `max_output_events`,
    `event_flush_interval_ms`)."""

    output_interval_s: float = 0.01
    output_max_bytes: int = 64 * 1024
    max_output_events: int = 10_000
    flush_interval_s: float = 0.1


class StoredEventLogs:
    """The `EventLogs` of one process: a log is followed here and replayed from the store."""

    def __init__(self, store: Store, settings: EventSettings) -> None:
        self._store = store
        self._flush_interval_s = settings.flush_interval_s

    def open(self, trace_id: str) -> ExecutionLog:
        async def write(events: list[Event]) -> None:
            await self._store.events.add(trace_id, [(e.seq, e.type, e.body) for e in events])

        return EventLog(write, flush_interval_s=self._flush_interval_s)

    async def replay(self, trace_id: str, after_seq: int = 0) -> list[Event]:
        rows = await self._store.events.after(trace_id, after_seq)
        return [Event(seq=s, type=t, body=b) for s, t, b in rows]  # type: ignore[arg-type]  # stored types are EventTypes

    async def last(self, trace_id: str) -> tuple[int, str] | None:
        return await self._store.events.last(trace_id)
