"""A live sandbox: bwrap's process, the cgroup holding everything under it, its host uid.

`Sandboxes` starts one (uid, cgroup, fds, spawn), supervises it (pump, timeout, classify) and
disposes of it. Whatever happens (timeout, OOM, cancel, crash of the code, an error of ours),
`dispose` leaves nothing behind: the cgroup is emptied by freeze-and-kill and removed, the uid
returns to the pool; the memfds are closed as soon as bwrap has its copies. The cold runner
(`runner.py`) and the pool (`pool.py`) both start their sandboxes here.
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
from . import beneath, launch, process, reaper, rlimits
from . import outputs as _outputs
from .outputs import Outputs
from .cgroups import Cgroup, CgroupDriver, CgroupStats
from .network import Attached
from .spec import ExecResult, ExecStatus, OutputSink, SandboxSpec, Stream
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
    #: Its /data/outputs on the host (runtime/outputs.py); None: it has none.
    outputs: Path | None = None


class Sandboxes:
    """This process's sandboxes on the host: their cgroups, host uids and the filter they run under."""

    def __init__(
        self, *, cgroups: CgroupDriver, uids: UidPool, seccomp_bpf: bytes, bwrap_path: str,
        outputs: Outputs | None = None,
    ) -> None:
        self._cgroups = cgroups
        #: Where sandboxes' /data/outputs are mounted on the host; None: sandboxes have none.
        self.outputs = outputs
        self._uids = uids
        self._seccomp_bpf = seccomp_bpf
        self._bwrap = bwrap_path
        #: bwrap processes of sandboxes not yet disposed of (none of them is an orphan).
        self._live: set[int] = set()
        reaper.become_subreaper()

    async def launch(
        self,
        spec: SandboxSpec,
        net: Attached,
        *,
        program: bytes | None = None,
        ready_fd: int | None = None,
    ) -> Sandbox:
        """Start the sandbox: uid, cgroup, fds, bwrap. With `program` (a pool's stub) stdin is a
        pipe for the request and `ready_fd` is left open for the stub to signal on."""
        uid = spec.host_uid if spec.host_uid is not None else self._uids.acquire()
        group: Cgroup | None = None
        outputs: Path | None = None
        fds: list[int] = []
        try:
            group = self._cgroups.create(f"x-{random_token(12)}", spec.limits)
            # A bucket's directory is looked up by rclone (maybe over the network): off the loop.
            mounts = await beneath.off_loop(lambda: _open_mounts(spec, fds)) if spec.mounts else ()
            outputs_fd: int | None = None
            if self.outputs is not None and spec.limits.outputs_size_mib > 0:
                outputs, outputs_fd = self.outputs.create(
                    uid, spec.host_gid or uid,
                    size_mib=spec.limits.outputs_size_mib, max_files=spec.limits.outputs_max_files,
                )
                fds.append(outputs_fd)
            box_fds = self._open_fds(spec, net, fds, program, mounts, outputs_fd)
            argv = _bwrap.build_argv(
                spec, box_fds, bwrap=self._bwrap, network_env=net.env, program_writable=program is not None
            )
            # The options go through a memfd (`--args`): the command line that other host users
            # can read in /proc then shows no env values. bwrap wants the command itself on
            # its real command line.
            split = argv.index("--")
            if any("\0" in a for a in argv):  # one would split into options of its own
                raise SandboxSetupError("sandbox options", "a NUL byte in a bubblewrap option")
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
                    own_fds=(0, *(() if ready_fd is None else (ready_fd,))) if program is not None else (),
                ),
            )
        except BaseException:
            if group is not None:
                group.kill_all()
                group.remove()
            if outputs is not None and self.outputs is not None:
                self.outputs.release(outputs)
            if spec.host_uid is None:
                self._uids.release(uid)
            raise
        finally:
            for fd in fds:  # the child has its copies; bwrap reads them to EOF
                os.close(fd)
        self._live.add(proc.pid)
        return Sandbox(proc, group, uid, owns_uid=spec.host_uid is None, spawned_at=spawned_at, outputs=outputs)

    async def supervise(
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
        result = _classify(proc.returncode, ended_by, group.oom_killed(), out, err, duration_ms)
        return with_usage(result, group)

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
        if box.outputs is not None and self.outputs is not None:
            self.outputs.release_later(box.outputs)  # its unmount waits for RCU: off the answer's path
            box.outputs = None
        if box.owns_uid:
            self._uids.release(box.uid)

    async def collect(self, box: Sandbox, spec: SandboxSpec, result: ExecResult) -> ExecResult:
        """After the run, before `dispose`: copy what the program left in /data/outputs into
        `spec.artifacts_dir` (runtime/outputs.py). An empty directory costs one getdents."""
        if box.outputs is None or spec.artifacts_dir is None or not _has_entries(box.outputs):
            return result
        into, limits = spec.artifacts_dir, spec.limits
        got = await asyncio.to_thread(
            _outputs.collect, box.outputs, into,
            max_files=limits.outputs_max_files, max_bytes=limits.outputs_size_mib * 1024 * 1024,
        )
        return replace(result, artifacts=got.files, artifacts_dropped=got.dropped)

    def close(self) -> None:
        """Remove this process's cgroups (every sandbox was disposed of, or the keeper ends it)."""
        self._cgroups.release()

    def _open_fds(
        self, spec: SandboxSpec, net: Attached, opened: list[int], program: bytes | None,
        mounts: tuple[int, ...] = (), outputs: int | None = None,
    ) -> _bwrap.SandboxFds:
        return _bwrap.SandboxFds(
            program=_memfd("program", spec.code if program is None else program, opened),
            seccomp=_memfd("seccomp", self._seccomp_bpf, opened),
            passwd=_memfd("passwd", _bwrap.passwd_file(), opened),
            group=_memfd("group", _bwrap.group_file(), opened),
            hosts=_memfd("hosts", _bwrap.hosts_file() + net.hosts, opened),
            nsswitch=_memfd("nsswitch", _bwrap.nsswitch_file(), opened),
            resolv=_memfd("resolv", net.resolv_conf, opened) if net.resolv_conf else None,
            mounts=mounts,
            ca_bundle=_memfd("ca", net.ca_bundle, opened) if net.ca_bundle else None,
            outputs=outputs,
        )


def with_usage(result: ExecResult, group: Cgroup, since: CgroupStats | None = None) -> ExecResult:
    """The result with what the cgroup counted (read before the group is removed); the CPU
    time since `since` for a group that ran earlier executions (a persistent session)."""
    try:
        stats = group.stats()
    except (OSError, ValueError):
        return result
    cpu_ms = stats.cpu_ms - (since.cpu_ms if since is not None else 0)
    return replace(result, cpu_ms=max(0, cpu_ms), memory_peak_bytes=stats.memory_peak_bytes)


def _has_entries(path: Path) -> bool:
    with os.scandir(path) as it:
        return next(it, None) is not None


def _open_mounts(spec: SandboxSpec, opened: list[int]) -> tuple[int, ...]:
    """Each mount's directory, opened without following a link (runtime/beneath.py)."""
    fds = []
    for mount in spec.mounts:
        try:
            fd = beneath.open_beneath(mount.source, mount.sub)
        except beneath.BeneathError as exc:
            raise SandboxSetupError("storage mount", f"{mount.dest}: {exc.reason}") from None
        except OSError as exc:
            raise SandboxSetupError("storage mount", mount.dest) from exc
        opened.append(fd)
        fds.append(fd)
    return tuple(fds)


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
    waits: set[asyncio.Future[object]] = {waiter}  # type: ignore[arg-type]  # Future is invariant
    cancelled = asyncio.ensure_future(cancel.wait()) if cancel is not None else None
    if cancelled is not None:
        waits.add(cancelled)  # type: ignore[arg-type]  # Future is invariant
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
