"""A btrfs filesystem in a loop-mounted image: subvolumes with quotas and O(1) snapshots.

Measured here (reference/isolation-measurements.md §8): ext4 project quotas, XFS quotas and
tmpfs quotas are compiled out of this kernel; btrfs qgroups work. Snapshots make a thread's
state transactional: an execution works on a snapshot, and the snapshot replaces the thread's
state in one atomic `renameat2(RENAME_EXCHANGE)` only when the execution ends normally.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import shutil
import subprocess
import threading
from pathlib import Path

from ..errors import SandboxSetupError

#: The admin tools run with this PATH and nothing else of the server's environment.
TOOLS_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_SYS_RENAMEAT2 = 316  # x86_64; aarch64 uses 276
_libc = ctypes.CDLL(None, use_errno=True)

# Snapshot and delete are ioctls on the parent directory (linux/btrfs.h): a thread's execution
# takes one of each, and the ioctl is 2.5 ms where `btrfs subvolume snapshot` is 4.3 ms.
_IOC_SNAP_CREATE_V2 = 0x50009417  # _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2)
_IOC_SNAP_DESTROY = 0x5000940F  # _IOW(0x94, 15, struct btrfs_ioctl_vol_args)
_ARGS_SIZE = 4096
_V2_NAME_OFFSET = 56  # after fd, transid, flags and the 32-byte union
_NAME_OFFSET = 8  # after fd
_NAME_MAX = 255


def _renameat2_number() -> int:
    return 276 if os.uname().machine in ("aarch64", "arm64") else _SYS_RENAMEAT2


def _run(*argv: str, step: str) -> str:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=120, check=False, env={"PATH": TOOLS_PATH}
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SandboxSetupError(step, f"{argv[0]}: {exc}") from exc
    if done.returncode != 0:
        raise SandboxSetupError(step, f"{' '.join(argv[:3])}: {done.stderr.strip()[:300]}")
    return done.stdout


def available() -> bool:
    return all(shutil.which(tool, path=TOOLS_PATH) for tool in ("mkfs.btrfs", "btrfs", "mount", "umount"))


def is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if line.split()[4] == target:
            return True
    return False


class Btrfs:
    """One image file, mounted at `mount_point`; every path below is inside that mount."""

    def __init__(self, image: Path, mount_point: Path, size_gib: int) -> None:
        self.image = image
        self.root = mount_point
        self.size_gib = size_gib
        self._mounting = threading.Lock()
        #: Our shared lock on `<mount point>.users` while this process uses the mount.
        self._user_fd: int | None = None

    def mount(self) -> None:
        """Create (sparse) and format the image on first use, mount it, enable quotas.

        Requests call this from worker threads: the first ones may arrive together, and only
        one may create, format and mount (a second `mount` of the image fails "busy").
        The server and `sandboxd run` on one data dir share the mount: each user holds a shared
        flock on `<mount point>.users` (dropped by the kernel if it dies), and only the last
        one unmounts (`unmount`).
        """
        with self._mounting:
            if self._user_fd is None:
                self._user_fd = self._lock_users(fcntl.LOCK_SH)
            if not is_mounted(self.root):
                self._mount()

    def _lock_users(self, how: int) -> int:
        """Lock the users file (blocking: a last user may be unmounting); the file is removed
        by the last user, so retry until the locked file is the one at the path."""
        users = self.root.with_name(self.root.name + ".users")
        users.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(users, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, how)
            try:
                if os.stat(users).st_ino == os.fstat(fd).st_ino:
                    return fd
            except FileNotFoundError:
                pass
            os.close(fd)

    def _mount(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for path in (self.root, *self.root.parents[:2]):  # e.g. /run/sandboxd/<instance>/storage
            os.chmod(path, 0o711)
        if not self.image.exists():
            with open(self.image, "wb") as f:
                f.truncate(self.size_gib * 1024**3)
            _run("mkfs.btrfs", "-q", str(self.image), step="thread storage mkfs")
        _run("mount", "-o", "loop,noatime", str(self.image), str(self.root), step="thread storage mount")
        _run("btrfs", "quota", "enable", str(self.root), step="thread storage quotas")

    def unmount(self) -> None:
        """Unmount, unless another live process still uses the mount (then it stays theirs)."""
        with self._mounting:
            fd, self._user_fd = self._user_fd, None
            if fd is None:
                if not is_mounted(self.root):
                    return
                fd = self._lock_users(fcntl.LOCK_SH)
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return  # e.g. `sandboxd run` ends beside a live server: the server keeps it
                if is_mounted(self.root):
                    _run("umount", str(self.root), step="thread storage unmount")
                os.unlink(self.root.with_name(self.root.name + ".users"))
                with contextlib.suppress(OSError):
                    self.root.rmdir()
                    self.root.parent.rmdir()
            finally:
                os.close(fd)

    def create(self, path: Path, limit_bytes: int) -> None:
        _run("btrfs", "subvolume", "create", str(path), step="subvolume create")
        self.limit(path, limit_bytes)

    def snapshot(self, source: Path, dest: Path) -> None:
        """A writable snapshot; it keeps the source's quota limit."""
        src = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            args = bytearray(_ARGS_SIZE)
            args[0:8] = src.to_bytes(8, "little", signed=True)
            _ioctl_on_parent(dest, _IOC_SNAP_CREATE_V2, args, _V2_NAME_OFFSET, step="subvolume snapshot")
        finally:
            os.close(src)

    def limit(self, path: Path, limit_bytes: int) -> None:
        _run("btrfs", "qgroup", "limit", str(limit_bytes), str(path), step="subvolume quota")

    def delete(self, path: Path) -> None:
        if path.exists():
            _ioctl_on_parent(path, _IOC_SNAP_DESTROY, bytearray(_ARGS_SIZE), _NAME_OFFSET, step="subvolume delete")

    def exchange(self, a: Path, b: Path) -> None:
        """Swap two paths atomically: a crash leaves either the old or the new state."""
        rc = _libc.syscall(_renameat2_number(), _AT_FDCWD, str(a).encode(), _AT_FDCWD, str(b).encode(), _RENAME_EXCHANGE)
        if rc != 0:
            err = ctypes.get_errno()
            raise SandboxSetupError("subvolume switch", f"renameat2({a}, {b}): {os.strerror(err)}")

    def referenced_bytes(self, path: Path) -> int:
        """Bytes the subvolume references (its quota usage)."""
        out = _run("btrfs", "qgroup", "show", "-rf", "--raw", "--sync", str(path), step="subvolume usage")
        for line in out.splitlines():
            parts = line.split()
            if parts and parts[0].startswith("0/"):
                return int(parts[1])
        return 0


def _ioctl_on_parent(path: Path, request: int, args: bytearray, name_at: int, *, step: str) -> None:
    """Run a subvolume ioctl on `path`'s parent directory, naming `path` in `args`."""
    name = path.name.encode()
    if not name or len(name) > _NAME_MAX or name in (b".", b".."):
        raise SandboxSetupError(step, f"bad subvolume name {path.name!r}")
    args[name_at : name_at + len(name)] = name
    parent = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.ioctl(parent, request, args)
    except OSError as exc:
        raise SandboxSetupError(step, f"{path}: {exc.strerror}") from exc
    finally:
        os.close(parent)
