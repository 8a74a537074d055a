"""Leases: which process owns which host resources, so instances never reap each other's.

Every process that starts sandboxes (a server, `sandboxd run`, `sandboxd doctor`) holds a
lease: a file `/run/sandboxd/leases/<name>.json`, flock'ed for the life of the process (and of
its keeper, runtime/keeper.py). The file says what the process owns: its cgroup parents, its
sandbox host uids, a server's thread uids and address. The kernel drops the lock when its
holders die, so "is the owner alive?" is one non-blocking flock, never a pid that may have
been reused.

- A server's lease is named after its data dir: two servers on one data dir are refused, and a
  server's start sweeps what the last run of that data dir left (it holds the lease: nobody
  else can be using it).
- `sandboxd run` and `doctor` take a lease of their own (`<instance>-run<pid>`): their own
  cgroup parent, and a uid range that overlaps no live lease, picked above the server's.
- Start-up recovery sweeps only the cgroups of leases whose holders are dead.
- Two live leases never share a host uid: a server whose sandbox or thread range overlaps a
  live one refuses to start, naming the setting to change.

All of it happens under one registry lock, so two processes starting at once see each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ..errors import SandboxSetupError
from .keeper import sweep

Role = Literal["server", "run", "doctor"]

log = logging.getLogger("sandboxd.runtime")

#: Under /run: gone at reboot, like every lock and cgroup it describes.
LEASES = Path("/run/sandboxd/leases")
#: How long a server waits for the lease of its data dir while a keeper sweeps a dead run.
_TAKEOVER_S = 15.0
_UID_MAX = 2**31 - 1


@dataclass(frozen=True)
class Record:
    """What a lease file says about its holder."""

    name: str
    role: Role
    pid: int
    data_dir: str
    sandbox_uids: tuple[int, int]  # [start, stop)
    thread_uids: tuple[int, int] | None
    cgroups: tuple[str, ...]
    listen: str | None = None

    @staticmethod
    def load(text: str) -> Record:
        raw = json.loads(text)
        return Record(
            name=raw["name"], role=raw["role"], pid=raw["pid"], data_dir=raw["data_dir"],
            sandbox_uids=tuple(raw["sandbox_uids"]),
            thread_uids=tuple(raw["thread_uids"]) if raw.get("thread_uids") else None,
            cgroups=tuple(raw.get("cgroups", ())), listen=raw.get("listen"),
        )

    def ranges(self) -> list[tuple[str, range]]:
        out = [("sandbox", range(*self.sandbox_uids))]
        if self.thread_uids is not None:
            out.append(("thread", range(*self.thread_uids)))
        return out


class Lease:
    """A held lease; `fd` is inherited by the keeper, so the lease outlives a killed holder
    until the keeper has swept."""

    def __init__(self, fd: int, path: Path, record: Record) -> None:
        self.fd = fd
        self.path = path
        self.record = record

    @property
    def sandbox_uids(self) -> range:
        return range(*self.record.sandbox_uids)

    def close(self) -> None:
        """Give the lease up (the holder stopped cleanly and its keeper has exited)."""
        if self.fd < 0:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        os.close(self.fd)
        self.fd = -1


def live_leases() -> list[Record]:
    """The leases whose holders are alive (sweeping those of dead ones on the way)."""
    with _registry():
        return _scan()


def acquire(
    *,
    name: str,
    role: Role,
    data_dir: str,
    sandbox_uids: range,
    cgroups: Sequence[Path],
    thread_uids: range | None = None,
    listen: str | None = None,
    avoid: Sequence[range] = (),
) -> Lease:
    """Take the lease `name`. A server refuses a clash of uid ranges; `run` and `doctor`
    move their sandbox range to the first place that clashes with nothing (nor with `avoid`,
    the ranges their data dir's server is configured for)."""
    deadline = time.monotonic() + _TAKEOVER_S
    while True:
        with _registry():
            live = _scan()
            same = [r for r in live if r.name == name]
            if not same:
                if role == "server":
                    _refuse_clash(sandbox_uids, thread_uids, live)
                else:
                    sandbox_uids = _pick(sandbox_uids, [rg for r in live for _, rg in r.ranges()] + list(avoid))
                record = Record(
                    name=name, role=role, pid=os.getpid(), data_dir=data_dir,
                    sandbox_uids=(sandbox_uids.start, sandbox_uids.stop),
                    thread_uids=(thread_uids.start, thread_uids.stop) if thread_uids is not None else None,
                    cgroups=tuple(str(p) for p in cgroups), listen=listen,
                )
                return _create(record)
        holder = same[0]
        if _alive(holder.pid) or time.monotonic() > deadline:
            raise SandboxSetupError(
                "instance",
                f"a sandboxd server is already running on data dir {holder.data_dir} (pid {holder.pid}); "
                "stop it first, or give this one another --data-dir",
            )
        time.sleep(0.05)  # its holder died: its keeper is sweeping; the lease frees when done


def _create(record: Record) -> Lease:
    path = LEASES / f"{record.name}.json"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(asdict(record)).encode())
    except BaseException:
        os.close(fd)
        raise
    return Lease(fd, path, record)


