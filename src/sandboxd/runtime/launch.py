"""The launcher: what runs in the forked child between fork() and exec(bwrap).

It runs as host root in a copy of the server process, so it only makes syscalls (no locks,
no allocation-heavy Python). The order is the security argument:

0. join the network namespace        needs root; only when the policy prepared one (allowlist,
                                     full); the handle is closed so the sandbox never holds it
1. join the execution's cgroups      needs root: the cgroup files belong to root
2. set rlimits                       inherited by bwrap and everything it starts
2b. give the sandbox its own pipes   fchown of the pipes only it reads or writes (a pool's or a
                                     session's request pipe, its signal pipe) to its ids, so a
                                     driver can reopen them through /proc/self/fd (node has no
                                     dup()); it already holds them: nothing more is reachable
3. drop to the sandbox's host ids    setgroups, setresgid, setresuid: no privilege after this;
                                     umask 002, so files in shared volumes stay group-writable
4. parent-death signal               after 3, because a credential change clears it
5. exec bwrap                        done by subprocess; bwrap builds the namespaces
"""

from __future__ import annotations

import ctypes
import os
import signal
from collections.abc import Callable, Sequence

from . import rlimits as _rlimits

_PR_SET_PDEATHSIG = 1
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def preexec(
    cgroup_procs: Sequence[str],
    uid: int,
    gid: int,
    limits: _rlimits.RlimitPlan,
    netns_fd: int | None = None,
    own_fds: Sequence[int] = (),
) -> Callable[[], None]:
    parent = os.getpid()
    files = tuple(cgroup_procs)

    def _in_child() -> None:
        if netns_fd is not None:  # 0.
            if _libc.setns(netns_fd, _CLONE_NEWNET) != 0:
                os._exit(126)
            os.close(netns_fd)
        pid = str(os.getpid()).encode()
        for path in files:  # 1. as root
            fd = os.open(path, os.O_WRONLY)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        _rlimits.apply(limits)  # 2.
        for fd in own_fds:  # 2b.
            os.fchown(fd, uid, gid)
        os.setgroups([])  # 3. privileges end here
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)
        os.umask(0o002)
        if _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:  # 4.
            os._exit(126)
        if os.getppid() != parent:  # the server died before step 4
            os._exit(126)

    return _in_child
