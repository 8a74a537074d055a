"""Give back the space of deleted subvolumes at once, and the image's freed blocks to the host.

Deleting a subvolume (a thread's previous state after every execution, a discarded working
copy, a deleted thread or volume) only orphans it: btrfs's cleaner thread drops its extents
after the next transaction commit, which comes every 30 s. Until then its bytes still count
against the filesystem and against its organization's qgroup, so a new thread's first write
failed with ENOSPC/EDQUOT for up to ~30 s after the space had been "freed" (issue #12).

A reclaimer thread per filesystem does, for each batch of deletions: commit (which wakes the
cleaner), wait until the deleted subvolumes are gone, commit again (their freed extents and
qgroup numbers land), then FITRIM: the loop device punches holes for the freed ranges, so the
sparse image gives its freed blocks back to the host (async discard alone keeps them for
minutes). A caller that needs the space now waits for the batch in flight: `wait_async` on
the event loop holds no thread meanwhile (a wait in the loop's shared default executor would
delay every organization's file calls); `wait` blocks its thread.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import struct
import threading
import time
from pathlib import Path

log = logging.getLogger("sandboxd.storage")

_IOC_START_SYNC = 0x80089418  # _IOR(0x94, 24, __u64): start a commit, return its transid
_IOC_WAIT_SYNC = 0x40089416  # _IOW(0x94, 22, __u64): wait for that commit
_IOC_TREE_SEARCH = 0xD0009411  # _IOWR(0x94, 17, struct btrfs_ioctl_search_args)
_FITRIM = 0xC0185879  # _IOWR('X', 121, struct fstrim_range)
_ROOT_TREE = 1
_ROOT_ITEM_KEY = 132
_U64_MAX = 2**64 - 1
#: How long a batch may wait for the cleaner; a bigger subvolume takes longer to drop.
_DROP_WAIT_S = 30.0


class Reclaimer:
    def __init__(self, root: Path) -> None:
        self._root = root
        self._cond = threading.Condition()
        self._dropped: list[int] = []
        self._requested = 0  # batches asked for
        self._done = 0  # batches finished
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._waiters: list[tuple[int, asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    @property
    def pending(self) -> bool:
        with self._cond:
            return self._done < self._requested

    def dropped(self, subvolume: int) -> None:
        """A subvolume was deleted: reclaim its space in the background."""
        with self._cond:
            self._dropped.append(subvolume)
            self._requested += 1
            self._stopping = False
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="storage-reclaim", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def wait(self, timeout_s: float = _DROP_WAIT_S + 10) -> None:
        """Until every deletion made before this call has given its space back."""
        with self._cond:
            target = self._requested
            self._cond.wait_for(lambda: self._done >= target or self._thread is None, timeout_s)

    async def wait_async(self, timeout_s: float) -> None:
        """`wait` on the event loop: no thread is held meanwhile."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        with self._cond:
            if self._done >= self._requested or self._thread is None:
                return
            waiter = (self._requested, loop, done)
            self._waiters.append(waiter)
        try:
            await asyncio.wait([done], timeout=timeout_s)
        finally:
            with self._cond:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)

    def stop(self) -> None:
        """Finish the batch in flight and end the thread (before the filesystem is unmounted)."""
        with self._cond:
            self._stopping = True
            thread, self._thread = self._thread, None
            self._cond.notify_all()
            self._wake()
        if thread is not None:
            thread.join(timeout=_DROP_WAIT_S + 10)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: bool(self._dropped) or self._stopping)
                if not self._dropped:
                    return
                batch, self._dropped = self._dropped, []
                target = self._requested
            try:
                self._reclaim(batch)
            except OSError as exc:  # unmounted under us, or the fs refuses: the cleaner still runs
                log.warning("reclaiming deleted subvolumes failed: %s", exc)
            with self._cond:
                self._done = max(self._done, target)
                self._cond.notify_all()
                self._wake()

    def _wake(self) -> None:
        """Resolve the async waiters whose batches are done (or all, once stopped); under `_cond`."""
        waiting = []
        for waiter in self._waiters:
            target, loop, done = waiter
            if self._done < target and self._thread is not None:
                waiting.append(waiter)
                continue
            try:
                loop.call_soon_threadsafe(_resolve, done)
            except RuntimeError:  # its loop is closed: nobody waits any more
                pass
        self._waiters = waiting

    def _reclaim(self, subvolumes: list[int]) -> None:
        fd = os.open(self._root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            # The deletions' own transaction is often committed already (every snapshot commits
            # one), and a commit request then commits nothing and so wakes no cleaner: it would
            # sleep until btrfs's 30 s commit. A metadata change makes sure there is a commit.
            os.utime(fd)
            _commit(fd)
            deadline = time.monotonic() + _DROP_WAIT_S
            delay = 0.001
            while any(_exists(fd, s) for s in subvolumes) and time.monotonic() < deadline:
                time.sleep(delay)
                delay = min(delay * 2, 0.1)
            _commit(fd)
            fcntl.ioctl(fd, _FITRIM, bytearray(struct.pack("<QQQ", 0, _U64_MAX, 0)))
        finally:
            os.close(fd)


def _resolve(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def _commit(fd: int) -> None:
    transid = bytearray(8)
    fcntl.ioctl(fd, _IOC_START_SYNC, transid)
    fcntl.ioctl(fd, _IOC_WAIT_SYNC, transid)


def _exists(fd: int, subvolume: int) -> bool:
    """Whether the root tree still holds the subvolume's root item (the cleaner has not dropped it)."""
    args = bytearray(4096)
    # struct btrfs_ioctl_search_key: tree_id, min/max objectid, min/max offset, min/max
    # transid, min/max type, nr_items; the results follow it.
    struct.pack_into(
        "<7Q3I", args, 0, _ROOT_TREE, subvolume, subvolume, 0, _U64_MAX, 0, _U64_MAX,
        _ROOT_ITEM_KEY, _ROOT_ITEM_KEY, 1,
    )
    fcntl.ioctl(fd, _IOC_TREE_SEARCH, args)
    found: int = struct.unpack_from("<I", args, 64)[0]
    return found > 0
