"""Run one execution in a fresh bubblewrap sandbox and account for every process it made.

The launch order on one screen is `BwrapRunner.run`: uid, cgroup, fds, spawn, pump, reap,
classify. Whatever happens (timeout, OOM, cancel, crash of the code, an error of ours), the
`finally` leaves nothing behind: the cgroup is emptied by freeze-and-kill and removed, the
uid returns to the pool, the memfds are closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import SandboxSetupError
from ..ids import random_token
from . import bwrap as _bwrap
from . import launch, process, reaper, rlimits
from .cgroups import Cgroup, CgroupDriver
from .languages import available_languages
from . import warm
from .homeslot import HomeSlots
from .keeper import Keeper
from .lease import Lease
from .network import Attached, Network
from .pool import PoolSettings, WarmPool
from .spec import ExecResult, ExecStatus, Language, OutputSink, SandboxSpec, Stream
from .users import UidPool

_CHUNK = 64 * 1024
#: What bwrap exits with when the program died of SIGSYS: its pid-1 init reports a death by
#: signal N as 128 + N, and SECCOMP_RET_KILL_PROCESS is a SIGSYS the program cannot catch.
_SECCOMP_KILLED = 128 + signal.SIGSYS


@dataclass
class _Capture:
    limit: int
    data: bytearray
    truncated: bool = False

    def take(self, chunk: bytes) -> bytes:
        """Keep what fits under the cap; the rest is drained and dropped so the pipe never fills."""
        room = self.limit - len(self.data)
        if room <= 0:
            self.truncated = self.truncated or bool(chunk)
            return b""
        kept = chunk[:room]
        if len(kept) < len(chunk):
            self.truncated = True
        self.data += kept
        return kept


@dataclass
class Sandbox:
    """A started sandbox: bwrap's process, the cgroup holding everything under it, its uid."""

    proc: process.Child
    group: Cgroup
    uid: int
    owns_uid: bool
    spawned_at: float
    #: A pre-spawned thread sandbox's /home/baponi, filled at use time (runtime/homeslot.py).
    home_slot: Path | None = None
    #: A pre-spawned sandbox's readiness: True once its stub runs, False if it died starting.
    up: asyncio.Future[bool] | None = None


