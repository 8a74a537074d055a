"""Principals by key digest (and by key id, for signed file URLs), so an authenticated request
costs no database round trip.

Only a revocation or a change of a key's volume bindings can change what an active key may do:
a sandbox config or a volume cannot be deleted while an active key is bound to it, and configs
are not edited in place. Both bump the epoch file in the data dir (`KeyService.revoke`,
`bind_volume`, `unbind_volume`, from the server or from a CLI process); every lookup compares
the file's mtime with the one the cache was filled under (one `stat`, no I/O) and starts empty
when it moved. The TTL bounds how long an entry lives in any case, for a server whose
revocations happen where it cannot see the file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .keys import Principal


class PrincipalCache:
    def __init__(self, epoch_file: Path, ttl_s: float = 30.0, max_entries: int = 10_000) -> None:
        self._epoch_file = epoch_file
        self._ttl_s = ttl_s
        self._max = max_entries
        self._epoch = self._read_epoch()
        self._entries: dict[str, tuple[Principal, float]] = {}

    def get(self, digest: str) -> Principal | None:
        epoch = self._read_epoch()
        if epoch != self._epoch:
            self._entries.clear()
            self._epoch = epoch
            return None
        hit = self._entries.get(digest)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, digest: str, principal: Principal) -> None:
        if len(self._entries) >= self._max:
            self._entries.clear()
        self._entries[digest] = (principal, time.monotonic() + self._ttl_s)

    def invalidate(self) -> None:
        """Every server using this data dir drops its cached principals."""
        fd = os.open(self._epoch_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, str(time.time_ns()).encode())
        finally:
            os.close(fd)
        self._entries.clear()
        self._epoch = self._read_epoch()

    def _read_epoch(self) -> tuple[int, int]:
        try:
            st = os.stat(self._epoch_file)
        except FileNotFoundError:
            return (0, 0)
        return (st.st_mtime_ns, st.st_ino)
