"""Persistent sessions: a thread's interpreters kept alive between its executions.

With a sandbox config's `session: persistent` and a `thread_id`, a thread's executions in one
language run in one long-lived sandbox (runtime/session.py), so variables, imports, open
connections and the working directory survive. The thread's sessions (one per language) share
one working copy of its home, its *workspace*: after each execution that ended by itself the
workspace is checkpointed as the thread's home (the crash-safe guarantee of threads: a home
always holds what the last execution that ended by itself left). A session ends:

- idle      unused for `idle_s` (the sweeper);
- timeout, oom, crash, cancelled
            its execution ended so; the thread's other sessions end too (they share the
            workspace, which goes back to the last checkpoint);
- evicted   its memory was wanted: idle sessions past the memory budget, the oldest first;
- changed   the thread ran with another sandbox config, image, mounts or connectors, ran
            stateless, or was deleted;
- restart   the server stopped.

Nothing is lost silently: the next execution's result says `{"state": "reset", "reason": ...}`.
Why a session ended is kept in the store (`thread_sessions`), so a restart is said too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ..ids import random_token

if TYPE_CHECKING:  # the CLI imports this module for SESSION_MODES: keep its imports light
    from ..buckets.mounts import Lease
    from ..connectors.redact import Redactor
    from ..runtime import SessionSandbox
    from ..store import Store

log = logging.getLogger("sandboxd.sessions")

SessionMode = Literal["stateless", "persistent"]
#: A sandbox config's session modes: "persistent" keeps a thread's interpreter between runs.
SESSION_MODES: tuple[SessionMode, ...] = ("stateless", "persistent")
#: Why a session ended (the API's `session.reason`).
REASONS = ("idle", "timeout", "oom", "crash", "cancelled", "evicted", "changed", "restart")
#: Ends after which the workspace holds the last run's writes (not a failed run's): a save
#: that failed after that run is tried once more before the workspace goes.
_KEEPS_LAST_RUN = frozenset({"idle", "evicted", "changed", "restart"})


@dataclass(frozen=True)
class SessionSettings:
    #: A session unused this long ends (SANDBOXD_SESSION_IDLE_S).
    idle_s: float = 600.0
    #: Idle sessions may hold this much memory in all; past it the oldest idle ones end.
    memory_budget_mib: int = 4096
    #: Live sessions of one organization; a new one past it ends its oldest idle one.
    max_per_org: int = 64


@dataclass
class Session:
    """A live session: its sandbox and what it was started with."""

    language: str
    fingerprint: str
    sandbox: SessionSandbox
    token: str
    redactor: Redactor
    #: The connectors' variables, set again for each execution.
    env: dict[str, str]
    leases: list[Lease]
    last_used: float = field(default_factory=time.monotonic)

    async def close(self) -> None:
        try:
            await self.sandbox.close()
        finally:
            for lease in self.leases:
                lease.release()
            self.leases.clear()


@dataclass
class ThreadSessions:
    """One thread's live sessions and the workspace they share."""

    org_id: str
    thread_id: str
    uid: int
    workspace: Path | None = None
    sessions: dict[str, Session] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    busy: bool = False
    #: The checkpoint of the last run, taken after its result was sent; whoever takes `lock`
    #: waits for it (`Sessions.settled`).
    saving: asyncio.Future[None] | None = None
    #: That checkpoint failed: the next run saves again before anything else.
    unsaved: bool = False

    @property
    def last_used(self) -> float:
        return max((s.last_used for s in self.sessions.values()), default=0.0)