class BwrapRunner:
    """The default runner: bubblewrap + seccomp + cgroups + rlimits, one sandbox per execution."""

    def __init__(
        self,
        *,
        cgroups: CgroupDriver,
        uids: UidPool,
        seccomp_bpf: bytes,
        bwrap_path: str = "/usr/bin/bwrap",
        network: Network | None = None,
        lease: Lease | None = None,
        keeper: Keeper | None = None,
    ) -> None:
        self._network = network or Network()
        #: What this process owns on the host (cgroups, uids), and who sweeps it if we die.
        self.lease = lease
        self._keeper = keeper
        self._cgroups = cgroups
        self._uids = uids
        self._seccomp_bpf = seccomp_bpf
        self._bwrap = bwrap_path
        self.languages: frozenset[Language] = available_languages()
        #: Pre-spawned single-use sandboxes; set by `enable_pool`.
        self.pool: WarmPool | None = None
        self._home_slots: HomeSlots | None = None
        #: bwrap processes of sandboxes not yet disposed of (none of them is an orphan).
        self._live: set[int] = set()
        reaper.become_subreaper()

    def enable_pool(self, settings: PoolSettings, *, home_slots: Path | None = None) -> WarmPool:
        """Pool stateless runs; with `home_slots` (a directory for mount points) thread runs too."""
        if home_slots is not None:
            self._home_slots = HomeSlots(home_slots)
            self._home_slots.recover()
        self.pool = WarmPool(self, settings, threads=home_slots is not None)
        return self.pool

    async def close(self) -> None:
        """The server is stopping: dispose of the pool's sandboxes, remove the home slots' mounts
        and this instance's cgroups (the keeper ends any sandbox still running), give the lease up."""
        if self.pool is not None:
            await self.pool.close()
        if self._home_slots is not None:
            self._home_slots.close()
        self._cgroups.release()
        if self._keeper is not None:
            self._keeper.stop()
        if self.lease is not None:
            self.lease.close()

    async def run(
        self,
        spec: SandboxSpec,
        *,
        sink: OutputSink | None = None,
        cancel: asyncio.Event | None = None,
        refill_later: bool = False,
        pooled: bool = True,
    ) -> ExecResult:
        """Run `spec`; a pooled runner then refills the pool, unless the caller says when
        (`refill_later`, then `refill(spec)`). `pooled=False` starts a sandbox now even if a
        pre-spawned one waits (a self-check tests the host as it is now)."""
        if spec.language not in self.languages:
            raise SandboxSetupError("interpreter", f"language {spec.language!r} is not in this image")
        try:
            if pooled and self.pool is not None and (box := self.pool.take(spec)) is not None:
                if await self._came_up(box, spec):
                    return await self.serve(box, spec, sink=sink, cancel=cancel)
            async with self._network.attach(spec.network) as net:
                box = await self.launch(spec, net)
                try:
                    result = await self._supervise(box, spec, sink, cancel, started=box.spawned_at)
                finally:
                    await self.dispose(box)
            return _with_network(result, net)
        finally:
            if not refill_later and pooled:
                # After the run, not during it: on a small machine a sandbox starting next to
                # the one serving the request slows that one down.
                self.refill(spec)

    def refill(self, spec: SandboxSpec) -> None:
        if self.pool is not None:
            self.pool.replenish(spec)

    async def _came_up(self, box: Sandbox, spec: SandboxSpec) -> bool:
        """Wait for a pooled sandbox's stub to run: bubblewrap has then made every mount, and only
        then may a thread's home be mounted into it (before, bubblewrap's own bind of the slot
        would copy it and fail to remount it). One that died starting is disposed of (False:
        the run starts cold)."""
        try:
            up = box.up is None or await asyncio.wait_for(asyncio.shield(box.up), spec.limits.timeout_s)
        except asyncio.TimeoutError:
            up = False
        except BaseException:
            await asyncio.shield(self.dispose(box))
            raise
        if not up:
            await self.dispose(box)
        return up

    async def serve(
        self,
        box: Sandbox,
        spec: SandboxSpec,
        *,
        sink: OutputSink | None = None,
        cancel: asyncio.Event | None = None,
    ) -> ExecResult:
        """Hand the request to a pre-spawned sandbox (its stub reads env and code from stdin)."""
        try:
            assert box.proc.stdin is not None
            started = time.monotonic()
            if box.home_slot is not None:
                assert self._home_slots is not None and spec.home is not None
                self._home_slots.attach(box.home_slot, spec.home)
            box.proc.stdin.write(warm.request(spec))
            with contextlib.suppress(ConnectionError):
                await box.proc.stdin.drain()
            box.proc.stdin.close()
            return await self._supervise(box, spec, sink, cancel, started=started)
        finally:
            await self.dispose(box)

    async def launch(
        self,
        spec: SandboxSpec,
        net: Attached,
        *,
        program: bytes | None = None,
        ready_fd: int | None = None,
        home_slot: bool = False,
    ) -> Sandbox:
        """Start the sandbox: uid, cgroup, fds, bwrap. With `program` (a pool's stub) stdin is a
        pipe for the request and `ready_fd` is left open for the stub to signal on; with
        `home_slot`, /home/baponi is a slot that `serve` mounts the thread's home on."""
        uid = spec.host_uid if spec.host_uid is not None else self._uids.acquire()
        group: Cgroup | None = None
        slot: Path | None = None
        fds: list[int] = []
        try:
            if home_slot:
                assert self._home_slots is not None, "enable_pool(home_slots=...) first"
                slot = self._home_slots.create(uid, spec.host_gid or uid)
                spec = replace(spec, home=str(slot))
            group = self._cgroups.create(f"x-{random_token(12)}", spec.limits)
            box_fds = self._open_fds(spec, net, fds, program)
            argv = _bwrap.build_argv(
                spec, box_fds, bwrap=self._bwrap, network_env=net.env, program_writable=program is not None
            )
            # The options go through a memfd (`--args`): the command line that other host users
            # can read in /proc then shows no env values. bwrap wants the command itself on
            # its real command line.
            split = argv.index("--")
            args_fd = _memfd("args", b"".join(a.encode() + b"\0" for a in argv[1:split]), fds)
            spawned_at = time.monotonic()
            proc = await process.spawn(
                [self._bwrap, "--args", str(args_fd), *argv[split:]],
                stdin_pipe=program is not None,
                pass_fds=[fd for fd in (*fds, net.netns_fd, ready_fd) if fd is not None],
                preexec_fn=launch.preexec(
                    group.procs_files,
                    uid,
                    spec.host_gid or uid,
                    rlimits.plan(spec.limits),
                    net.netns_fd,
                ),
            )
        except BaseException:
            if group is not None:
                group.kill_all()
                group.remove()
            if slot is not None and self._home_slots is not None:
                self._home_slots.release(slot)
            if spec.host_uid is None:
                self._uids.release(uid)
            raise
        finally:
            for fd in fds:  # the child has its copies; bwrap reads them to EOF
                os.close(fd)
        self._live.add(proc.pid)
        return Sandbox(proc, group, uid, owns_uid=spec.host_uid is None, spawned_at=spawned_at, home_slot=slot)

    async def _supervise(
        self,
        box: Sandbox,
        spec: SandboxSpec,
        sink: OutputSink | None,
        cancel: asyncio.Event | None,
        *,
        started: float,
    ) -> ExecResult:
        """Pump output, enforce the timeout (counted from `started`), classify the end."""
        proc, group = box.proc, box.group
        out = _Capture(spec.limits.output_limit_bytes, bytearray())
        err = _Capture(spec.limits.output_limit_bytes, bytearray())
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            asyncio.create_task(_pump(proc.stdout, "stdout", out, sink)),
            asyncio.create_task(_pump(proc.stderr, "stderr", err, sink)),
        ]
        try:
            remaining = spec.limits.timeout_s - (time.monotonic() - started)
            ended_by = await _wait(proc, max(0.0, remaining), cancel)
            if ended_by is not None:
                group.kill_all()  # bwrap and everything under it: the cgroup has them all
                await proc.wait()
            duration_ms = int((time.monotonic() - started) * 1000)
            group.kill_all()  # nothing in the sandbox outlives its execution
            await asyncio.wait(pumps, timeout=5)
        finally:
            for task in pumps:
                task.cancel()
        return _classify(proc.returncode, ended_by, group.oom_killed(), out, err, duration_ms)

    async def dispose(self, box: Sandbox) -> None:
        """Leave nothing behind: processes killed and reaped, cgroup removed, uid returned."""
        box.group.kill_all()
        if box.proc.returncode is None:
            with contextlib.suppress(Exception):
                await asyncio.shield(box.proc.wait())
        self._live.discard(box.proc.pid)
        # A thread's sandboxes share its uid: the others' bwrap processes are not orphans.
        await reaper.reap_orphans(box.uid, spawned=box.proc.pid, live=self._live)
        box.group.remove()
        if box.home_slot is not None and self._home_slots is not None:
            self._home_slots.release(box.home_slot)
        if box.owns_uid:
            self._uids.release(box.uid)

    def _open_fds(
        self, spec: SandboxSpec, net: Attached, opened: list[int], program: bytes | None
    ) -> _bwrap.SandboxFds:
        return _bwrap.SandboxFds(
            program=_memfd("program", spec.code if program is None else program, opened),
            seccomp=_memfd("seccomp", self._seccomp_bpf, opened),
            passwd=_memfd("passwd", _bwrap.passwd_file(), opened),
            group=_memfd("group", _bwrap.group_file(), opened),
            hosts=_memfd("hosts", _bwrap.hosts_file(), opened),
            nsswitch=_memfd("nsswitch", _bwrap.nsswitch_file(), opened),
            resolv=_memfd("resolv", net.resolv_conf, opened) if net.resolv_conf else None,
        )


