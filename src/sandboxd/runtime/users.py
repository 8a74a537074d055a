"""Unprivileged host uids for sandboxes: one per concurrent execution, never root.

bwrap is started as this uid, so the sandbox's uid 1000 maps to it and not to host root
(with `--unshare-user` as root, the sandbox user *would* be host root:
reference/isolation-measurements.md §8).
"""

from __future__ import annotations

from ..errors import SandboxSetupError


class UidPool:
    def __init__(self, base: int, size: int) -> None:
        if base < 1000:
            raise ValueError("sandbox uids must be unprivileged (>= 1000)")
        self._free = list(range(base + size - 1, base - 1, -1))
        self._used: set[int] = set()

    def acquire(self) -> int:
        if not self._free:
            raise SandboxSetupError("uid pool", "no free sandbox uid")
        uid = self._free.pop()
        self._used.add(uid)
        return uid

    def release(self, uid: int) -> None:
        if uid in self._used:
            self._used.remove(uid)
            self._free.append(uid)

    @property
    def in_use(self) -> int:
        return len(self._used)
