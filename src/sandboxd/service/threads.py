"""Threads: a `thread_id` keeps /home/baponi between executions of one organization.

One execution per thread at a time (409 otherwise, before any work), enforced by a file lock
that other processes (the CLI) see too and that a crash releases. Each thread runs as its own
unprivileged host uid, never reused, so its files keep one owner and no other thread's uid can
open them.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import Conflict, Forbidden, NotFound, Unavailable
from ..store import Store, Thread, utcnow
from ..storage import OrgQuotaReached, ThreadStore
from .ports import ThreadLock

if TYPE_CHECKING:
    from .sessions import Sessions

log = logging.getLogger("sandboxd.threads")

#: A thread's last use is written at most this often (the retention sweep counts in days).
_TOUCH_EVERY_S = 60.0
_TOUCHED_MAX = 100_000


@dataclass(frozen=True)
class ThreadPolicy:
    uid_base: int = 1_000_000
    max_per_org: int = 1000
    retention_days: int = 30


@dataclass
class WorkingCopy:
    """An execution's claim on a thread: the lock's token, and the snapshot it runs in."""

    thread: Thread
    lock_fd: int
    path: Path | None = None
    #: The image (digest, or "host") a committed run used: recorded as the home's last image.
    image: str | None = None


class ThreadLocks:
    """The `ThreadLock` of one host: `flock` on a lock file, one execution (or admin action)
    per thread across processes.

    The server and the CLI share the data dir, so `sandboxd threads delete` sees a running
    execution's lock; the kernel drops a lock when its holder dies, so a crash never leaves a
    thread busy.
    """

    def __init__(self, directory: Path) -> None:
        self._dir = directory

    def acquire(self, org_id: str, thread_id: str) -> int:
        path = self._dir / org_id / f"{thread_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise Conflict(f"thread {thread_id!r} is busy with another execution") from None
        return fd

    def release(self, fd: int) -> None:
        # Unlock before closing: a sandbox being forked at this moment holds a copy of the
        # descriptor until its exec, and the lock would live as long as that copy.
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    def held(self, org_id: str, thread_id: str) -> bool:
        try:
            fd = self.acquire(org_id, thread_id)
        except Conflict:
            return True
        self.release(fd)
        return False


class ThreadService:
    def __init__(
        self, store: Store, homes: ThreadStore | None, policy: ThreadPolicy, locks: ThreadLock
    ) -> None:
        self._store = store
        self._homes = homes
        self._policy = policy
        self._locks = locks
        self._creating: dict[str, asyncio.Lock] = {}  # per org: count-then-add is one step
        self._sweeper: asyncio.Task[None] | None = None
        self._touches: set[asyncio.Task[None]] = set()
        #: When each thread's last use was last recorded (monotonic), and on which image.
        self._touched: dict[tuple[str, str], tuple[float, str | None]] = {}
        #: The server's persistent sessions (service/sessions.py): a deleted thread's end.
        self.sessions: Sessions | None = None

    @property
    def available(self) -> bool:
        return self._homes is not None

    def _require_storage(self) -> ThreadStore:
        if self._homes is None:
            raise Unavailable("thread storage is not available on this server (btrfs-progs and loop mounts are needed)")
        return self._homes

    async def claim(self, org_id: str, thread_id: str, trace_id: str) -> WorkingCopy:
        """Lock the thread for one execution (409 if busy), creating it on first use.

        A new thread is refused (403) when its organization has used its storage cap.
        """
        homes = self._require_storage()
        fd = self._locks.acquire(org_id, thread_id)
        try:
            thread = await self._store.threads.get(org_id, thread_id)
            if thread is None:
                async with self._creating.setdefault(org_id, asyncio.Lock()):
                    if await self._store.threads.count(org_id) >= self._policy.max_per_org:
                        raise Forbidden(
                            f"your organization has reached its limit of {self._policy.max_per_org} threads"
                        )
                    try:
                        await homes.orgs.make_room(org_id, 0)
                        await asyncio.to_thread(homes.orgs.check_room, org_id)
                    except OrgQuotaReached as exc:
                        raise Forbidden(str(exc)) from None
                    thread = await self._store.threads.add(org_id, thread_id, self._policy.uid_base)
            return WorkingCopy(thread=thread, lock_fd=fd)
        except BaseException:
            self._locks.release(fd)
            raise

    async def open(self, copy: WorkingCopy, trace_id: str, gid: int | None) -> str:
        """Snapshot the thread's home for the execution; returns the host path to bind."""
        homes = self._require_storage()
        t = copy.thread
        await homes.make_room(t.org_id)
        copy.path = await asyncio.to_thread(
            homes.begin, t.org_id, t.thread_id, t.uid, gid if gid is not None else t.uid, trace_id
        )
        return str(copy.path)

    async def create_home(self, copy: WorkingCopy, gid: int | None) -> Path:
        """The claimed thread's committed home, created empty if it has none yet: files are
        uploaded to a thread before its first run."""
        homes = self._require_storage()
        t = copy.thread
        home = await asyncio.to_thread(homes.home, t.org_id, t.thread_id)
        if home is not None:
            return home
        await homes.make_room(t.org_id)
        return await asyncio.to_thread(
            homes.create_home, t.org_id, t.thread_id, t.uid, gid if gid is not None else t.uid
        )

    @contextlib.asynccontextmanager
    async def changing(self, copy: WorkingCopy, home: Path) -> AsyncIterator[Path]:
        """Where a files API upload or delete of the claimed thread writes: its `home`, or,
        while the thread's sessions live, their workspace, saved as the home afterwards. The
        interpreters then keep their state and see the file, and no checkpoint undoes it."""
        if self.sessions is not None:
            async with self.sessions.workspace_of(copy.thread.org_id, copy.thread.thread_id, copy.thread.uid) as live:
                if live is not None:
                    yield live
                    await self.checkpoint(copy, live, copy.image)
                    return
        yield home

    async def commit(self, copy: WorkingCopy, image: str | None = None) -> None:
        """Make the working copy the thread's home (a run that ended by itself, on `image`).
        The lock stays held until `release`; if saving fails the working copy is gone all the same."""
        path, copy.path = copy.path, None
        copy.image = image
        if path is not None and self._homes is not None:
            await asyncio.to_thread(self._homes.commit, path)

    async def checkpoint(self, copy: WorkingCopy, workspace: Path, image: str | None = None) -> None:
        """Save a live session's workspace as the thread's home (the workspace stays in use)."""
        copy.image = image
        await asyncio.to_thread(self._require_storage().checkpoint, workspace)

    async def save_workspace(self, workspace: Path) -> None:
        """Checkpoint a session's workspace outside a run (its sessions are ending)."""
        await asyncio.to_thread(self._require_storage().checkpoint, workspace)

    async def take_workspace(self, copy: WorkingCopy, trace_id: str, gid: int | None) -> Path:
        """A working copy that outlives the execution (a persistent session's workspace): the
        caller drops it with `discard_path`."""
        await self.open(copy, trace_id, gid)
        path, copy.path = copy.path, None
        assert path is not None
        return path

    async def discard_path(self, path: Path) -> None:
        if self._homes is not None:
            await asyncio.to_thread(self._homes.discard, path)

    async def release(self, copy: WorkingCopy) -> None:
        """Drop the working copy unless it was committed, and give the lock back."""
        try:
            path, copy.path = copy.path, None
            if path is not None and self._homes is not None:
                await asyncio.to_thread(self._homes.discard, path)
        finally:
            self._locks.release(copy.lock_fd)
        # Only the retention sweep (days) reads the time of last use: recorded off the
        # request's path, and at most once a minute per thread unless its image changed.
        key, now = (copy.thread.org_id, copy.thread.thread_id), time.monotonic()
        last = self._touched.get(key)
        if last is not None and now - last[0] < _TOUCH_EVERY_S and copy.image in (None, last[1]):
            return
        self._touched[key] = (now, copy.image if copy.image is not None else (last[1] if last else None))
        if len(self._touched) > _TOUCHED_MAX:
            self._touched.clear()
        touch = asyncio.create_task(self._touch(copy.thread, copy.image))
        self._touches.add(touch)
        touch.add_done_callback(self._touches.discard)

    async def _touch(self, thread: Thread, image: str | None) -> None:
        try:
            await self._store.threads.touch(thread.org_id, thread.thread_id, image)
        except Exception:
            log.exception("recording the last use of thread %s failed", thread.thread_id)

    def busy(self, org_id: str, thread_id: str) -> bool:
        return self._locks.held(org_id, thread_id)

    async def get(self, org_id: str, thread_id: str) -> Thread:
        thread = await self._store.threads.get(org_id, thread_id)
        if thread is None:
            raise NotFound(f"no thread {thread_id!r}")
        return thread

    def home(self, thread: Thread) -> Path | None:
        return self._require_storage().home(thread.org_id, thread.thread_id)

    async def list(self, org_id: str | None = None) -> list[Thread]:
        return await self._store.threads.list(org_id)

    async def usage_bytes(self, thread: Thread) -> int:
        homes = self._require_storage()
        return await asyncio.to_thread(homes.usage_bytes, thread.org_id, thread.thread_id)

    async def delete(self, org_id: str, thread_id: str) -> None:
        await self.get(org_id, thread_id)
        fd = self._locks.acquire(org_id, thread_id)  # 409 while an execution holds it
        try:
            if self.sessions is not None:
                await self.sessions.end(org_id, thread_id, "changed")
            await self._store.sessions.forget(org_id, thread_id)
            if self._homes is not None:
                await asyncio.to_thread(self._homes.delete, org_id, thread_id)
            await self._store.threads.delete(org_id, thread_id)
        finally:
            self._locks.release(fd)

    async def sweep(self) -> int:
        """Delete threads idle longer than the retention period; returns how many."""
        before = utcnow() - timedelta(days=self._policy.retention_days)
        deleted = 0
        for thread in await self._store.threads.idle_since(before):
            try:
                await self.delete(thread.org_id, thread.thread_id)
                deleted += 1
            except Conflict:
                continue
        return deleted

    async def recover(self) -> int:
        """On start: drop working copies a crash left; committed homes are intact."""
        return await asyncio.to_thread(self._homes.recover) if self._homes is not None else 0

    def start(self, interval_s: float = 3600.0) -> None:
        async def loop() -> None:
            while True:
                try:
                    swept = await self.sweep()
                    if swept:
                        log.info("deleted %d idle threads", swept)
                except Exception:
                    log.exception("thread sweeper failed")
                await asyncio.sleep(interval_s)

        if self._sweeper is None:
            self._sweeper = asyncio.create_task(loop(), name="thread-sweeper")

    async def settle(self) -> None:
        """Wait for the last-use records still being written (before the store closes)."""
        if self._touches:
            await asyncio.wait(self._touches, timeout=10)

    async def stop(self) -> None:
        """Stop the sweeper and unmount the homes' filesystem (it is mounted again on use)."""
        await self.settle()
        if self._sweeper is not None:
            self._sweeper.cancel()
            try:
                await self._sweeper
            except asyncio.CancelledError:
                pass
            self._sweeper = None
        if self._homes is not None:
            try:
                await asyncio.to_thread(self._homes.unmount)
            except Exception:
                log.exception("unmounting thread storage failed")
