"""Reap what a sandbox leaves behind on the host: the server is a child subreaper.

bwrap's outer process can exit before the sandbox's pid 1 (bwrap's init) is reaped, and that
process is then reparented. Under an ordinary init this is harmless, but when sandboxd itself
is pid 1 (a container without an init) nobody would reap it, and the zombies would count
against the sandbox uid's process limit until executions fail. As a subreaper the orphans
come to us. Each concurrent execution has its own host uid (a thread's next sandbox shares
its uid, and is passed as `live`), so after a run every other child of ours with that uid is
that run's orphan: we reap exactly those (by pid, never `waitpid(-1)`, which would steal
asyncio's own children).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import time
from collections.abc import Collection
from pathlib import Path

_PR_SET_CHILD_SUBREAPER = 36
_libc = ctypes.CDLL(None, use_errno=True)


def become_subreaper() -> None:
    if _libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


async def reap_orphans(
    uid: int, *, spawned: int, live: Collection[int] = (), timeout_s: float = 5.0
) -> int:
    """Wait for and reap our adopted children running as `uid`; returns how many.

    `live` are the pids of other sandboxes' bwrap processes (ours, not adopted) that may run
    as the same uid: a thread's next sandbox can be starting while its last one is disposed of.
    """
    reaped = 0
    deadline = time.monotonic() + timeout_s
    while True:
        alive = False
        for pid in _children():
            if pid == spawned or pid in live:
                continue
            state = _state_if_owned_by(pid, uid)
            if state is None:
                continue
            if state == "Z":
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0] == pid:
                        reaped += 1
            else:
                alive = True  # dying (its cgroup was emptied): it will be a zombie shortly
        if not alive or time.monotonic() > deadline:
            return reaped
        await asyncio.sleep(0.002)


def _children() -> list[int]:
    pids: list[int] = []
    for task in Path("/proc/self/task").iterdir():
        with contextlib.suppress(OSError):
            pids += [int(p) for p in (task / "children").read_text().split()]
    return pids


def _state_if_owned_by(pid: int, uid: int) -> str | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    if int(fields.get("Uid", "-1 ").split()[0]) != uid:
        return None
    return fields.get("State", "").strip()[:1]
