"""Pre-spawned single-use sandboxes: the cold start moved off the request's path.

A pool is kept per *key*: the language and everything a sandbox is built from before any
request exists (limits, the host gid). The request's own parts (code, env vars, timeout,
output cap) arrive at use time through the stub (`warm.py`). So a config change (say a new
memory limit) is a new key, and a sandbox built with the old one is never served for it.
Each pooled sandbox serves exactly one execution and is then destroyed like any other.

Only runs that need nothing per-request at build time are pooled: no volume, no connector, network policy
`none`. The rest start cold. A thread's runs are pooled too when the pool has home slots
(`homeslot.py`): the key then holds the thread's own host uid, so each thread has its own
pool of at most one sandbox, started when a run of the thread ends, with an empty
/home/baponi on which the next run's working copy is mounted at use time. Like any key's, it
is emptied after `idle_s` without use: that retires an idle thread's warm sandbox.

Sizing follows demand: a key's target grows by one (up to `max_per_key`) each time a request
finds its pool empty, and falls back by one after each `idle_s` without such a miss; a key
unused for `idle_s` is emptied. At `max_total` sandboxes, or while those waiting use more
than `memory_budget_bytes`, a key in demand takes the place of the least recently used key's
sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path

from . import warm
from .homeslot import HomeSlots
from .network import Attached
from .sandbox import Sandbox, Sandboxes
from .spec import HOST_IMAGE, Language, Limits, Mount, RootImage, SandboxSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolSettings:
    max_per_key: int = 4
    max_total: int = 16
    memory_budget_bytes: int = 512 * 1024 * 1024
    idle_s: float = 120.0


@dataclass(frozen=True)
class PoolKey:
    language: Language
    limits: Limits
    host_gid: int | None
    #: A thread's own uid (its runs are served by its own sandboxes); None: stateless.
    host_uid: int | None = None
    #: Pools are per image: a sandbox is built on its root.
    image: RootImage = HOST_IMAGE
    #: The bucket mounts under /data it binds (only `Mount.pooled` ones).
    mounts: tuple[Mount, ...] = ()


@dataclass
class Warm:
    """A pre-spawned sandbox: its stub waits for a request once `ready` is True (False: it
    died starting)."""

    box: Sandbox
    ready: asyncio.Future[bool]
    #: A thread's sandbox: its empty /home/baponi, the thread's home is mounted on it at use time.
    home_slot: Path | None = None


@dataclass
class _Slot:
    target: int = 1
    entries: deque[Warm] = field(default_factory=deque)
    spawning: int = 0
    last_used: float = field(default_factory=time.monotonic)
    last_miss: float = field(default_factory=time.monotonic)


def key_of(spec: SandboxSpec, *, threads: bool = False) -> PoolKey | None:
    """The pool a run can be served from, or None when it must start cold. With `threads`, a
    thread's run (its home and its uid) has a key of its own."""
    if spec.network.mode != "none" or spec.egress or not all(m.pooled for m in spec.mounts):
        return None
    is_thread = spec.home is not None and spec.host_uid is not None
    if is_thread and not threads:
        return None
    if not is_thread and (spec.home is not None or spec.host_uid is not None):
        return None
    # Applied at use time, not at build time: not part of the key.
    limits = replace(spec.limits, timeout_s=0.0, output_limit_bytes=0)
    return PoolKey(spec.language, limits, spec.host_gid, spec.host_uid, spec.image, spec.mounts)


