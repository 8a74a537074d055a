"""/data/outputs: a size-capped directory per sandbox whose files outlive the sandbox.

Every sandbox (cold, pooled, a session's) gets `/data/outputs`, writable by the sandbox user
and backed on the host by a tmpfs of its own that the server mounts when it starts the sandbox
(for a pooled one: when it pre-spawns it, never on a request's path):

    <root>/                 a private bind mount of itself (mode 0711): nothing below propagates out
    <root>/<token>/         one sandbox's tmpfs: size=<outputs_size_mib>, nr_inodes=<cap>,
                            nosuid, nodev, root dir owned by the sandbox's host uid, mode 0700

bwrap binds it by descriptor (`--bind-fd`, like a volume) over the /data tmpfs. Its size and
inode count are the caps (a write past them fails with ENOSPC inside); its pages are charged to
the memory cgroup of the process that writes them, so they also count against the sandbox's
memory limit. The tmpfs is unmounted (on a thread: off a pooled run's path) and its directory
removed when the sandbox is disposed of;
`recover` removes what a crashed server left, as `homeslot.py` does for home slots.

`collect` copies what the sandbox left there into the server's artifact store, run as host
root on a tree untrusted code wrote (and, for a session's long-lived sandbox, may still be
writing): every directory is opened with `O_NOFOLLOW | O_DIRECTORY` relative to its parent's
descriptor, each file with `O_NOFOLLOW | O_NONBLOCK` after an lstat says it is regular, and its
fstat must be the same inode. Links, FIFOs, devices and sockets are skipped, never followed or
opened; at most the size fstat saw is copied. Copies are owned by root, mode 0600.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import stat
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from ..errors import SandboxSetupError
from ..ids import random_token
from .mountpoints import mounted, unmount_all

__all__ = ["SANDBOX_PATH", "Collected", "Collection", "Outputs", "collect"]

#: Where the sandbox sees it.
SANDBOX_PATH = "/data/outputs"

_libc = ctypes.CDLL(None, use_errno=True)
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_BIND = 0x1000
_MS_PRIVATE = 1 << 18

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # a FIFO raced in never blocks us
_WRITE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_DEPTH = 32
_CHUNK = 1024 * 1024


def _check(rc: int, what: str) -> None:
    if rc < 0:
        raise SandboxSetupError("outputs directory", f"{what}: {os.strerror(ctypes.get_errno())}")




class Outputs:
    """The outputs directories of one server's (or one `sandboxd run`'s) sandboxes, under `root`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._prepared = False
        #: Unmounts under way (`release_later`); one thread, so they never pile up in parallel.
        self._releasing: set[Future[None]] = set()
        self._releaser: ThreadPoolExecutor | None = None

    def _prepare(self) -> None:
        if self._prepared:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        # bwrap, as the sandbox's uid, resolves the descriptor's path: it must traverse (not list)
        for path in (self.root, *self.root.parents[:2]):  # e.g. /run/sandboxd/<instance>/outputs
            os.chmod(path, 0o711)
        if not mounted(self.root):
            _check(_libc.mount(str(self.root).encode(), str(self.root).encode(), None, _MS_BIND, None), "bind")
        _check(_libc.mount(b"none", str(self.root).encode(), None, _MS_PRIVATE, None), "make private")
        self._prepared = True

    def create(self, uid: int, gid: int, *, size_mib: int, max_files: int) -> tuple[Path, int]:
        """A new empty tmpfs for one sandbox, and an `O_PATH` descriptor of it for bwrap to
        bind (the caller closes it)."""
        self._prepare()
        path = self.root / random_token(12)
        path.mkdir(mode=0o700)
        try:
            # Inodes: the files, plus as many directories, plus the root.
            options = f"size={size_mib}m,nr_inodes={2 * max_files + 1},mode=0700,uid={uid},gid={gid}"
            _check(
                _libc.mount(b"sandboxd-outputs", str(path).encode(), b"tmpfs", _MS_NOSUID | _MS_NODEV,
                            options.encode()),
                f"mount tmpfs on {path}",
            )
            fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except BaseException:
            self.release(path)
            raise
        return path, fd

    def release(self, path: Path) -> None:
        """Unmount the sandbox's tmpfs (its files go with it) and remove the mount point."""
        unmount_all(path)
        with contextlib.suppress(FileNotFoundError):
            path.rmdir()

    def release_later(self, path: Path) -> None:
        """`release` on a thread of its own: an unmount waits for an RCU grace period (0.1 to a
        few ms), which a pooled run's answer should not wait for. The sandbox is gone by then;
        `settle` (and `close`) wait for what is pending."""
        if self._releaser is None:
            self._releaser = ThreadPoolExecutor(max_workers=1, thread_name_prefix="outputs-release")
        future = self._releaser.submit(self.release, path)
        self._releasing.add(future)
        future.add_done_callback(self._releasing.discard)

    def settle(self, timeout_s: float = 30.0) -> None:
        """Wait until every `release_later` is done."""
        if self._releasing:
            wait(list(self._releasing), timeout=timeout_s)

    def recover(self) -> int:
        """After a crash: release every directory a previous run left."""
        if not self.root.is_dir():
            return 0
        stale = [p for p in self.root.iterdir() if p.is_dir()]
        for path in stale:
            self.release(path)
        return len(stale)

    def recover_dead_siblings(self) -> int:
        """A server's start: remove what `sandboxd run` or `doctor` processes (roots named
        `<root>-<role><pid>` beside this one) left when they died."""
        found = 0
        for sibling in self.root.parent.glob(f"{self.root.name}-*"):
            pid = re.search(r"(\d+)$", sibling.name)
            if pid is None or Path(f"/proc/{pid.group(1)}").exists():
                continue
            found += Outputs(sibling).recover()
            Outputs(sibling).close()
        return found

    def close(self) -> None:
        """Release everything and the root's own mount."""
        self.settle()
        if self._releaser is not None:
            self._releaser.shutdown(wait=True)
            self._releaser = None
        self.recover()
        if self.root.is_dir():
            unmount_all(self.root)
            with contextlib.suppress(OSError):
                self.root.rmdir()
                self.root.parent.rmdir()  # the instance's run dir, if nothing else is there
        self._prepared = False


