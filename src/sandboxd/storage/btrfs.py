"""A btrfs filesystem in a loop-mounted image: subvolumes with quotas and O(1) snapshots.

Measured here (reference/isolation-measurements.md §8): ext4 project quotas, XFS quotas and
tmpfs quotas are compiled out of this kernel; btrfs qgroups work. Snapshots make a thread's
state transactional: an execution works on a snapshot, and the snapshot replaces the thread's
state in one atomic `renameat2(RENAME_EXCHANGE)` only when the execution ends normally.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import shutil
import subprocess
import struct
import threading
from pathlib import Path

from ..errors import SandboxSetupError
from .reclaim import Reclaimer

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
_IOC_INO_LOOKUP = 0xD0009412  # _IOWR(0x94, 18, struct btrfs_ioctl_ino_lookup_args)
_IOC_FS_INFO = 0x8400941F  # _IOR(0x94, 31, struct btrfs_ioctl_fs_info_args)
_IOC_SUBVOL_SETFLAGS = 0x4008941A  # _IOW(0x94, 26, __u64)
_SUBVOL_RDONLY = 1 << 1
_ARGS_SIZE = 4096
_V2_FLAGS_OFFSET = 16
_V2_INHERIT_OFFSET = 24  # the union's {u64 size; struct btrfs_qgroup_inherit *qgroup_inherit}
_V2_NAME_OFFSET = 56  # after fd, transid, flags and the 32-byte union
_NAME_OFFSET = 8  # after fd
_NAME_MAX = 255
_SUBVOL_QGROUP_INHERIT = 1 << 2
_FIRST_FREE_OBJECTID = 256
#: A level-1 qgroup id is (1 << 48) | n, written "1/n".
_LEVEL_SHIFT = 48
_IOC_SPACE_INFO = 0xC0109414  # _IOWR(0x94, 20, struct btrfs_ioctl_space_args)
_IOC_DEV_INFO = 0xD000941E  # _IOWR(0x94, 30, struct btrfs_ioctl_dev_info_args)
_SPACE_SLOTS = 16
_BLOCK_GROUP_DATA = 1
_GLOBAL_RESERVE = 1 << 49
_MIXED_UP_TO_GIB = 4
_USAGE_FILES = ("referenced", "rsv_data", "rsv_meta_pertrans", "rsv_meta_prealloc")


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


class StorageFull(SandboxSetupError):
    """The shared storage filesystem is full: an execution on a thread ends with this and the
    thread keeps its previous state. Reported as `thread_mount_error`."""

    code = "thread_mount_error"

    def __init__(self, detail: str) -> None:
        super().__init__("thread storage", detail)


def _mkfs_options(size_gib: int) -> tuple[str, ...]:
    """Metadata single, not DUP: a second copy in the same image file guards against nothing
    the host disk does not, and doubles the cost of every subvolume. Small images mix data and
    metadata in one kind of chunk (btrfs's advice below ~5 GiB): else data chunks take all the
    space and a snapshot fails with ENOSPC while most of the image is free."""
    return ("-m", "single", "-d", "single", *(("--mixed",) if size_gib <= _MIXED_UP_TO_GIB else ()))


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
        self.reclaimer = Reclaimer(mount_point)
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
            _run("mkfs.btrfs", "-q", *_mkfs_options(self.size_gib), str(self.image), step="thread storage mkfs")
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

    def create(self, path: Path, limit_bytes: int | None, group: int | None = None) -> None:
        """A new subvolume with its quota (if any), a member of 1/`group` if given."""
        inherit = ("-i", f"1/{group}") if group is not None else ()
        _run("btrfs", "subvolume", "create", *inherit, str(path), step="subvolume create")
        if limit_bytes is not None:
            self.limit(path, limit_bytes)

    def snapshot(self, source: Path, dest: Path, group: int | None = None) -> None:
        """A writable snapshot; it keeps the source's quota limit.

        With `group`, the snapshot's qgroup joins 1/`group` in the same ioctl (qgroup inherit):
        no moment where its writes escape the group's limit, and no rescan, since the source
        is a member of that group (the kernel's quick inherit keeps the numbers exact).
        """
        src = os.open(source, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            args = bytearray(_ARGS_SIZE)
            args[0:8] = src.to_bytes(8, "little", signed=True)
            inherit = None
            if group is not None:
                # struct btrfs_qgroup_inherit: flags, num_qgroups, num_ref_copies,
                # num_excl_copies, a 5-field limit (unset), then the qgroup ids.
                packed = struct.pack("<4Q5QQ", 0, 1, 0, 0, 0, 0, 0, 0, 0, (1 << _LEVEL_SHIFT) | group)
                inherit = ctypes.create_string_buffer(packed, len(packed))  # the exact size, no NUL
                args[_V2_FLAGS_OFFSET : _V2_FLAGS_OFFSET + 8] = _SUBVOL_QGROUP_INHERIT.to_bytes(8, "little")
                args[_V2_INHERIT_OFFSET : _V2_INHERIT_OFFSET + 16] = struct.pack(
                    "<QQ", ctypes.sizeof(inherit), ctypes.addressof(inherit)
                )
            _ioctl_on_parent(dest, _IOC_SNAP_CREATE_V2, args, _V2_NAME_OFFSET, step="subvolume snapshot")
        finally:
            os.close(src)

    def limit(self, path: Path, limit_bytes: int) -> None:
        _run("btrfs", "qgroup", "limit", str(limit_bytes), str(path), step="subvolume quota")

    def delete(self, path: Path) -> None:
        """Delete a subvolume; the reclaimer gives its space back (see reclaim.py)."""
        if path.exists():
            subvolume = self.subvolume_id(path)
            _ioctl_on_parent(path, _IOC_SNAP_DESTROY, bytearray(_ARGS_SIZE), _NAME_OFFSET, step="subvolume delete")
            self.reclaimer.dropped(subvolume)

    def subvolume_id(self, path: Path) -> int:
        """The id of the subvolume `path` is in (its level-0 qgroup is 0/id)."""
        args = bytearray(_ARGS_SIZE)
        args[8:16] = _FIRST_FREE_OBJECTID.to_bytes(8, "little")
        _ioctl_on(path, [(_IOC_INO_LOOKUP, args)], step="subvolume id")
        return int.from_bytes(args[0:8], "little")

    def group(self, group: int, limit_bytes: int) -> None:
        """Make sure the level-1 qgroup 1/`group` exists; a new one is limited to `limit_bytes`."""
        if (self._qgroups() / f"1_{group}").is_dir():
            return
        try:
            _run("btrfs", "qgroup", "create", f"1/{group}", str(self.root), step="org quota group")
        except SandboxSetupError:
            if not (self._qgroups() / f"1_{group}").is_dir():  # not made by a racing process
                raise
        self.group_limit(group, limit_bytes)

    def group_limit(self, group: int, limit_bytes: int) -> None:
        _run("btrfs", "qgroup", "limit", str(limit_bytes), f"1/{group}", str(self.root), step="org quota")

    def group_usage(self, group: int) -> tuple[int, int]:
        """(bytes used, limit in bytes; 0 = none) of 1/`group`: what its members reference as of
        the last commit plus what writes since have reserved (the sum the kernel checks)."""
        d = self._qgroups() / f"1_{group}"
        try:
            used = sum(int((d / f).read_text()) for f in _USAGE_FILES)
            return used, int((d / "max_referenced").read_text())
        except (OSError, ValueError) as exc:
            raise SandboxSetupError("org quota usage", f"qgroup 1/{group}: {exc}") from exc

    def members(self) -> dict[int, int]:
        """Level-0 qgroup id -> its level-1 parent, for the subvolumes that have one."""
        out = _run("btrfs", "qgroup", "show", "-p", "--raw", str(self.root), step="qgroup relations")
        parents: dict[int, int] = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[0].startswith("0/") and parts[3].startswith("1/"):
                parents[int(parts[0][2:])] = int(parts[3].split(",")[0][2:])
        return parents

    def assign(self, subvolume: int, group: int) -> None:
        """Add a subvolume made before org quotas to 1/`group`; `rescan` recounts afterwards."""
        _run("btrfs", "qgroup", "assign", "--no-rescan", f"0/{subvolume}", f"1/{group}", str(self.root),
             step="org quota assign")

    def rescan(self) -> None:
        _run("btrfs", "quota", "rescan", "-w", str(self.root), step="quota rescan")

    def free_bytes(self) -> int:
        """Bytes new data can still take: free space in data chunks plus unallocated space.
        (A write can still fail sooner when metadata cannot grow: `exchange` reports that.)

        Not statvfs: its f_bavail is 0 whenever btrfs's metadata cannot grow (most of the time
        on a small image) and its f_bfree counts space data can no longer get.
        """
        space = bytearray(struct.pack("<QQ", _SPACE_SLOTS, 0) + bytes(24 * _SPACE_SLOTS))
        device = bytearray(_ARGS_SIZE)
        device[0:8] = (1).to_bytes(8, "little")  # devid 1: the image is the only device
        _ioctl_on(self.root, [(_IOC_SPACE_INFO, space), (_IOC_DEV_INFO, device)], step="thread storage")
        count = struct.unpack_from("<Q", space, 8)[0]
        free = 0
        for i in range(min(count, _SPACE_SLOTS)):
            flags, total, used = struct.unpack_from("<3Q", space, 16 + 24 * i)
            if flags & _BLOCK_GROUP_DATA and not flags & _GLOBAL_RESERVE:
                free += total - used
        used_on_device, device_size = struct.unpack_from("<QQ", device, 24)
        return int(free + device_size - used_on_device)

    def _qgroups(self) -> Path:
        """This filesystem's qgroups in sysfs (/sys/fs/btrfs/<fsid>/qgroups/<level>_<id>/)."""
        args = bytearray(1024)
        _ioctl_on(self.root, [(_IOC_FS_INFO, args)], step="thread storage")
        fsid = args[16:32].hex()
        return Path("/sys/fs/btrfs") / f"{fsid[:8]}-{fsid[8:12]}-{fsid[12:16]}-{fsid[16:20]}-{fsid[20:]}" / "qgroups"

    def exchange(self, a: Path, b: Path) -> None:
        """Swap two paths atomically: a crash leaves either the old or the new state."""
        rc = _libc.syscall(_renameat2_number(), _AT_FDCWD, str(a).encode(), _AT_FDCWD, str(b).encode(), _RENAME_EXCHANGE)
        if rc != 0:
            err = ctypes.get_errno()
            if err == errno.ENOSPC:
                raise StorageFull("the storage filesystem is full: the run's changes to the thread were "
                                  "discarded and the thread keeps its previous state")
            raise SandboxSetupError("subvolume switch", f"renameat2({a}, {b}): {os.strerror(err)}")

    def set_read_only(self, path: Path) -> None:
        """Freeze a subvolume (an image's layer or root): not even root can write it then,
        and a snapshot of it starts writable."""
        _ioctl_on(path, [(_IOC_SUBVOL_SETFLAGS, bytearray(_SUBVOL_RDONLY.to_bytes(8, "little")))], step="image freeze")

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
    _ioctl_on(path.parent, [(request, args)], step=step, named=path)


def _ioctl_on(
    directory: Path, calls: list[tuple[int, bytearray]], *, step: str, named: Path | None = None
) -> None:
    """Run ioctls on `directory` in order; a failure names the step and the path (`named`, if
    the call is about a path other than the directory it runs on)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for request, args in calls:
            fcntl.ioctl(fd, request, args)
    except OSError as exc:
        raise SandboxSetupError(step, f"{named or directory}: {exc.strerror}") from exc
    finally:
        os.close(fd)
