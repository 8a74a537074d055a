"""Mount points the server keeps on the host for its sandboxes (home slots, outputs tmpfs):
the two questions both ask of the kernel, answered once."""

from __future__ import annotations

import ctypes
from pathlib import Path

_libc = ctypes.CDLL(None, use_errno=True)
_MNT_DETACH = 2


def mounted(path: Path) -> bool:
    """Something is mounted exactly at `path` (this process's mount namespace)."""
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def unmount_all(path: Path) -> None:
    """Detach every mount stacked on `path`."""
    while _libc.umount2(str(path).encode(), _MNT_DETACH) == 0:
        pass
