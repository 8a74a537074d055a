"""A program's output as `output` events: pipe reads coalesced by time and size, capped.

A program that writes one byte at a time makes one pipe read per byte; one event per read
stored 173,598 rows for 20 s of such a program. Here a stream's bytes become an event at
once when none was published for `interval_s` (so the first byte is never held back),
otherwise they wait for the next round, at most `interval_s` later, or until `max_bytes`
are waiting. So each stream makes at most one event per interval (plus one per `max_bytes`).
Past `max_events` output events no more are published: the output still reaches the
execution's result, which the runtime captures on its own.

Bytes are decoded as UTF-8 (invalid bytes become U+FFFD) when an event is made; a character
split between two reads is kept for the next event.
"""

from __future__ import annotations

import asyncio
import codecs
import time
from typing import Literal

from .interface import ExecutionLog

Stream = Literal["stdout", "stderr"]


class OutputEvents:
    def __init__(
        self, log: ExecutionLog, *, interval_s: float = 0.01, max_bytes: int = 64 * 1024, max_events: int = 10_000
    ) -> None:
        self._log = log
        self._interval = interval_s
        self._max_bytes = max_bytes
        self._max_events = max_events
        self._published = 0
        self._decoders: dict[Stream, codecs.IncrementalDecoder] = {s: codecs.getincrementaldecoder("utf-8")(errors="replace") for s in ("stdout", "stderr")}
        self._waiting: dict[Stream, bytearray] = {}  # insertion order = order of first arrival
        self._last_round = float("-inf")
        self._round: asyncio.Task[None] | None = None  # a round waiting for its time
        self._rounds: set[asyncio.Task[None]] = set()  # every round task until it is done

    @property
    def capped(self) -> bool:
        """Output events stopped at `max_events`; the rest is only in the result."""
        return self._published >= self._max_events

    async def write(self, stream: Stream, data: bytes) -> None:
        """One pipe read."""
        if not data:
            return
        waiting = self._waiting.get(stream)
        if waiting and len(waiting) + len(data) > self._max_bytes:
            await self._publish([stream])  # keep each event within max_bytes
        self._waiting.setdefault(stream, bytearray()).extend(data)
        if len(self._waiting[stream]) >= self._max_bytes:
            await self._publish([stream])
        elif time.monotonic() >= self._last_round + self._interval:
            await self._publish_round()
        elif self._round is None:
            self._round = asyncio.create_task(self._later(), name="output-round")
            self._rounds.add(self._round)
            self._round.add_done_callback(self._rounds.discard)

    async def drain(self) -> None:
        """Publish everything left, the decoders' last bytes included (the run has ended)."""
        if self._round is not None:
            self._round.cancel()  # still asleep: nothing taken yet
            self._round = None
        if self._rounds:  # a round already publishing: its events come before the rest
            await asyncio.wait(self._rounds)
        await self._publish_round()
        for stream, decoder in self._decoders.items():
            await self._append(stream, decoder.decode(b"", final=True))

    async def _later(self) -> None:
        await asyncio.sleep(max(0.0, self._last_round + self._interval - time.monotonic()))
        self._round = None
        await self._publish_round()

    async def _publish_round(self) -> None:
        self._last_round = time.monotonic()
        await self._publish(list(self._waiting))

    async def _publish(self, streams: list[Stream]) -> None:
        # Take and decode every buffer before the first await: events keep the order of reads.
        texts = [(s, self._decoders[s].decode(bytes(self._waiting.pop(s)))) for s in streams if s in self._waiting]
        for stream, text in texts:
            await self._append(stream, text)

    async def _append(self, stream: Stream, text: str) -> None:
        if text and not self.capped:
            self._published += 1
            await self._log.append("output", stream=stream, data=text)