def _with_network(result: ExecResult, net: Attached) -> ExecResult:
    """Attach the policy's decisions; a failure after a refused connection is `blocked`."""
    if not net.decisions:
        return result
    if result.status is ExecStatus.FAILED and net.refused_any:
        return replace(result, status=ExecStatus.BLOCKED, error="blocked", network=net.decisions)
    return replace(result, network=net.decisions)


def _memfd(name: str, content: bytes, opened: list[int]) -> int:
    """A sealed-off in-memory file with `content`, positioned at 0 for bwrap to read."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    opened.append(fd)
    view = memoryview(content)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


async def _pump(
    reader: asyncio.StreamReader, stream: Stream, capture: _Capture, sink: OutputSink | None
) -> None:
    while chunk := await reader.read(_CHUNK):
        kept = capture.take(chunk)
        if kept and sink is not None:
            await sink(stream, kept)


async def _wait(
    proc: process.Child, timeout_s: float, cancel: asyncio.Event | None
) -> ExecStatus | None:
    """Wait for the exit; return TIMEOUT or CANCELLED if we must end it instead."""
    waiter = asyncio.ensure_future(proc.wait())
    waits: set[asyncio.Future[object]] = {waiter}  # type: ignore[arg-type]
    cancelled = asyncio.ensure_future(cancel.wait()) if cancel is not None else None
    if cancelled is not None:
        waits.add(cancelled)  # type: ignore[arg-type]
    try:
        done, _ = await asyncio.wait(waits, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if cancelled is not None:
            cancelled.cancel()
    if waiter in done:
        return None
    waiter.cancel()
    return ExecStatus.CANCELLED if cancelled is not None and cancelled in done else ExecStatus.TIMEOUT


def _classify(
    returncode: int | None,
    ended_by: ExecStatus | None,
    oom: bool,
    out: _Capture,
    err: _Capture,
    duration_ms: int,
) -> ExecResult:
    code = returncode if returncode is not None else -1
    if code < 0:  # killed by a signal: report it as a shell would
        code = 128 - code
    if ended_by is ExecStatus.TIMEOUT:
        status, error = ExecStatus.TIMEOUT, "timeout"
    elif ended_by is ExecStatus.CANCELLED:
        status, error = ExecStatus.CANCELLED, "cancelled"
    elif oom and code != 0:
        status, error = ExecStatus.OOM, "memory_limit_exceeded"
    elif code == _SECCOMP_KILLED:
        status, error = ExecStatus.SECCOMP, "security_policy_violation"
    elif code == 0:
        status, error = ExecStatus.SUCCESS, None
    else:
        status, error = ExecStatus.FAILED, None
    return ExecResult(
        status=status,
        exit_code=code,
        stdout=bytes(out.data),
        stderr=bytes(err.data),
        stdout_truncated=out.truncated,
        stderr_truncated=err.truncated,
        duration_ms=duration_ms,
        error=error,
    )
