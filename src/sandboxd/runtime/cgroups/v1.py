"""cgroup v1: one directory per controller hierarchy (memory+memsw, pids, cpu, cpuacct, freezer).

These machines have controllers only on v1 (reference/isolation-measurements.md §0.1).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from pathlib import Path

from ...errors import SandboxSetupError
from ..spec import Limits
from ..keeper import sweep
from .base import (
    CgroupStats,
    Leftovers,
    cgroup_mounts,
    own_paths,
    read_int,
    read_keyed,
    read_pids,
    write,
)

log = logging.getLogger("sandboxd.runtime")

CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
_CFS_PERIOD_US = 100_000


def hierarchies() -> dict[str, Path]:
    """Mount point of each needed controller (cpu and cpuacct may share one)."""
    found: dict[str, Path] = {}
    for mount_point, fstype, opts in cgroup_mounts():
        if fstype != "cgroup":
            continue
        for c in CONTROLLERS:
            if c in opts:
                found[c] = Path(mount_point)
    return found


class CgroupV1Group:
    def __init__(self, dirs: dict[str, Path], leftovers: Leftovers | None = None) -> None:
        self._dirs = dirs
        self._leftovers = leftovers or Leftovers()
        unique = dict.fromkeys(dirs.values())
        self._unique_dirs = tuple(unique)
        self.procs_files = tuple(str(d / "cgroup.procs") for d in self._unique_dirs)

    def oom_killed(self) -> bool:
        return read_keyed(self._dirs["memory"] / "memory.oom_control").get("oom_kill", 0) > 0

    def pids(self) -> set[int]:
        return read_pids(self._dirs["pids"] / "cgroup.procs")

    def kill_all(self) -> None:
        """Freeze, SIGKILL every member, thaw; repeat until empty. Forks cannot outrun it."""
        freezer = self._dirs["freezer"] / "freezer.state"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = {pid for d in self._unique_dirs for pid in read_pids(d / "cgroup.procs")}
            if not pids:
                return
            _try_write(freezer, "FROZEN")
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            _try_write(freezer, "THAWED")
            time.sleep(0.001)
        raise SandboxSetupError("cgroup kill", f"processes survive in {self._dirs['pids']}")

    def freeze(self, frozen: bool) -> None:
        write(self._dirs["freezer"] / "freezer.state", "FROZEN" if frozen else "THAWED", step="cgroup freeze")

    def remove(self) -> None:
        self._leftovers.remove(self._unique_dirs)

    def stats(self) -> CgroupStats:
        return CgroupStats(
            cpu_ms=read_int(self._dirs["cpuacct"] / "cpuacct.usage") // 1_000_000,
            memory_peak_bytes=read_int(self._dirs["memory"] / "memory.max_usage_in_bytes"),
        )


def _try_write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError:
        pass


class CgroupV1Driver:
    version = 1

    def __init__(self, instance: str, mounts: dict[str, Path] | None = None) -> None:
        mounts = mounts if mounts is not None else hierarchies()
        missing = [c for c in CONTROLLERS if c not in mounts]
        if missing:
            raise SandboxSetupError("cgroup v1", f"controllers not mounted: {', '.join(missing)}")
        own = own_paths()
        self._parents = {
            c: mounts[c] / own.get(c, "/").lstrip("/") / "sandboxd" / instance for c in CONTROLLERS
        }
        self.parents = tuple(dict.fromkeys(self._parents.values()))
        self._leftovers = Leftovers()

    def prepare(self) -> None:
        for c, parent in self._parents.items():
            try:
                parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise SandboxSetupError("cgroup v1", f"cannot create {parent}: {exc}") from exc
        # Sweep what the last run of this instance left (its lease is ours now: runtime/lease.py),
        # in every hierarchy: kill its processes, remove its groups.
        for d in sweep(self.parents, keep_parents=True):
            log.error("cgroup %s left by the last run could not be removed", d)

    def release(self) -> None:
        self._leftovers.release()
        for parent in self.parents:
            with contextlib.suppress(OSError):  # a group still in it: it stays
                parent.rmdir()

    def create(self, name: str, limits: Limits) -> CgroupV1Group:
        self._leftovers.retry()
        dirs = {c: parent / name for c, parent in self._parents.items()}
        try:
            for d in dict.fromkeys(dirs.values()):
                d.mkdir()
        except OSError as exc:
            raise SandboxSetupError("cgroup v1", f"cannot create {name}: {exc}") from exc
        group = CgroupV1Group(dirs, self._leftovers)
        try:
            mem = str(limits.memory_mib * 1024 * 1024)
            write(dirs["memory"] / "memory.limit_in_bytes", mem, step="cgroup memory limit")
            memsw = dirs["memory"] / "memory.memsw.limit_in_bytes"
            if memsw.exists():  # no swap accounting: the plain limit is the whole limit
                write(memsw, mem, step="cgroup memory+swap limit")
            write(dirs["pids"] / "pids.max", str(limits.pids_max), step="cgroup pids limit")
            quota = max(1000, int(limits.cpus * _CFS_PERIOD_US))
            write(dirs["cpu"] / "cpu.cfs_period_us", str(_CFS_PERIOD_US), step="cgroup cpu period")
            write(dirs["cpu"] / "cpu.cfs_quota_us", str(quota), step="cgroup cpu quota")
        except SandboxSetupError:
            group.remove()
            raise
        return group
