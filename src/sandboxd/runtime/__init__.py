"""The sandbox runtime: runs code in bubblewrap with seccomp, cgroups and rlimits.

Knows nothing of HTTP, keys or the database. Layers, one module each:
`bwrap` (namespaces, mounts, environment), `seccomp` (syscall filter), `cgroups` (memory,
cpu, pids), `rlimits`, `users` (host uids), `launch` (privilege drop), `sandbox` (a live
sandbox: start, supervise, dispose), `runner` (the cold runner), `pooled` (the runner serving
from pre-spawned sandboxes), `pool` and `warm` (pre-spawned sandboxes), `homeslot` (a thread's
home mounted at use time),
`lease` (which process owns which cgroups and uids), `keeper` (no sandbox outlives its server),
`outputs` (/data/outputs, a size-capped tmpfs per sandbox, and copying it out as artifacts).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

from .cgroups import detect as detect_cgroups
from .keeper import Keeper
from .lease import Role, acquire
from .network import Brokered, Egress, Forward, Network
from .languages import DEFAULT_LANGUAGE, INTERPRETERS, LANGUAGES, available_languages, spoken
from .interface import Runner
from .pool import PoolSettings
from .pooled import PooledRunner
from .runner import BwrapRunner
from .outputs import Outputs
from .session import SessionRun, SessionSandbox, SessionStartFailed
from .seccomp import compile_bpf
from .selfcheck import check_prerequisites, check_sandbox
from .spec import (
    DEFAULT_TIMEOUT_S,
    HOST_IMAGE,
    ExecResult,
    ExecStatus,
    Language,
    Limits,
    Mount,
    OutputSink,
    RootImage,
    SandboxSpec,
    Stream,
)
from .users import UidPool

__all__ = [
    "SessionRun",
    "SessionSandbox",
    "SessionStartFailed",
    "DEFAULT_LANGUAGE",
    "DEFAULT_TIMEOUT_S",
    "HOST_IMAGE",
    "INTERPRETERS",
    "LANGUAGES",
    "Brokered",
    "BwrapRunner",
    "Egress",
    "ExecResult",
    "ExecStatus",
    "Language",
    "Limits",
    "Forward",
    "Mount",
    "Network",
    "OutputSink",
    "PoolSettings",
    "PooledRunner",
    "Role",
    "RootImage",
    "Runner",
    "SandboxSpec",
    "Stream",
    "available_languages",
    "check_sandbox",
    "create_runner",
    "spoken",
]


def create_runner(
    *,
    instance_key: str,
    uid_base: int,
    slots: int,
    role: Role = "server",
    thread_uids: range | None = None,
    listen: str | None = None,
    avoid: Sequence[range] = (),
    data_dir: str | None = None,
    network: Network | None = None,
    outputs_dir: Path | None = None,
) -> BwrapRunner:
    """Check the host, take this process's lease and build the runner; raises
    SandboxSetupError when it cannot isolate, or when the lease is refused (runtime/lease.py).

    `instance_key` (e.g. the data dir) names a server's cgroups; `run` and `doctor` get a
    cgroup parent of their own beside it, and a uid range clear of every live instance's.
    `data_dir` names the instance in messages (default: `instance_key`); `network` is the
    sandboxes' network (default: one without a CA, so no brokered connectors). `outputs_dir`
    holds the sandboxes' /data/outputs mounts (runtime/outputs.py; a server's role recovers what a
    crash left there); None: sandboxes have no /data/outputs.
    """
    bwrap = check_prerequisites()
    instance = hashlib.sha256(instance_key.encode()).hexdigest()[:12]
    name = instance if role == "server" else f"{instance}-{role}{os.getpid()}"
    cgroups = detect_cgroups(name)
    lease = acquire(
        name=name, role=role, data_dir=data_dir or instance_key, sandbox_uids=range(uid_base, uid_base + slots),
        cgroups=cgroups.parents, thread_uids=thread_uids, listen=listen, avoid=avoid,
    )
    outputs = Outputs(outputs_dir) if outputs_dir is not None else None
    try:
        cgroups.prepare()
        keeper = Keeper(cgroups.parents, lease.fd)
        if outputs is not None and role == "server":  # the lease is ours: what is there was left by a crash
            outputs.recover()
            outputs.recover_dead_siblings()
    except BaseException:
        lease.close()
        raise
    return BwrapRunner(
        cgroups=cgroups,
        uids=UidPool(lease.sandbox_uids.start, slots),
        seccomp_bpf=compile_bpf(),
        bwrap_path=bwrap,
        lease=lease,
        keeper=keeper,
        network=network,
        outputs=outputs,
    )
