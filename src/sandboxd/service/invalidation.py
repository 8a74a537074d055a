"""Principal-cache invalidation: how one process tells every process serving keys that what
they cached may no longer hold (a key was revoked, a volume binding changed).

Today's implementation is a file in the data dir, which the server and the CLI processes on
one host share. Servers on several hosts over one database need one they all see (e.g. a row
in the database); until then the cache's TTL bounds how long a stale principal lives there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Protocol


class Invalidation(Protocol):
    def bump(self) -> None:
        """Every cache under this signal starts empty at its next lookup."""

    def current(self) -> Hashable:
        """A token that changes at every `bump`, from any process; called at every lookup, so
        it must be cheap."""


class EpochFile:
    """The epoch is the file's mtime and inode: reading it costs one `stat`, no I/O."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def bump(self) -> None:
        fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, str(time.time_ns()).encode())
        finally:
            os.close(fd)

    def current(self) -> tuple[int, int]:
        try:
            st = os.stat(self._path)
        except FileNotFoundError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_ino)
