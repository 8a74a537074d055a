"""The pooled runner: serves a run from a pre-spawned sandbox when one fits, else starts it cold.

It wraps the cold runner behind the same `Runner` interface: the cold runner knows nothing of
pools, and the pool (`pool.py`) only keeps sandboxes; handing a request to one is done here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

from . import warm
from .pool import PoolSettings, Warm, WarmPool
from .runner import BwrapRunner
from .session import SessionSandbox
from .spec import ExecResult, Language, OutputSink, SandboxSpec


class PooledRunner:
    def __init__(self, cold: BwrapRunner, settings: PoolSettings, *, home_slots: Path | None = None) -> None:
        """Pool stateless runs; with `home_slots` (a directory for mount points) thread runs too."""
        self.cold = cold
        self.languages: frozenset[Language] = cold.languages
        self.pool = WarmPool(cold.sandboxes, settings, home_slots=home_slots)

    async def run(
        self,
        spec: SandboxSpec,
        *,
        sink: OutputSink | None = None,
        cancel: asyncio.Event | None = None,
        refill_later: bool = False,
    ) -> ExecResult:
        """Run `spec`, then refill the pool, unless the caller says when (`refill_later`, then
        `refill(spec)`)."""
        self.cold.check_language(spec)
        try:
            if (entry := self.pool.take(spec)) is not None and await self._came_up(entry, spec):
                return await self.serve(entry, spec, sink=sink, cancel=cancel)
            return await self.cold.run(spec, sink=sink, cancel=cancel)
        finally:
            if not refill_later:
                # After the run, not during it: on a small machine a sandbox starting next to
                # the one serving the request slows that one down.
                self.refill(spec)

    async def start_session(self, spec: SandboxSpec) -> SessionSandbox:
        """Sessions start cold: their program is a session driver, not a pool's stub."""
        return await self.cold.start_session(spec)

    def refill(self, spec: SandboxSpec) -> None:
        self.pool.replenish(spec)

    async def close(self) -> None:
        """Dispose of the pool's sandboxes and home slots, then close the cold runner."""
        await self.pool.close()
        await self.cold.close()

    async def _came_up(self, entry: Warm, spec: SandboxSpec) -> bool:
        """Wait for a pooled sandbox's stub to run: bubblewrap has then made every mount, and only
        then may a thread's home be mounted into it (before, bubblewrap's own bind of the slot
        would copy it and fail to remount it). One that died starting is disposed of (False:
        the run starts cold)."""
        try:
            up = await asyncio.wait_for(asyncio.shield(entry.ready), spec.limits.timeout_s)
        except asyncio.TimeoutError:
            up = False
        except BaseException:
            await asyncio.shield(self.pool.dispose(entry))
            raise
        if not up:
            await self.pool.dispose(entry)
        return up

    async def serve(
        self,
        entry: Warm,
        spec: SandboxSpec,
        *,
        sink: OutputSink | None = None,
        cancel: asyncio.Event | None = None,
    ) -> ExecResult:
        """Hand the request to a pre-spawned sandbox (its stub reads env and code from stdin)."""
        box = entry.box
        try:
            assert box.proc.stdin is not None
            started = time.monotonic()
            if entry.home_slot is not None:
                assert self.pool.home_slots is not None and spec.home is not None
                self.pool.home_slots.attach(entry.home_slot, spec.home)
            box.proc.stdin.write(warm.request(spec))
            with contextlib.suppress(ConnectionError):
                await box.proc.stdin.drain()
            box.proc.stdin.close()
            result = await self.cold.sandboxes.supervise(box, spec, sink, cancel, started=started)
            return await self.cold.sandboxes.collect(box, spec, result)
        finally:
            await self.pool.dispose(entry)
