"""The sandbox runtime: runs code in bubblewrap with seccomp, cgroups and rlimits.

Knows nothing of HTTP, keys or the database. Layers, one module each:
`bwrap` (namespaces, mounts, environment), `seccomp` (syscall filter), `cgroups` (memory,
cpu, pids), `rlimits`, `users` (host uids), `launch` (privilege drop), `runner` (lifecycle),
`pool` and `warm` (pre-spawned sandboxes), `homeslot` (a thread's home mounted at use time).
"""

from __future__ import annotations

import hashlib

from .cgroups import detect as detect_cgroups
from .languages import INTERPRETERS, available_languages
from .runner import BwrapRunner
from .seccomp import compile_bpf
from .selfcheck import check_prerequisites, check_sandbox
from .spec import ExecResult, ExecStatus, Language, Limits, Mount, OutputSink, SandboxSpec, Stream
from .users import UidPool

__all__ = [
    "INTERPRETERS",
    "BwrapRunner",
    "ExecResult",
    "ExecStatus",
    "Language",
    "Limits",
    "Mount",
    "OutputSink",
    "SandboxSpec",
    "Stream",
    "available_languages",
    "check_sandbox",
    "create_runner",
]


def create_runner(*, instance_key: str, uid_base: int, slots: int) -> BwrapRunner:
    """Check the host and build the runner; raises SandboxSetupError when it cannot isolate.

    `instance_key` (e.g. the data dir) separates the cgroups of servers sharing a machine.
    """
    bwrap = check_prerequisites()
    instance = hashlib.sha256(instance_key.encode()).hexdigest()[:12]
    cgroups = detect_cgroups(instance)
    cgroups.prepare()
    return BwrapRunner(
        cgroups=cgroups,
        uids=UidPool(uid_base, slots),
        seccomp_bpf=compile_bpf(),
        bwrap_path=bwrap,
    )
