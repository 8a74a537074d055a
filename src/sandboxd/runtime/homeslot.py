"""A thread's home, attached to a sandbox that was started before the request came.

A pre-spawned sandbox for a thread cannot bind the thread's working copy when it starts: the
copy is a snapshot taken under the thread's lock at use time (so an upload or a delete made
through the files API in between is never missed). Instead the sandbox binds an empty *slot*
at /home/baponi, and the slot is a shared mount on the host. bubblewrap makes every mount
in the sandbox a slave of the host's (`MS_SLAVE|MS_REC`), so when the server later mounts
the working copy on the slot, the mount propagates into the sandbox, one way: nothing the
sandbox does (it cannot mount anyway) propagates back.

The working copy is attached as a detached clone (`open_tree`) whose flags are set before it
is attached (`mount_setattr`: nosuid and nodev added, as a cold run's `--bind` adds them),
because a remount after the fact would not reach the sandbox's copy.

    <root>/                 a private bind mount of itself: nothing below propagates up
    <root>/<token>/         one slot: a shared bind mount of itself, owned by the thread uid
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from pathlib import Path

from ..errors import SandboxSetupError
from ..ids import random_token
from .mountpoints import mounted, unmount_all

_libc = ctypes.CDLL(None, use_errno=True)

# The same numbers on every architecture (the unified syscall table since Linux 5.2/5.12).
_SYS_OPEN_TREE = 428
_SYS_MOVE_MOUNT = 429
_SYS_MOUNT_SETATTR = 442

_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000
_OPEN_TREE_CLONE = 1
_MOVE_MOUNT_F_EMPTY_PATH = 0x4
_MOUNT_ATTR_NOSUID = 0x2
_MOUNT_ATTR_NODEV = 0x4
_MS_BIND = 0x1000
_MS_PRIVATE = 1 << 18
_MS_SHARED = 1 << 20


class _MountAttr(ctypes.Structure):
    _fields_ = [
        ("attr_set", ctypes.c_uint64),
        ("attr_clr", ctypes.c_uint64),
        ("propagation", ctypes.c_uint64),
        ("userns_fd", ctypes.c_uint64),
    ]


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise SandboxSetupError("home slot", f"{what}: {os.strerror(err)}")
    return rc


def _mount(source: Path, target: Path, flags: int) -> None:
    _check(_libc.mount(str(source).encode(), str(target).encode(), None, flags, None), f"mount {target}")




class HomeSlots:
    def __init__(self, root: Path) -> None:
        self._root = root
        self._prepared = False

    def _prepare(self) -> None:
        if self._prepared:
            return
        self._root.mkdir(parents=True, exist_ok=True)
        for path in (self._root, *self._root.parents[:2]):  # e.g. /run/sandboxd/<instance>/homes
            os.chmod(path, 0o711)  # bwrap, as the thread's uid, must reach its slot
        if not mounted(self._root):
            _mount(self._root, self._root, _MS_BIND)
        _mount(Path("none"), self._root, _MS_PRIVATE)
        self._prepared = True

    def create(self, uid: int, gid: int) -> Path:
        """A new empty slot for one sandbox to bind at /home/baponi."""
        self._prepare()
        slot = self._root / random_token(12)
        slot.mkdir(mode=0o700)
        try:
            os.chown(slot, uid, gid)
            _mount(slot, slot, _MS_BIND)
            _mount(Path("none"), slot, _MS_SHARED)
        except BaseException:
            self.release(slot)
            raise
        return slot

    def attach(self, slot: Path, home: str) -> None:
        """Mount `home` on `slot`: it appears at /home/baponi in the sandbox bound to the slot."""
        fd = _check(
            _libc.syscall(_SYS_OPEN_TREE, _AT_FDCWD, home.encode(), _OPEN_TREE_CLONE | os.O_CLOEXEC),
            f"open_tree {home}",
        )
        try:
            attr = _MountAttr(attr_set=_MOUNT_ATTR_NOSUID | _MOUNT_ATTR_NODEV)
            _check(
                _libc.syscall(_SYS_MOUNT_SETATTR, fd, b"", _AT_EMPTY_PATH, ctypes.byref(attr), ctypes.sizeof(attr)),
                "mount_setattr",
            )
            _check(
                _libc.syscall(_SYS_MOVE_MOUNT, fd, b"", _AT_FDCWD, str(slot).encode(), _MOVE_MOUNT_F_EMPTY_PATH),
                f"move_mount {slot}",
            )
        finally:
            os.close(fd)

    def release(self, slot: Path) -> None:
        """Unmount the slot (and whatever is attached to it) and remove it."""
        unmount_all(slot)
        with contextlib.suppress(FileNotFoundError):
            slot.rmdir()

    def recover(self) -> int:
        """After a crash: release every slot a previous run of this server left."""
        if not self._root.is_dir():
            return 0
        stale = [p for p in self._root.iterdir() if p.is_dir()]
        for slot in stale:
            self.release(slot)
        return len(stale)

    def close(self) -> None:
        """Release every slot and the root's own mount (the server is stopping)."""
        self.recover()
        if self._root.is_dir():
            unmount_all(self._root)
            with contextlib.suppress(OSError):
                self._root.rmdir()
                self._root.parent.rmdir()  # the instance's run dir, if nothing else is there
        self._prepared = False
