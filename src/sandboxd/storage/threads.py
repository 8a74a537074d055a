"""Thread homes on btrfs: a committed subvolume per thread, a snapshot per execution.

    <root>/threads/<org_id>/<thread_id>/home          the committed state (owner: thread uid, 0700)
    <root>/threads/<org_id>/<thread_id>/work-<trace>  an execution's working copy

An execution binds its working copy at /home/baponi. When it ends normally the copy is
swapped in atomically; after a timeout, OOM, cancel or crash it is deleted and the previous
state stays. Parents are 0711 so that bwrap, started as the thread's unprivileged uid, can
reach the one directory it owns and list nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from .btrfs import Btrfs

_TRAVERSE_ONLY = 0o711


class ThreadStore:
    def __init__(self, fs: Btrfs, quota_bytes: int) -> None:
        self._fs = fs
        self._quota_bytes = quota_bytes

    def _dir(self, org_id: str, thread_id: str) -> Path:
        return self._fs.root / "threads" / org_id / thread_id

    def _mounted(self) -> bool:
        """Mount the filesystem if it exists; False when nothing was ever stored."""
        if not self._fs.image.exists():
            return False
        self._fs.mount()
        return True

    def home(self, org_id: str, thread_id: str) -> Path | None:
        """The committed home, or None if the thread has none yet."""
        if not self._mounted():
            return None
        path = self._dir(org_id, thread_id) / "home"
        return path if path.is_dir() else None

    def begin(self, org_id: str, thread_id: str, uid: int, gid: int, trace_id: str) -> Path:
        """A working copy of the thread's home for one execution (created empty the first time)."""
        self._fs.mount()
        thread_dir = self._dir(org_id, thread_id)
        for path in (self._fs.root, self._fs.root / "threads", thread_dir.parent, thread_dir):
            path.mkdir(exist_ok=True)
            os.chmod(path, _TRAVERSE_ONLY)
        home = thread_dir / "home"
        if not home.is_dir():
            self._fs.create(home, self._quota_bytes)
            os.chown(home, uid, gid)
            os.chmod(home, 0o700)
        for stale in thread_dir.glob("work-*"):  # left by a crash
            self._fs.delete(stale)
        work = thread_dir / f"work-{trace_id}"
        self._fs.snapshot(home, work)
        return work

    def unmount(self) -> None:
        self._fs.unmount()

    def commit(self, work: Path) -> None:
        """Make the working copy the thread's home; the old state goes."""
        home = work.parent / "home"
        self._fs.exchange(work, home)
        self._fs.delete(work)  # now the previous state

    def discard(self, work: Path) -> None:
        self._fs.delete(work)

    def delete(self, org_id: str, thread_id: str) -> None:
        thread_dir = self._dir(org_id, thread_id)
        if not self._mounted() or not thread_dir.exists():
            return
        for sub in thread_dir.iterdir():
            self._fs.delete(sub)
        thread_dir.rmdir()

    def usage_bytes(self, org_id: str, thread_id: str) -> int:
        home = self.home(org_id, thread_id)
        return self._fs.referenced_bytes(home) if home else 0

    def recover(self) -> int:
        """After a crash: delete every working copy; the committed homes are intact."""
        threads = self._fs.root / "threads"
        if not self._mounted() or not threads.is_dir():
            return 0
        stale = list(threads.glob("*/*/work-*"))
        for path in stale:
            self._fs.delete(path)
        return len(stale)
