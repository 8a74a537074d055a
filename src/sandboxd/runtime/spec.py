"""What to run and within which limits: the runtime's input and output types."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Literal

from .languages import INTERPRETERS, Language
from .network.policy import Egress, NetworkDecision, NetworkPolicy
from .outputs import Collected

__all__ = [  # Language too: one of the runtime's types, declared with the language registry
    "DEFAULT_TIMEOUT_S",
    "ExecResult",
    "ExecStatus",
    "Language",
    "Limits",
    "Mount",
    "OutputSink",
    "RootImage",
    "SandboxSpec",
    "Stream",
]

Stream = Literal["stdout", "stderr"]

#: Called with each chunk of output as the program writes it (after the cap, nothing more).
OutputSink = Callable[[Stream, bytes], Awaitable[None]]


#: Wall-clock seconds when a request names no timeout (spec §3.2).
DEFAULT_TIMEOUT_S = 60


@dataclass(frozen=True)
class Limits:
    """One limits model. Units are in the names; defaults are safe.

    Each limit has one name everywhere: a server setting's (config.py, SANDBOXD_*) or a sandbox
    config's (cpus, memory_mib), and its default is the one here, which those defaults read.
    """

    cpus: float = 1.0
    memory_mib: int = 1024
    pids_max: int = 256
    timeout_s: float = float(DEFAULT_TIMEOUT_S)
    tmp_size_mib: int = 64
    workdir_size_mib: int = 256
    home_size_mib: int = 256
    file_size_mib: int = 256
    open_files_max: int = 1024
    output_limit_bytes: int = 1024 * 1024
    #: /data/outputs (runtime/outputs.py): its tmpfs's size (0: no /data/outputs), and the most
    #: files it holds and that are kept as artifacts from one run.
    outputs_size_mib: int = 64
    outputs_max_files: int = 1000


@dataclass(frozen=True)
class Mount:
    """A host directory shown inside the sandbox: a volume or a bucket at /data/<slug>, or one
    sub-directory of it (`sub_paths`).

    `source` is trusted (the server's own path); `sub` is below it and is not: a sandbox may
    have put links there, so the runtime opens it component by component without following
    any (runtime/beneath.py) and binds the descriptor, not the path."""

    source: str
    dest: str
    read_only: bool
    #: Below `source`: "a/b" ("" = `source` itself).
    sub: str = ""
    #: A warm sandbox may be started with it ahead of time: `source` never shows other content
    #: later (a bucket mount's own directory, dropped from the pool before it is unmounted).
    pooled: bool = False


@dataclass(frozen=True)
class RootImage:
    """The root filesystem a sandbox runs on: an image's read-only tree, or the host's /usr.

    Plain, hashable values (a pool key holds it): what the image is called, where its tree
    is on this node and what was found in it when it was imported.
    """

    name: str = "host"
    #: The manifest digest (`sha256:…`); None for `host`.
    digest: str | None = None
    #: The unpacked tree, bound read-only at `/`; None: the built-in `host` image (the host's
    #: /usr and a few files of its /etc).
    root: str | None = None
    #: Each language's interpreter as found on the image's PATH (e.g. a conda env's python).
    binaries: tuple[tuple[Language, str], ...] = ()
    #: The image config's `Env` (its PATH included), applied under the request's variables.
    env: tuple[tuple[str, str], ...] = ()

    def binary(self, language: Language) -> str:
        if self.root is None:
            return INTERPRETERS[language].binary
        return dict(self.binaries)[language]

    @property
    def languages(self) -> frozenset[Language]:
        return frozenset(lang for lang, _ in self.binaries)


HOST_IMAGE = RootImage()


@dataclass(frozen=True)
class SandboxSpec:
    """One execution, fully decided: the runner only carries it out."""

    language: Language
    code: bytes
    limits: Limits = field(default_factory=Limits)
    env: dict[str, str] = field(default_factory=dict)
    network: NetworkPolicy = field(default_factory=NetworkPolicy)
    #: Host directory bound read-write at /home/baponi (a thread's working copy); None: a
    #: fresh empty tmpfs.
    home: str | None = None
    #: The unprivileged host uid to run as (a thread's own); None: one from the runner's pool.
    host_uid: int | None = None
    #: The host gid to run as (the organization's, which owns its volumes); None: = the uid.
    host_gid: int | None = None
    mounts: tuple[Mount, ...] = ()
    image: RootImage = HOST_IMAGE
    #: The key's connectors as the network carries them out (brokered hosts, forwarded ports).
    egress: Egress = field(default_factory=Egress)
    #: Host directory the files left in /data/outputs are copied into after the run (the
    #: execution's artifacts); None: they are not kept. Applied at use time, not in a pool key.
    artifacts_dir: str | None = None


class ExecStatus(str, enum.Enum):
    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    OOM = "oom"
    CANCELLED = "cancelled"
    #: Killed by the seccomp filter (a syscall in its kill list, or a foreign syscall ABI).
    SECCOMP = "seccomp"
    #: The program failed after the network policy refused a connection it asked for.
    BLOCKED = "blocked"


@dataclass(frozen=True)
class ExecResult:
    status: ExecStatus
    exit_code: int
    stdout: bytes
    stderr: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    duration_ms: int
    #: Machine-readable result error (spec §3.4): None, "timeout", "memory_limit_exceeded", ...
    error: str | None = None
    #: Destinations the sandbox asked for and the policy's answers (allowlist and full modes).
    network: tuple[NetworkDecision, ...] = ()
    #: Files copied out of /data/outputs into `SandboxSpec.artifacts_dir`, and how many were
    #: left out by the caps (runtime/outputs.py).
    artifacts: tuple[Collected, ...] = ()
    artifacts_dropped: int = 0
    #: CPU time its processes used (cgroup cpuacct.usage / cpu.stat usage_usec), and the most
    #: memory they held (memory.max_usage_in_bytes / memory.peak); None: not measured.
    cpu_ms: int | None = None
    memory_peak_bytes: int | None = None

    @property
    def output_truncated(self) -> bool:
        return self.stdout_truncated or self.stderr_truncated