@contextlib.contextmanager
def _registry() -> Iterator[None]:
    LEASES.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(LEASES / ".registry", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _scan() -> list[Record]:
    """Live leases; a dead one's cgroups are swept and its file removed (registry lock held)."""
    live: list[Record] = []
    for path in sorted(LEASES.glob("*.json")):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                with contextlib.suppress(ValueError, KeyError, OSError):
                    live.append(Record.load(path.read_text()))
                continue
            _sweep_dead(path)
        finally:
            os.close(fd)
    return live


def _sweep_dead(path: Path) -> None:
    try:
        record = Record.load(path.read_text())
    except (ValueError, KeyError, OSError):
        record = None
    if record is not None:
        left = sweep([Path(p) for p in record.cgroups])
        if left:
            log.error("cgroups of a dead sandboxd process (pid %d) could not be removed: %s", record.pid, left)
            return  # keep the file: the next start tries again
        log.warning("swept the cgroups of a dead sandboxd process (pid %d, %s)", record.pid, record.data_dir)
    path.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _overlap(a: range, b: range) -> bool:
    return a.start < b.stop and b.start < a.stop


def _refuse_clash(sandbox_uids: range, thread_uids: range | None, live: list[Record]) -> None:
    mine = [("sandbox", sandbox_uids, "SANDBOXD_SANDBOX_UID_BASE")]
    if thread_uids is not None:
        mine.append(("thread", thread_uids, "SANDBOXD_THREAD_UID_BASE"))
        if _overlap(sandbox_uids, thread_uids):
            raise SandboxSetupError(
                "host uids",
                f"sandbox uids {_span(sandbox_uids)} overlap thread uids {_span(thread_uids)}: "
                "change SANDBOXD_SANDBOX_UID_BASE or SANDBOXD_THREAD_UID_BASE",
            )
    for kind, rng, setting in mine:
        for other in live:
            for other_kind, other_rng in other.ranges():
                if _overlap(rng, other_rng):
                    who = "server" if other.role == "server" else f"`sandboxd {other.role}`"
                    raise SandboxSetupError(
                        "host uids",
                        f"this server's {kind} uids {_span(rng)} overlap the {other_kind} uids "
                        f"{_span(other_rng)} of the sandboxd {who} on data dir {other.data_dir} "
                        f"(pid {other.pid}): set {setting} to a free range (docs/operations.md, "
                        "Two servers on one host)",
                    )


def _span(r: range) -> str:
    return f"{r.start}-{r.stop - 1}"


def _pick(wanted: range, taken: list[range]) -> range:
    """The first range of `wanted`'s size, from its start up, that overlaps nothing taken."""
    size = len(wanted)
    start = wanted.start
    while start + size <= _UID_MAX:
        candidate = range(start, start + size)
        blocking = [t for t in taken if _overlap(candidate, t)]
        if not blocking:
            return candidate
        start = max(t.stop for t in blocking)
    raise SandboxSetupError("host uids", "no free range of sandbox uids below 2^31")
