"""The interface both cgroup versions implement."""

from __future__ import annotations

import errno
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ...errors import SandboxSetupError
from ..keeper import sweep
from ..spec import Limits

log = logging.getLogger("sandboxd.runtime")


@dataclass(frozen=True)
class CgroupStats:
    cpu_ms: int
    memory_peak_bytes: int


class Cgroup(Protocol):
    """One execution's cgroup (a directory per v1 hierarchy, or one v2 directory)."""

    #: The `cgroup.procs` files the launcher writes its own pid into before exec.
    procs_files: tuple[str, ...]

    def oom_killed(self) -> bool: ...
    def pids(self) -> set[int]: ...
    def kill_all(self) -> None: ...
    def freeze(self, frozen: bool) -> None:
        """Stop (or resume) every process of it: a persistent session between its runs."""
    def remove(self) -> None: ...
    def stats(self) -> CgroupStats: ...


class CgroupDriver(Protocol):
    version: int
    #: This instance's parent group(s): one per v1 hierarchy, or one v2 directory.
    parents: tuple[Path, ...]

    def prepare(self) -> None:
        """Create this instance's parent group and sweep groups left by a crashed run."""

    def create(self, name: str, limits: Limits) -> Cgroup: ...

    def release(self) -> None:
        """Remove this instance's parent group, and groups whose removal failed before (the
        server stops); what still cannot be removed is logged."""


def write(path: Path, value: str, *, step: str) -> None:
    try:
        path.write_text(value)
    except OSError as exc:
        raise SandboxSetupError(step, f"cannot write {value!r} to {path}: {exc.strerror}") from exc


def read_int(path: Path, default: int = 0) -> int:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return default


def read_keyed(path: Path) -> dict[str, int]:
    """Parse `key value` lines (memory.oom_control, memory.events, cpu.stat)."""
    out: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            try:
                out[key] = int(value)
            except ValueError:
                continue
    except OSError:
        pass
    return out


def read_pids(procs: Path) -> set[int]:
    try:
        return {int(p) for p in procs.read_text().split()}
    except (OSError, ValueError):
        return set()


def rmdir_retrying(path: Path, attempts: int = 200) -> None:
    """rmdir a just-emptied cgroup; the kernel answers EBUSY briefly (measured ~0.35 ms)."""
    for _ in range(attempts):
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            time.sleep(0.0002)
    os.rmdir(path)


class Leftovers:
    """Execution groups whose removal failed (a dying process can keep one hierarchy's copy busy
    past `rmdir_retrying`): logged, retried at the next create and at release, never dropped."""

    def __init__(self) -> None:
        self._paths: set[Path] = set()

    def remove(self, dirs: Iterable[Path]) -> None:
        for d in dirs:  # every hierarchy, even after one failed
            try:
                rmdir_retrying(d)
            except OSError as exc:
                log.warning("cgroup %s not removed yet (%s): retried later", d, exc.strerror)
                self._paths.add(d)

    def retry(self, timeout_s: float = 0.0) -> list[Path]:
        """Kill what is left in them and remove them; returns the ones still there."""
        if not self._paths:
            return []
        left = sweep(sorted(self._paths), timeout_s=timeout_s)
        self._paths = set(left)
        return left

    def release(self) -> None:
        for d in self.retry(timeout_s=5.0):
            log.error("cgroup %s could not be removed: the next start of this instance sweeps it", d)


def own_paths() -> dict[str, str]:
    """This process's cgroup path per v1 controller, and under key '' the v2 path."""
    out: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for c in controllers.split(",") if controllers else [""]:
            out[c] = path
    return out


def cgroup_mounts() -> list[tuple[str, str, set[str]]]:
    """(mount point, fs type, super options) of every cgroup mount, from mountinfo."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = right.split()
        if len(fields) < 3 or fields[0] not in ("cgroup", "cgroup2"):
            continue
        mount_point = left.split()[4]
        mounts.append((mount_point, fields[0], set(fields[2].split(","))))
    return mounts
