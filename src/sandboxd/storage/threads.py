"""Thread homes on btrfs: a committed subvolume per thread, a snapshot per execution.

    <root>/threads/<org_id>/<thread_id>/home          the committed state (owner: thread uid, 0700)
    <root>/threads/<org_id>/<thread_id>/work-<trace>  an execution's working copy

An execution binds its working copy at /home/baponi. When it ends normally the copy is
swapped in atomically; after a timeout, OOM, cancel or crash it is deleted and the previous
state stays, and so it does when the shared filesystem filled up during the run (its writes
may have been cut short). Homes and working copies count against their organization's cap
(orgs.py). Parents are 0711 so that bwrap, started as the thread's unprivileged uid, can
reach the one directory it owns and list nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

from .btrfs import Btrfs, StorageFull
from .orgs import OrgQuotas

_TRAVERSE_ONLY = 0o711
#: A session's checkpoint while it is swapped in (runtime leftovers of a crash are removed).
_CHECKPOINT = "home-next"


class ThreadStore:
    def __init__(self, fs: Btrfs, quota_bytes: int, orgs: OrgQuotas) -> None:
        self._fs = fs
        self._quota_bytes = quota_bytes
        self.orgs = orgs

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

    async def make_room(self, org_id: str) -> None:
        """Before `begin`: room for a run's writes (OrgQuotas.make_room)."""
        await self.orgs.make_room(org_id, self._quota_bytes)

    def create_home(self, org_id: str, thread_id: str, uid: int, gid: int) -> Path:
        """The thread's committed home, created empty if it has none (a first run, or files
        uploaded before one)."""
        self._fs.mount()
        thread_dir = self._dir(org_id, thread_id)
        for path in (self._fs.root, self._fs.root / "threads", thread_dir.parent, thread_dir):
            path.mkdir(exist_ok=True)
            os.chmod(path, _TRAVERSE_ONLY)
        home = thread_dir / "home"
        if not home.is_dir():
            self._fs.create(home, self._quota_bytes, self.orgs.group(org_id))
            os.chown(home, uid, gid)
            os.chmod(home, 0o700)
        return home

    def begin(self, org_id: str, thread_id: str, uid: int, gid: int, trace_id: str) -> Path:
        """A working copy of the thread's home for one execution (created empty the first time;
        `make_room` first)."""
        home = self.create_home(org_id, thread_id, uid, gid)
        group = self.orgs.group(org_id)
        thread_dir = home.parent
        for stale in thread_dir.glob("work-*"):  # left by a crash
            self._fs.delete(stale)
        work = thread_dir / f"work-{trace_id}"
        self._fs.snapshot(home, work, group)
        return work

    def unmount(self) -> None:
        self._fs.reclaimer.stop()
        self._fs.unmount()

    def commit(self, work: Path) -> None:
        """Make the working copy the thread's home; the old state goes.

        Not when the filesystem is full: the run's writes may have failed with ENOSPC part way,
        so the working copy goes and the thread keeps its previous state (StorageFull).
        """
        if self._fs.free_bytes() < self.orgs.full_below:
            self._fs.delete(work)
            raise StorageFull(
                "the storage filesystem filled up during the run, so its changes to the thread were "
                "discarded and the thread keeps its previous state"
            )
        home = work.parent / "home"
        try:
            self._fs.exchange(work, home)
        except BaseException:
            self._fs.delete(work)  # the home was not touched
            raise
        self._fs.delete(work)  # now the previous state

    def checkpoint(self, work: Path) -> None:
        """Save a live session's working copy as the thread's home; the copy stays in use.

        A snapshot of it is swapped in as `commit` swaps the copy itself. Not when the
        filesystem is full (StorageFull): the caller ends the session, and the thread keeps
        its previous state.
        """
        if self._fs.free_bytes() < self.orgs.full_below:
            raise StorageFull(
                "the storage filesystem filled up during the run, so its changes to the thread were "
                "discarded and the thread keeps its previous state"
            )
        home, saved = work.parent / "home", work.parent / _CHECKPOINT
        if saved.exists():  # left by a crash
            self._fs.delete(saved)
        self._fs.snapshot(work, saved, self.orgs.group(work.parent.parent.name))
        try:
            self._fs.exchange(saved, home)
        finally:
            self._fs.delete(saved)  # the previous state (or the snapshot, if the swap failed)

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
        """On server start: delete every working copy a crash left (the committed homes are
        intact), and bring organization quotas up to date."""
        if not self._mounted():
            return 0
        threads = self._fs.root / "threads"
        stale = [*threads.glob("*/*/work-*"), *threads.glob(f"*/*/{_CHECKPOINT}")]
        for path in stale:
            self._fs.delete(path)
        self._adopt(threads)
        self.orgs.apply_limit()
        return len(stale)

    def _adopt(self, threads: Path) -> None:
        """Homes and volumes made before organization quotas join their organization's group."""
        parents = self._fs.members()
        volumes = self._fs.root / "volumes"
        org_ids = {p.name for base in (threads, volumes) if base.is_dir() for p in base.iterdir()}
        added = False
        for org_id in sorted(org_ids):
            subvolumes = [*threads.glob(f"{org_id}/*/home"), *volumes.glob(f"{org_id}/*")]
            added |= self.orgs.adopt(org_id, [p for p in subvolumes if p.is_dir()], parents)
        if added:
            self._fs.rescan()