# --------------------------------------------------------------------------- collection


@dataclass(frozen=True)
class Collected:
    """One file copied out: its path relative to /data/outputs and the bytes kept."""

    path: str
    size: int


#: path -> (size, mtime_ns) of every file already collected from a sandbox's outputs.
Seen = Mapping[str, tuple[int, int]]


class Collection(NamedTuple):
    #: New or changed since `seen`, in path order.
    files: tuple[Collected, ...]
    #: `seen` with these files.
    seen: dict[str, tuple[int, int]]
    #: Files left out because a cap was reached (count or bytes).
    dropped: int


def collect(
    outputs_dir: Path | str,
    into: Path | str,
    seen: Seen | None = None,
    *,
    max_files: int = 1000,
    max_bytes: int = 64 * 1024 * 1024,
    keep_free_bytes: int = 1024 * 1024 * 1024,
) -> Collection:
    """Copy the regular files under `outputs_dir` that are new or changed since `seen` into
    `into` (made 0700 if missing; trusted: the server's own path), keeping the same relative
    paths. At most `max_files` files and `max_bytes` bytes are copied in one call, never leaving
    less than `keep_free_bytes` free on the disk of `into` (a sparse file is copied whole); the rest are
    counted in `dropped` (and not in `seen`, so a later call may take them). A session's
    sandbox calls this after each execution with the `seen` of the last call."""
    before = dict(seen or {})
    found = _walk(Path(outputs_dir))
    if found:  # never fill the server's disk (the database and every tenant's data are there)
        Path(into).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        disk = os.statvfs(Path(into).parent)
        max_bytes = max(0, min(max_bytes, disk.f_bavail * disk.f_frsize - keep_free_bytes))
    files: list[Collected] = []
    after = dict(before)
    dropped = 0
    budget = max_bytes
    into_fd: int | None = None
    src_root = os.open(outputs_dir, _DIR)
    try:
        for rel, size, mtime_ns in found:
            if before.get(rel) == (size, mtime_ns):
                continue
            if len(files) >= max_files or size > budget:
                dropped += 1
                continue
            if into_fd is None:
                Path(into).mkdir(parents=True, exist_ok=True, mode=0o700)
                into_fd = os.open(into, _DIR)
            try:
                kept = _copy(src_root, into_fd, rel, size)
            except OSError:  # e.g. a file where an earlier call kept a directory of that name
                dropped += 1
                continue
            if kept is None:  # gone, or no longer a regular file
                continue
            budget -= kept
            files.append(Collected(rel, kept))
            after[rel] = (size, mtime_ns)
    finally:
        os.close(src_root)
        if into_fd is not None:
            os.close(into_fd)
    return Collection(tuple(files), after, dropped)


