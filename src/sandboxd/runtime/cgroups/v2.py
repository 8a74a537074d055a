"""cgroup v2: one unified directory per execution (memory, pids, cpu; cgroup.kill to end it).

The server's own cgroup may hold processes, and v2 forbids enabling controllers for children
of a group that has members ("no internal processes"), so the server first moves itself into
a leaf `<own>/sandboxd-server`, as systemd's delegation guide describes.
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
from .base import CgroupStats, Leftovers, own_paths, read_keyed, read_pids, write

log = logging.getLogger("sandboxd.runtime")

CONTROLLERS = ("memory", "pids", "cpu")
_CFS_PERIOD_US = 100_000


class CgroupV2Group:
    def __init__(self, path: Path, leftovers: Leftovers | None = None) -> None:
        self._path = path
        self._leftovers = leftovers or Leftovers()
        self.procs_files: tuple[str, ...] = (str(path / "cgroup.procs"),)

    def oom_killed(self) -> bool:
        return read_keyed(self._path / "memory.events").get("oom_kill", 0) > 0

    def pids(self) -> set[int]:
        return read_pids(self._path / "cgroup.procs")

    def kill_all(self) -> None:
        kill_file = self._path / "cgroup.kill"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            pids = self.pids()
            if not pids:
                return
            if kill_file.exists():
                kill_file.write_text("1")
            else:
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
            time.sleep(0.001)
        raise SandboxSetupError("cgroup kill", f"processes survive in {self._path}")

    def freeze(self, frozen: bool) -> None:
        write(self._path / "cgroup.freeze", "1" if frozen else "0", step="cgroup freeze")

    def remove(self) -> None:
        self._leftovers.remove([self._path])

    def stats(self) -> CgroupStats:
        cpu = read_keyed(self._path / "cpu.stat").get("usage_usec", 0)
        peak_file = self._path / "memory.peak"
        peak = int(peak_file.read_text()) if peak_file.exists() else 0
        return CgroupStats(cpu_ms=cpu // 1000, memory_peak_bytes=peak)


class CgroupV2Driver:
    version = 2

    def __init__(self, instance: str, root: Path = Path("/sys/fs/cgroup")) -> None:
        self._root = root
        own = own_paths().get("", "/") if root == Path("/sys/fs/cgroup") else "/"
        self._own = root / own.lstrip("/")
        self._parent = self._own / f"sandboxd-{instance}"
        self.parents: tuple[Path, ...] = (self._parent,)
        self._leftovers = Leftovers()

    def _enable(self, group: Path) -> None:
        write(group / "cgroup.subtree_control", " ".join(f"+{c}" for c in CONTROLLERS),
              step="cgroup v2 subtree_control")

    def prepare(self) -> None:
        available = set((self._own / "cgroup.controllers").read_text().split())
        missing = [c for c in CONTROLLERS if c not in available]
        if missing:
            raise SandboxSetupError("cgroup v2", f"controllers not delegated: {', '.join(missing)}")
        if read_pids(self._own / "cgroup.procs") and self._own != self._root:
            leaf = self._own / "sandboxd-server"
            leaf.mkdir(exist_ok=True)
            write(leaf / "cgroup.procs", str(os.getpid()), step="cgroup v2 server leaf")
        self._enable(self._own)
        self._parent.mkdir(exist_ok=True)
        self._enable(self._parent)
        # What the last run of this instance left (its lease is ours now: runtime/lease.py).
        for d in sweep(self.parents, keep_parents=True):
            log.error("cgroup %s left by the last run could not be removed", d)

    def release(self) -> None:
        self._leftovers.release()
        with contextlib.suppress(OSError):  # a group still in it: it stays
            self._parent.rmdir()

    def create(self, name: str, limits: Limits) -> CgroupV2Group:
        self._leftovers.retry()
        path = self._parent / name
        try:
            path.mkdir()
        except OSError as exc:
            raise SandboxSetupError("cgroup v2", f"cannot create {path}: {exc}") from exc
        group = CgroupV2Group(path, self._leftovers)
        try:
            write(path / "memory.max", str(limits.memory_mib * 1024 * 1024), step="cgroup memory.max")
            swap = path / "memory.swap.max"
            if swap.exists():
                write(swap, "0", step="cgroup memory.swap.max")
            write(path / "pids.max", str(limits.pids_max), step="cgroup pids.max")
            quota = max(1000, int(limits.cpus * _CFS_PERIOD_US))
            write(path / "cpu.max", f"{quota} {_CFS_PERIOD_US}", step="cgroup cpu.max")
        except SandboxSetupError:
            group.remove()
            raise
        return group
