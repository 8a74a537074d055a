"""The server's bucket mounts: one FUSE mount per (connection, scoped path), shared by the
executions that need it and released when idle.

An rclone mount takes a few hundred milliseconds to start (a process, a FUSE session, a first
listing), so an execution must not pay it each time: the first execution of a (connection,
path) mounts it, the next ones reuse it, and a mount nobody used for `idle_s` is unmounted.
Every mount lives under `root` (this server instance's run directory): on start, what a
crashed server left there is unmounted (`rclone.unmount_stale`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..ids import random_token
from . import rclone
from .providers import Remote

log = logging.getLogger("sandboxd.buckets")

#: bwrap binds a mount as the sandbox's uid, by path: it must traverse to it. Nothing here can
#: be listed, and the mount's own root is 0770, root and the organization's group.
_TRAVERSE = 0o711


@dataclass(frozen=True)
class MountKey:
    """What makes two mounts the same: the connection, the path in the bucket, whether rclone
    itself refuses writes (the connection is read-only) and the group that owns the files."""

    connection_id: str
    path: str
    read_only: bool
    gid: int


@dataclass
class _Entry:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    mount: rclone.RcloneMount | None = None
    refs: int = 0
    last_used: float = field(default_factory=time.monotonic)
    token: str = ""


class Lease:
    """One execution's use of a mount: `settle` after the run, then `release`."""

    def __init__(
        self, path: Path, mount: rclone.RcloneMount, before: rclone.Uploads | None, release: Callable[[], None]
    ) -> None:
        self.path = path
        self._mount = mount
        self._before = before
        self._release: Callable[[], None] | None = release

    async def settle(self, timeout_s: float = 120) -> None:
        """Wait for the uploads of what was written through the mount (also by other
        executions sharing it); rclone.MountFailed if one failed or they did not finish.
        A read-only lease wrote nothing: nothing to wait for."""
        if self._before is None:
            return
        errored = await self._mount.flush(timeout_s=timeout_s, since=self._before)
        if errored > self._before.errored:
            raise rclone.MountFailed(f"{errored - self._before.errored} file(s) written could not be uploaded to the bucket")

    def release(self) -> None:
        release = self._release
        self._release = None
        if release is not None:
            release()


class BucketMounts:
    def __init__(self, root: Path, cache_root: Path, *, idle_s: float, cache_max_mib: int = 4096) -> None:
        """Mount points under `root` (the run dir: bwrap, as a sandbox uid, must traverse to
        them); rclone's caches of written files under `cache_root` (on disk, root's alone)."""
        self._root = root
        self._cache_root = cache_root
        self._cache_max_mib = cache_max_mib
        self._idle_s = idle_s
        self._entries: dict[MountKey, _Entry] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._releasing: asyncio.Future[int] | None = None
        #: Called with a mount's path before it is unmounted: the warm pool drops the sandboxes
        #: started with it (runtime/pool.py).
        self.before_unmount: Callable[[Path], Awaitable[None]] | None = None

    def recover(self) -> int:
        """Unmount what a previous run of this instance left (after a crash); the count."""
        self._root.mkdir(parents=True, exist_ok=True)
        for path in (self._root.parent, self._root):  # the instance's run dir, then ours
            os.chmod(path, _TRAVERSE)
        self._cache_root.mkdir(parents=True, exist_ok=True, mode=0o700)
        count = rclone.unmount_stale(self._root, cache_root=self._cache_root)
        for leftover in self._root.iterdir():
            _remove_mount_dir(leftover)
        return count

    async def acquire(self, key: MountKey, remote: Callable[[], Awaitable[Remote]], *, writable: bool) -> Lease:
        """The mount of `key`, mounted now if it is not (or if its rclone died); raises
        rclone.MountFailed with a message for the user. A `writable` lease settles its
        uploads after the run."""
        entry = self._entries.setdefault(key, _Entry())
        entry.refs += 1
        try:
            async with entry.lock:
                if entry.mount is not None and not entry.mount.alive():
                    log.warning("bucket mount of %s died; mounting it again", key.connection_id)
                    await self._unmount(entry)
                if entry.mount is None:
                    entry.token = random_token(16)
                    base = self._root / entry.token
                    (base / "mnt").mkdir(parents=True)
                    os.chmod(base, _TRAVERSE)
                    try:
                        entry.mount = await rclone.mount(
                            await remote(), key.path, base / "mnt", read_only=key.read_only, gid=key.gid,
                            cache_dir=base / "private", vfs_dir=self._cache_root / entry.token,
                            cache_max_mib=self._cache_max_mib,
                        )
                    except BaseException:
                        _remove_mount_dir(base)
                        raise
                mounted = entry.mount
                before = await mounted.uploads() if writable else None
        except BaseException:
            self._done(key, entry)
            raise
        self._ensure_reaper()
        return Lease(mounted.mountpoint, mounted, before, lambda: self._done(key, entry))

    def _done(self, key: MountKey, entry: _Entry) -> None:
        entry.refs -= 1
        entry.last_used = time.monotonic()
        if entry.refs == 0 and entry.mount is None and self._entries.get(key) is entry:
            del self._entries[key]

    async def drop(self, connection_id: str) -> None:
        """Unmount every idle mount of a connection (it is being deleted)."""
        for key, entry in list(self._entries.items()):
            if key.connection_id == connection_id and entry.refs == 0:
                async with entry.lock:
                    await self._unmount(entry)
                self._entries.pop(key, None)

    async def release_idle(self) -> int:
        """Unmount the mounts nobody used for `idle_s`; the count."""
        now, count = time.monotonic(), 0
        for key, entry in list(self._entries.items()):
            if entry.refs == 0 and now - entry.last_used >= self._idle_s:
                async with entry.lock:
                    if entry.refs == 0 and entry.mount is not None:
                        await self._unmount(entry)
                        count += 1
                if entry.refs == 0:
                    self._entries.pop(key, None)
        return count

    @property
    def mounted(self) -> int:
        return sum(1 for e in self._entries.values() if e.mount is not None)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None
        if self._releasing is not None:
            with contextlib.suppress(Exception):
                await self._releasing
        await asyncio.gather(*(self._unmount(entry) for entry in self._entries.values()))
        self._entries.clear()

    async def _unmount(self, entry: _Entry) -> None:
        mount, entry.mount = entry.mount, None
        if mount is not None and self.before_unmount is not None:
            try:
                await self.before_unmount(mount.mountpoint)
            except Exception:
                log.exception("dropping warm sandboxes of a bucket mount failed")
        if mount is not None:
            try:
                await mount.unmount()
            except Exception:
                log.exception("unmounting a bucket failed")
        if entry.token:
            _remove_mount_dir(self._root / entry.token)

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        while self._entries:
            await asyncio.sleep(max(0.05, self._idle_s / 4))
            # Shielded: `close` cancels the reaper, never an unmount half done (it waits for it).
            self._releasing = asyncio.ensure_future(self.release_idle())
            try:
                await asyncio.shield(self._releasing)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("releasing idle bucket mounts failed")


def _remove_mount_dir(base: Path) -> None:
    """A mount's directories, once unmounted: never a recursive delete, which would walk into
    a mount that failed to go and delete the bucket's files. What is still mounted stays."""
    for path in (base / "private", base / "mnt", base):
        if path.name == "private":
            shutil.rmtree(path, ignore_errors=True)  # never a mount point: rclone's HOME and socket
            continue
        try:
            os.rmdir(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            log.error("bucket mount directory %s left in place: %s", path, exc.strerror)
            return