def _walk(root: Path) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every regular file below `root`, sorted; links and
    special files skipped, names that are not UTF-8 skipped (not addressable in JSON)."""
    out: list[tuple[str, int, int]] = []
    top = os.open(root, _DIR)
    stack: list[tuple[int, str, int]] = [(top, "", 0)]
    try:
        while stack:
            fd, prefix, depth = stack.pop()
            try:
                with os.scandir(fd) as it:
                    entries = sorted(it, key=lambda e: e.name)
                for e in entries:
                    try:
                        e.name.encode("utf-8")
                        st = e.stat(follow_symlinks=False)
                    except (UnicodeEncodeError, FileNotFoundError):
                        continue
                    rel = f"{prefix}{e.name}"
                    if stat.S_ISREG(st.st_mode):
                        out.append((rel, st.st_size, st.st_mtime_ns))
                    elif stat.S_ISDIR(st.st_mode) and depth < _MAX_DEPTH:
                        try:
                            child = os.open(e.name, _DIR, dir_fd=fd)
                        except OSError:  # replaced by a link (or removed) since scandir
                            continue
                        stack.append((child, rel + "/", depth + 1))
            finally:
                os.close(fd)
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    out.sort()
    return out


def _open_dir(root_fd: int, parts: list[str], *, create: bool) -> int:
    fd = os.dup(root_fd)
    try:
        for part in parts:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o700, dir_fd=fd)
            child = os.open(part, _DIR, dir_fd=fd)
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _copy(src_root: int, dst_root: int, rel: str, size: int) -> int | None:
    """Copy at most `size` bytes of the regular file `rel`; the bytes kept, or None if it is
    no longer a regular file there (a link or FIFO swapped in is never opened or followed)."""
    parts = rel.split("/")
    try:
        src_dir = _open_dir(src_root, parts[:-1], create=False)
    except OSError:
        return None
    try:
        try:
            before = os.stat(parts[-1], dir_fd=src_dir, follow_symlinks=False)
            if not stat.S_ISREG(before.st_mode):
                return None
            src = os.open(parts[-1], _READ, dir_fd=src_dir)
        except OSError:
            return None
    finally:
        os.close(src_dir)
    try:
        st = os.fstat(src)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            return None
        os.set_blocking(src, True)
        dst_dir = _open_dir(dst_root, parts[:-1], create=True)
        try:
            tmp = f".{parts[-1][:200]}.{random_token(8)}.part"
            dst = os.open(tmp, _WRITE, 0o600, dir_fd=dst_dir)
            try:
                kept = _pump(src, dst, min(size, st.st_size))
            finally:
                os.close(dst)
            os.replace(tmp, parts[-1], src_dir_fd=dst_dir, dst_dir_fd=dst_dir)  # a changed file: the new copy
            return kept
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dst_dir)
            raise
        finally:
            os.close(dst_dir)
    finally:
        os.close(src)


def _pump(src: int, dst: int, limit: int) -> int:
    done = 0
    while done < limit:
        try:
            n = os.copy_file_range(src, dst, min(_CHUNK, limit - done))
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
                raise
            n = _pump_rw(src, dst, min(_CHUNK, limit - done))
        if n == 0:  # shrank meanwhile
            break
        done += n
    return done


def _pump_rw(src: int, dst: int, count: int) -> int:
    data = os.read(src, count)
    view = memoryview(data)
    while view:
        view = view[os.write(dst, view):]
    return len(data)
