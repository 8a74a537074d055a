"""A mount's directory, opened below its source without following a link.

A volume, or a bucket, is written by sandboxes: a directory named in `sub_paths` may have been
replaced by a symbolic link to `/etc`, or to another organization's volume. Handed to bwrap as
a path, the kernel would follow it, as host root's path walk, before the sandbox starts. So
each component is opened relative to its parent's descriptor with `O_NOFOLLOW`, a link or a
non-directory is refused, and bwrap binds the final descriptor (`--bind-fd`): what is bound is
what was checked, whatever is renamed in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

#: Lookups on a bucket's FUSE mount wait on rclone, maybe on the network: they run on threads
#: of their own, so a stalled bucket can neither block the event loop nor take every thread
#: of the loop's default executor (which the rest of the server shares).
_LOOKUPS = ThreadPoolExecutor(max_workers=8, thread_name_prefix="beneath")

_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NOT_A_DIR = (errno.ENOTDIR, errno.ELOOP)


class BeneathError(Exception):
    """The path is not a plain directory below the source; `reason` may be shown to the user
    (it quotes nothing but the path the user gave)."""

    def __init__(self, reason: str, *, missing: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.missing = missing


def open_beneath(source: str, sub: str, *, create: bool = False) -> int:
    """An `O_PATH` descriptor of the directory `source/sub`; missing directories made when
    `create` (mode 0770, and setgid where their parent is, so a volume's group carries on)."""
    fd = os.open(source, _DIR)
    try:
        for name in (part for part in sub.split("/") if part):
            if name in (".", ".."):
                raise BeneathError("must not contain '.' or '..'")
            try:
                child = os.open(name, _DIR, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise BeneathError("does not exist", missing=True) from None
                child = _make_dir(fd, name)
            except OSError as exc:
                if exc.errno in _NOT_A_DIR:
                    raise BeneathError("is not a directory (a file or a symbolic link is in the way)") from None
                raise
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


async def off_loop(fn: Callable[[], T]) -> T:
    """`fn` (opens below mounts) on the lookup threads."""
    return await asyncio.get_running_loop().run_in_executor(_LOOKUPS, fn)


def _make_dir(parent: int, name: str) -> int:
    with contextlib.suppress(FileExistsError):  # made in between: opened below like any other
        os.mkdir(name, 0o770, dir_fd=parent)
    try:
        child = os.open(name, _DIR, dir_fd=parent)
    except OSError as exc:
        if exc.errno in _NOT_A_DIR:
            raise BeneathError("is not a directory (a file or a symbolic link is in the way)") from None
        raise
    # The server's umask (077) narrowed the mode; a bucket's FUSE mount ignores modes.
    with contextlib.suppress(OSError):
        setgid = os.fstat(parent).st_mode & stat.S_ISGID
        fd = os.open(f"/proc/self/fd/{child}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fchmod(fd, 0o770 | setgid)
        finally:
            os.close(fd)
    return child
