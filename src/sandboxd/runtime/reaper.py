"""Reap the sandbox's pid 1: the server is a child subreaper.

bwrap's outer process can exit before the sandbox's pid 1 (bwrap's init) is reaped; that
process is then reparented. Under an ordinary init this is harmless, but when sandboxd itself
is pid 1 (a container without an init) nobody would reap it, and the zombies would count
against the sandbox uid's process limit until executions fail. As a subreaper the orphan comes
to us, bwrap tells us its pid (`--info-fd`), and we wait for exactly that pid (never
`waitpid(-1)`, which would steal asyncio's own children).
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import time

_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> None:
    if _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def child_pid(info: bytes) -> int | None:
    """The sandbox's pid 1 as bwrap's `--info-fd` reports it (host pid namespace)."""
    try:
        pid = json.loads(info.decode() or "{}").get("child-pid")
    except (ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) and pid > 1 else None


async def reap(pid: int, timeout_s: float = 5.0) -> bool:
    """Wait until `pid` has come to us and exited, and reap it; False if it never did."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        except ChildProcessError:  # not reparented to us yet, or already gone
            if not os.path.exists(f"/proc/{pid}"):
                return True
        await asyncio.sleep(0.002)
    return False
