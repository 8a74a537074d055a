"""Host-side probes for the security suite: what a sandbox leaves on (or can reach of) the host.

The suite's runner uses host uids 300000..300015, apart from the test servers (2000000...: conftest.uid_bases), so any
process with a uid in `UID_RANGE` on this machine belongs to this suite.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sandboxd.runtime import BwrapRunner

UID_BASE = 300_000
SLOTS = 16
#: Host uids a sandbox process of this suite can have (one past the pool: a stray uid is a leak too).
UID_RANGE = range(UID_BASE, UID_BASE + SLOTS + 1)
#: The uids of the runners this suite starts in child processes ("servers" it kills): a live
#: runner refuses a uid range another live one holds (runtime/lease.py).
CHILD_UID_BASE = 310_000
CHILD_UID_RANGE = range(CHILD_UID_BASE, CHILD_UID_BASE + SLOTS + 1)
#: The v1 controllers the runner puts every execution into.
CONTROLLERS = ("memory", "pids", "cpu", "cpuacct", "freezer")
NOBODY = 65534

#: Defaults for tests: a stuck test ends in 20 s instead of the product default of 60.
TEST_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class HostProc:
    pid: int
    uids: tuple[int, ...]
    state: str
    ppid: int
    name: str

    @property
    def zombie(self) -> bool:
        return self.state[:1] in ("Z", "X")


def read_status(pid: int | str) -> dict[str, str] | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            return {k: v.strip() for k, _, v in (line.partition(":") for line in f)}
    except (FileNotFoundError, ProcessLookupError):
        return None


def uid_procs(uids: range = UID_RANGE) -> list[HostProc]:
    """Every host process whose real, effective, saved or fs uid is in `uids` (zombies included)."""
    found = []
    with os.scandir("/proc") as entries:
        names = [e.name for e in entries if e.name.isdigit()]
    for name in names:
        st = read_status(name)
        if st is None or "Uid" not in st:
            continue
        ids = tuple(int(x) for x in st["Uid"].split())
        if any(u in uids for u in ids):
            found.append(
                HostProc(
                    int(name),
                    ids,
                    st.get("State", "?"),
                    int(st.get("PPid", "0")),
                    st.get("Name", "?"),
                )
            )
    return found


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def run_as_nobody(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run a host command as an ordinary unprivileged host user (no sandbox), for comparisons."""
    return subprocess.run(
        argv,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        check=False,
        **kwargs,
    )


class Host:
    """What one runner leaves on the host: processes by uid, cgroup directories, uid pool."""

    def __init__(self, runner: BwrapRunner, instance: str) -> None:
        self.runner = runner
        self.instance = instance
        self.parents = instance_parents(instance)

    def procs(self) -> list[HostProc]:
        return uid_procs()

    def groups(self) -> list[Path]:
        """Execution cgroup directories under this runner's instance parent, all controllers."""
        return sorted(
            d for p in self.parents.values() if p.is_dir() for d in p.iterdir() if d.is_dir()
        )

    def execution_groups(self, controller: str = "pids") -> list[Path]:
        parent = self.parents[controller]
        return sorted(d for d in parent.iterdir() if d.is_dir())

    @staticmethod
    def group_pids(group: Path) -> set[int]:
        try:
            return {int(p) for p in (group / "cgroup.procs").read_text().split()}
        except FileNotFoundError:
            return set()

    def outputs_left(self) -> tuple[list[str], list[str]]:
        """Mount points and directories of sandboxes' /data/outputs on the host."""
        outputs = self.runner.sandboxes.outputs
        if outputs is None or not outputs.root.is_dir():
            return [], []
        outputs.settle()  # the unmounts of disposed sandboxes, done on a thread
        prefix = str(outputs.root) + "/"
        with open("/proc/self/mountinfo") as f:
            mounts = [line.split()[4] for line in f if line.split()[4].startswith(prefix)]
        return mounts, sorted(p.name for p in outputs.root.iterdir())

    def uids_in_use(self) -> int:
        # The runner exposes no accessor; the pool's own `in_use` is the truth.
        return self.runner.sandboxes._uids.in_use

    async def assert_no_processes(
        self, *, live_grace: float = 3.0, zombie_grace: float = 15.0
    ) -> None:
        """No process with a sandbox uid may survive its execution.

        When the outer bwrap dies, the sandbox's pid 1 (bwrap's init) is reparented to the host
        init and stays a zombie until that init reaps it (1-2 s on these VMs), so zombies get a
        longer grace than live processes. A zombie that is never reaped still fails.
        """
        start = time.monotonic()
        while True:
            procs = self.procs()
            if not procs:
                return
            waited = time.monotonic() - start
            live = [p for p in procs if not p.zombie]
            if live and waited > live_grace:
                raise AssertionError(
                    f"live processes with sandbox host uids after {waited:.1f}s: {live}"
                )
            if waited > zombie_grace:
                raise AssertionError(f"processes with sandbox host uids never went away: {procs}")
            await asyncio.sleep(0.05)

    async def assert_clean(self, fds_before: int | None = None) -> None:
        """Nothing left behind: no processes, no cgroup directories, no /data/outputs tmpfs or
        its directory, uid pool empty, no fd leak."""
        assert self.groups() == [], "execution cgroup directories left behind"
        assert self.outputs_left() == ([], []), "/data/outputs mounts or directories left behind"
        assert self.uids_in_use() == 0, "sandbox uids not returned to the pool"
        await self.assert_no_processes()
        if fds_before is not None:
            # Pipe transports close on a later loop iteration than run() returns; give them a moment.
            deadline = time.monotonic() + 3
            while fd_count() != fds_before and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            assert fd_count() == fds_before, (
                f"fd leak in the server process: {fds_before} -> {fd_count()}: "
                f"{sorted(os.listdir('/proc/self/fd'))}"
            )


def instance_hash(instance_key: str) -> str:
    return hashlib.sha256(instance_key.encode()).hexdigest()[:12]


def instance_parents(instance: str) -> dict[str, Path]:
    """`/sys/fs/cgroup/<controller>/**/sandboxd/<instance>` for each controller (found, not derived)."""
    parents = {}
    for c in CONTROLLERS:
        found = list(Path("/sys/fs/cgroup", c).glob(f"**/sandboxd/{instance}"))
        assert len(found) == 1, f"{c}: expected one instance parent, found {found}"
        parents[c] = found[0]
    return parents


def remove_instance_parents(instance: str) -> None:
    for c in CONTROLLERS:
        for parent in Path("/sys/fs/cgroup", c).glob(f"**/sandboxd/{instance}"):
            with contextlib.suppress(OSError):
                for child in parent.iterdir():
                    if child.is_dir():
                        child.rmdir()
                parent.rmdir()