class WarmPool:
    """The waiting sandboxes, by key; with `home_slots` (a directory for mount points) a
    thread's runs are pooled too."""

    def __init__(self, sandboxes: Sandboxes, settings: PoolSettings, *, home_slots: Path | None = None) -> None:
        self._sandboxes = sandboxes
        self._settings = settings
        self.home_slots: HomeSlots | None = None
        if home_slots is not None:
            self.home_slots = HomeSlots(home_slots)
            self.home_slots.recover()
        self._threads = self.home_slots is not None
        self._slots: dict[PoolKey, _Slot] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._shrinker: asyncio.Task[None] | None = None
        self.hits = 0
        self.misses = 0
        #: Told of every take: True when a sandbox was waiting (for metrics).
        self.on_take: Callable[[bool], None] | None = None

    def start(self) -> None:
        """Begin shrinking idle pools (call with the event loop running)."""
        if self._shrinker is None:
            self._shrinker = asyncio.get_running_loop().create_task(self._shrink_forever())

    @property
    def size(self) -> int:
        return sum(len(slot.entries) for slot in self._slots.values())

    def sizes(self) -> dict[str, int]:
        """Ready-or-starting sandboxes per language (for metrics)."""
        out: dict[str, int] = {}
        for key, slot in self._slots.items():
            out[key.language] = out.get(key.language, 0) + len(slot.entries)
        return out

    def take(self, spec: SandboxSpec) -> Warm | None:
        """A started sandbox for `spec`'s key, or None (the caller starts one cold); either way
        the caller calls `replenish(spec)` when its run is over."""
        key = key_of(spec, threads=self._threads)
        if key is None or self._closed:
            return None
        now = time.monotonic()
        slot = self._slots.setdefault(key, _Slot())
        slot.last_used = now
        for dead in [e for e in slot.entries if e.box.proc.returncode is not None]:
            slot.entries.remove(dead)  # died waiting (e.g. killed by an operator): discard
            self._spawn_task(self.dispose(dead))
        ready = [e for e in slot.entries if e.ready.done() and e.ready.result()]
        entry = ready[0] if ready else (slot.entries[0] if slot.entries else None)
        if entry is not None:
            slot.entries.remove(entry)
        if not ready:  # none was waiting ready: demand outran the pool
            self.misses += 1
            if now - slot.last_miss < self._settings.idle_s:
                slot.target = min(_cap(key, self._settings), slot.target + 1)
            slot.last_miss = now
        if entry is not None:
            self.hits += 1
        if self.on_take is not None:
            self.on_take(entry is not None)
        return entry

    def replenish(self, spec: SandboxSpec) -> None:
        """Start sandboxes in the background until `spec`'s pool is back at its target."""
        key = key_of(spec, threads=self._threads)
        slot = self._slots.get(key) if key is not None else None
        if key is not None and slot is not None and not self._closed:
            self._refill(key, slot, spec)

    async def dispose(self, entry: Warm) -> None:
        """Leave nothing behind, as for any sandbox, and give its home slot up."""
        await self._sandboxes.dispose(entry.box)
        if entry.home_slot is not None and self.home_slots is not None:
            self.home_slots.release(entry.home_slot)

    async def discard(self, source: str) -> None:
        """Dispose of the waiting sandboxes that bind `source` (a bucket mount about to go)."""
        for key, slot in list(self._slots.items()):
            if any(m.source == source for m in key.mounts):
                del self._slots[key]
                while slot.entries:
                    await self.dispose(slot.entries.popleft())

    async def close(self) -> None:
        """Dispose of every waiting sandbox, then remove the home slots' mounts."""
        self._closed = True
        if self._shrinker is not None:
            self._shrinker.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        slots, self._slots = self._slots, {}
        for slot in slots.values():
            while slot.entries:
                await self.dispose(slot.entries.popleft())
        if self.home_slots is not None:
            self.home_slots.close()

    async def shrink(self) -> None:
        """Empty keys idle for `idle_s`; lower the target of keys without recent misses."""
        now = time.monotonic()
        for key, slot in list(self._slots.items()):
            if now - slot.last_used >= self._settings.idle_s:
                del self._slots[key]
                while slot.entries:
                    await self.dispose(slot.entries.popleft())
            elif now - slot.last_miss >= self._settings.idle_s and slot.target > 1:
                slot.target -= 1
                slot.last_miss = now
                while len(slot.entries) > slot.target:
                    await self.dispose(slot.entries.pop())

    async def _shrink_forever(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self._settings.idle_s / 4))
            with contextlib.suppress(Exception):
                await self.shrink()

    def _refill(self, key: PoolKey, slot: _Slot, spec: SandboxSpec) -> None:
        template = replace(spec, code=b"", env={}, home=None)
        while len(slot.entries) + slot.spawning < slot.target and (self._room() or self._evict(slot)):
            slot.spawning += 1
            self._spawn_task(self._spawn(key, slot, template))

    def _evict(self, wanted: _Slot) -> bool:
        """Make room for a key in demand: drop a sandbox of the least recently used other key."""
        others = [s for s in self._slots.values() if s is not wanted and s.entries]
        if not others:
            return False
        victim = min(others, key=lambda s: s.last_used)
        self._spawn_task(self.dispose(victim.entries.pop()))
        return True

    def _room(self) -> bool:
        count = self.size + sum(s.spawning for s in self._slots.values())
        if count >= self._settings.max_total:
            return False
        return self._memory() < self._settings.memory_budget_bytes

    def _memory(self) -> int:
        total = 0
        for slot in self._slots.values():
            for entry in slot.entries:
                with contextlib.suppress(Exception):
                    total += entry.box.group.stats().memory_peak_bytes
        return total

    async def spawn_ready(self, spec: SandboxSpec) -> Warm:
        """One pooled-style sandbox for `spec`, its interpreter up and waiting (not kept in the
        pool: the caller serves it or disposes of it). The security suite runs every attack
        through this path too."""
        if key_of(spec, threads=self._threads) is None:
            raise ValueError("this spec cannot be served from a pool")
        entry = await self._start(replace(spec, code=b"", env={}, home=None))
        if not await entry.ready:
            await self.dispose(entry)
            raise RuntimeError(f"a pooled {spec.language} sandbox did not come up")
        return entry

    async def _start(self, template: SandboxSpec) -> Warm:
        """Start a sandbox whose stub waits for the request; a thread's gets an empty home slot
        (its home comes at use time)."""
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)  # first: when it fails, nothing is left to undo
        home_slot: Path | None = None
        try:
            if template.host_uid is not None:
                assert self.home_slots is not None, "a thread's run is pooled only with home slots"
                home_slot = self.home_slots.create(template.host_uid, template.host_gid or template.host_uid)
                template = replace(template, home=str(home_slot))
            box = await self._sandboxes.launch(
                template, Attached(), program=warm.stub(template.language, ready_w, template.image.binary(template.language)), ready_fd=ready_w
            )
        except BaseException:
            os.close(ready_r)
            if home_slot is not None and self.home_slots is not None:
                self.home_slots.release(home_slot)
            raise
        finally:
            os.close(ready_w)
        ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._watch_ready(ready_r, ready)
        return Warm(box, ready, home_slot)

    async def _spawn(self, key: PoolKey, slot: _Slot, template: SandboxSpec) -> None:
        try:
            entry = await self._start(template)
        except Exception:
            log.exception("pool: starting a %s sandbox failed", key.language)
            return
        finally:
            slot.spawning -= 1
        if self._closed or self._slots.get(key) is not slot:
            await self.dispose(entry)
            return
        slot.entries.append(entry)

    def _watch_ready(self, fd: int, ready: asyncio.Future[bool]) -> None:
        loop = asyncio.get_running_loop()

        def on_readable() -> None:
            loop.remove_reader(fd)
            got = b""
            with contextlib.suppress(OSError):
                got = os.read(fd, 1)
            os.close(fd)
            if not ready.done():
                ready.set_result(got == b"1")

        loop.add_reader(fd, on_readable)

    def _spawn_task(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _cap(key: PoolKey, settings: PoolSettings) -> int:
    """A thread runs one execution at a time: one sandbox waiting for it is enough."""
    return 1 if key.host_uid is not None else settings.max_per_key
