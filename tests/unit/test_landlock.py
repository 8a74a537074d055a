"""Landlock detection: the ABI version the kernel reports, checked against a real ruleset."""

from __future__ import annotations

import ctypes
import errno
import os

from sandboxd.runtime import landlock

LANDLOCK_ACCESS_FS_EXECUTE = 1


def create_ruleset() -> int:
    """landlock_create_ruleset(&{handled_access_fs: EXECUTE}, sizeof, 0): an fd, or -errno."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    attr = ctypes.c_uint64(LANDLOCK_ACCESS_FS_EXECUTE)
    fd = libc.syscall(ctypes.c_long(444), ctypes.byref(attr), ctypes.c_size_t(8), ctypes.c_uint32(0))
    return int(fd) if fd >= 0 else -ctypes.get_errno()


def test_abi_version_matches_what_the_kernel_does() -> None:
    abi = landlock.abi_version()
    fd = create_ruleset()
    if abi == 0:
        assert fd in (-errno.ENOSYS, -errno.EOPNOTSUPP)  # no Landlock: no ruleset either
    else:
        assert fd >= 0, f"ABI {abi} reported, but a ruleset could not be created: {fd}"
        os.close(fd)
        assert 1 <= abi < 100