def fingerprint(*parts: object) -> str:
    """What a session was started with: a run that differs cannot use it."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


class Sessions:
    """This server's live sessions, by thread."""

    def __init__(
        self, store: Store, settings: SessionSettings, discard: Callable[[Path], Awaitable[None]],
        save: Callable[[Path], Awaitable[None]],
    ) -> None:
        """`discard` drops a workspace, `save` checkpoints it as its thread's home (ThreadService)."""
        self._store = store
        self.settings = settings
        self._discard = discard
        self._save = save
        self._threads: dict[tuple[str, str], ThreadSessions] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @contextlib.asynccontextmanager
    async def locked(self, org_id: str, thread_id: str, uid: int) -> AsyncIterator[ThreadSessions]:
        """The thread's sessions, under their lock. A thread deleted and made again (a new uid:
        `sandboxd threads delete` in another process) ends the old thread's sessions; an entry
        retired while we waited for its lock is looked up again."""
        key = (org_id, thread_id)
        while True:
            found = self._threads.get(key)
            if found is not None and found.uid != uid:
                async with found.lock:
                    await self.end_thread(found, "changed")
                continue
            if found is None:
                found = self._threads[key] = ThreadSessions(org_id, thread_id, uid)
            async with found.lock:
                if self._threads.get(key) is found:
                    await self.settled(found)
                    yield found
                    return

    @contextlib.asynccontextmanager
    async def workspace_of(self, org_id: str, thread_id: str, uid: int) -> AsyncIterator[Path | None]:
        """The thread's live workspace, held (no sweeper ends it meanwhile); None: no session."""
        key = (org_id, thread_id)
        found = self._threads.get(key)
        if found is None or found.uid != uid:
            yield None
            return
        async with found.lock:
            if self._threads.get(key) is not found or not found.sessions or found.workspace is None:
                yield None
                return
            await self.settled(found)
            found.busy = True
            try:
                yield found.workspace
            finally:
                found.busy = False

    async def state(self, ts: ThreadSessions, language: str, fp: str) -> tuple[Session | None, dict[str, str | None]]:
        """The session to run in (or None: start one) and what the result says of it."""
        live = ts.sessions.get(language)
        if live is not None and live.sandbox.alive and live.fingerprint == fp:
            return live, {"state": "kept", "reason": None}
        if live is not None:
            reason = "changed" if live.sandbox.alive else "crash"
            await self.end_thread(ts, reason)
        row = await self._store.sessions.get(ts.org_id, ts.thread_id, language)
        if row is None:
            return None, {"state": "new", "reason": None}
        return None, {"state": "reset", "reason": row.reason if row.state == "ended" else "restart"}

    async def add(self, ts: ThreadSessions, session: Session) -> None:
        ts.sessions[session.language] = session
        await self._store.sessions.live(ts.org_id, ts.thread_id, session.language, session.token)

    async def end_thread(self, ts: ThreadSessions, reason: str) -> None:
        """End every session of the thread and drop their workspace (back to the last checkpoint).
        The caller holds `ts.lock`; the entry stays while a run holds it (it starts the next
        session in it) and goes when the sweeper or a shutdown ends it."""
        await self.settled(ts)  # what the last run saved is kept: only the workspace goes
        sessions, ts.sessions = list(ts.sessions.values()), {}
        workspace, ts.workspace = ts.workspace, None
        if ts.unsaved and workspace is not None and reason in _KEEPS_LAST_RUN:
            for session in sessions:  # nothing of them writes while the workspace is saved
                with contextlib.suppress(Exception):
                    await session.sandbox.close()
            try:
                await self._save(workspace)
                ts.unsaved = False
            except Exception:
                log.exception("saving the workspace of thread %s failed: its last run's writes are lost", ts.thread_id)
        for session in sessions:
            try:
                await session.close()
            except Exception:
                log.exception("ending a %s session of thread %s failed", session.language, ts.thread_id)
            with contextlib.suppress(Exception):
                await self._store.sessions.end(ts.org_id, ts.thread_id, session.language, reason, session.token)
        if workspace is not None:
            try:
                await self._discard(workspace)
            except Exception:
                log.exception("dropping the workspace of thread %s failed", ts.thread_id)
        if not ts.busy and self._threads.get((ts.org_id, ts.thread_id)) is ts:
            del self._threads[(ts.org_id, ts.thread_id)]

    def save_later(self, ts: ThreadSessions, save: Callable[[], Awaitable[None]]) -> None:
        """Checkpoint once the running job (the current task) is done: its result is written
        first, as the pool's refill waits for it. The caller holds `ts.lock`; from now on
        whoever takes it waits for the save."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        ts.saving = done

        async def run() -> None:
            try:
                await save()
            except Exception:
                log.exception("saving the workspace of thread %s failed; the next run saves again", ts.thread_id)
                ts.unsaved = True
            finally:
                done.set_result(None)

        def start(_: object = None) -> None:
            task = asyncio.ensure_future(run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        current = asyncio.current_task()
        if current is None:
            start()
        else:
            current.add_done_callback(start)

    async def settled(self, ts: ThreadSessions) -> None:
        """Wait for the thread's pending checkpoint (the caller holds `ts.lock`)."""
        if ts.saving is not None:
            await asyncio.shield(ts.saving)
            ts.saving = None

    async def end(self, org_id: str, thread_id: str, reason: str) -> None:
        """End a thread's sessions if it has any (it runs stateless now, or is deleted)."""
        ts = self._threads.get((org_id, thread_id))
        if ts is not None:
            async with ts.lock:
                await self.end_thread(ts, reason)

    def new_token(self) -> str:
        return random_token(24)

    # --- retiring sessions -----------------------------------------------------------------

    async def sweep(self) -> int:
        """End sessions idle past `idle_s`, and those of threads deleted meanwhile (by the CLI,
        in another process), then idle ones past the memory budget, oldest first."""
        ended = 0
        now = time.monotonic()
        for key, ts in list(self._threads.items()):
            if ts.lock.locked():
                continue
            if not ts.sessions:  # left by a run whose sessions ended
                if self._threads.get(key) is ts and ts.workspace is None:
                    del self._threads[key]
                continue
            reason = "idle" if now - ts.last_used >= self.settings.idle_s else None
            if reason is None:
                row = await self._store.threads.get(ts.org_id, ts.thread_id)
                reason = "changed" if row is None or row.uid != ts.uid else None
            if reason is not None:
                async with ts.lock:
                    if ts.sessions and not ts.busy:
                        await self.end_thread(ts, reason)
                        ended += 1
        return ended + await self.evict()

    async def evict(self, wanted_bytes: int = 0, org_id: str | None = None) -> int:
        """Idle sessions past the memory budget (with `wanted_bytes` more to come) end, oldest
        first; with `org_id` (a session about to start), also that organization's oldest idle
        ones past its cap of live sessions."""
        budget = self.settings.memory_budget_mib * 1024 * 1024
        idle = sorted((ts for ts in self._threads.values() if ts.sessions and not ts.busy), key=lambda t: t.last_used)
        held = sum(s.sandbox.memory_bytes() for ts in idle for s in ts.sessions.values())
        live = sum(len(ts.sessions) for ts in self._threads.values() if ts.org_id == org_id)
        ended = 0
        for ts in idle:
            over_org = org_id is not None and ts.org_id == org_id and live >= self.settings.max_per_org
            if held + wanted_bytes <= budget and not over_org:
                continue
            if ts.lock.locked():  # running, or being ended: never wait for another thread's run
                continue
            async with ts.lock:
                if not ts.sessions or ts.busy:
                    continue
                held -= sum(s.sandbox.memory_bytes() for s in ts.sessions.values())
                if ts.org_id == org_id:
                    live -= len(ts.sessions)
                await self.end_thread(ts, "evicted")
                ended += 1
        return ended

    async def recover(self) -> int:
        """On start: sessions a stopped server left live ended with it."""
        return await self._store.sessions.end_live("restart")

    def start(self) -> None:
        async def loop() -> None:
            interval = max(0.5, min(self.settings.idle_s / 4, 30.0))
            while True:
                await asyncio.sleep(interval)
                try:
                    await self.sweep()
                except Exception:
                    log.exception("session sweeper failed")

        if self._sweeper is None:
            self._sweeper = asyncio.create_task(loop(), name="session-sweeper")

    async def close(self) -> None:
        """The server stops: every session ends (the next run after the restart says so)."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        for ts in list(self._threads.values()):
            async with ts.lock:
                await self.end_thread(ts, "restart")
