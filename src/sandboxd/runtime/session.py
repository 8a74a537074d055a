"""A persistent session's sandbox: one long-lived sandbox whose program is a session driver
(runtime/drivers), running execution after execution in one interpreter.

It is started exactly like a cold sandbox (`Sandboxes.launch`: the same bwrap argv, cgroup,
rlimits, seccomp filter and uid), except that its program is the driver, its stdin a pipe for
requests and one more pipe (the control pipe) brings each execution's end back. An execution:

1. the request (runtime/warm.py's format: variables, code) goes down stdin;
2. stdout and stderr are read up to the driver's end marker; what comes after it (a background
   thread still printing) is kept for the next execution, as a notebook shows it in the next cell;
3. the control pipe says the exit status and the rich outputs.

A timeout, a cancel, an OOM kill or the driver's death ends the session: the sandbox is then
disposed of as any other is (its cgroup killed and removed, its uid given back).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, replace
from typing import Any

from . import drivers, warm
from .network import Attached, Network, NetworkDecision
from .cgroups import Cgroup, CgroupStats
from .sandbox import Sandbox, Sandboxes, _Capture, with_usage
from .outputs import collect as collect_outputs
from .spec import ExecResult, ExecStatus, OutputSink, SandboxSpec, Stream

_CHUNK = 64 * 1024
_SECCOMP_KILLED = 128 + 31  # a SIGSYS death as bwrap's init reports it (sandbox.py)
#: Rich outputs of one execution: each item, and all of them (the driver caps them).
OUTPUT_ITEM_MAX_BYTES = 2 * 1024 * 1024
OUTPUT_TOTAL_MAX_BYTES = 8 * 1024 * 1024
#: The rich outputs a driver may report; anything else it says is dropped.
OUTPUT_TYPES = frozenset({"image/png", "image/jpeg", "image/svg+xml", "text/html", "text/markdown"})
#: Those that are pictures (base64), not text a secret could be written in.
PICTURE_TYPES = frozenset({"image/png", "image/jpeg"})
#: What a stream keeps between executions (a background writer's output) at most.
_CARRY_MAX = 64 * 1024
#: The longest control line: the rich outputs of one execution, as base64 text, and some room.
_CONTROL_LINE_MAX = OUTPUT_TOTAL_MAX_BYTES + 256 * 1024


class SessionStartFailed(Exception):
    """The session's interpreter did not come up; what it printed, and how it ended."""

    def __init__(self, exit_code: int, stdout: bytes, stderr: bytes) -> None:
        super().__init__("the session's interpreter did not start")
        self.exit_code, self.stdout, self.stderr = exit_code, stdout, stderr


@dataclass(frozen=True)
class SessionRun:
    """One execution in a session."""

    result: ExecResult
    #: Rich outputs as the driver reported them (`{"type", "data", ["truncated", "size"]}`).
    outputs: tuple[dict[str, Any], ...]
    #: None: the session lives on. Else why it ended: timeout, oom, crash, cancelled.
    ended: str | None


class _StreamReader:
    """One of the session's output streams, split into executions at the driver's marker."""

    def __init__(self, stream: Stream, reader: asyncio.StreamReader, marker: bytes) -> None:
        self.stream = stream
        self._reader = reader
        self._marker = marker
        self._pending = bytearray()
        self._capture: _Capture | None = None
        self._sink: OutputSink | None = None
        self.marked = asyncio.Event()
        #: Set while an execution wants output; between executions the pump stops reading once
        #: the carry is full, so a background writer blocks on its pipe, not the server.
        self._wanted = asyncio.Event()
        self.eof = False
        self._task = asyncio.ensure_future(self._pump())

    def begin(self, capture: _Capture, sink: OutputSink | None) -> None:
        self._capture, self._sink = capture, sink
        self.marked.clear()
        self._wanted.set()

    def end(self) -> None:
        """The execution is over: what comes now is kept for the next one (up to a cap)."""
        self._capture = self._sink = None
        self._wanted.clear()

    @property
    def carry(self) -> bytes:
        """What the stream holds that no execution took (e.g. an interpreter's start-up errors)."""
        return bytes(self._pending[:_CARRY_MAX])

    async def flush_carry(self) -> None:
        """What came after the last marker goes to this execution."""
        await self._feed(b"")

    async def _pump(self) -> None:
        while True:
            if self._capture is None and len(self._pending) >= _CARRY_MAX:
                self._wanted.clear()
                await self._wanted.wait()
            chunk = await self._reader.read(_CHUNK)
            if not chunk:
                break
            await self._feed(chunk)
        self.eof = True
        if self._capture is not None:  # else kept: what a driver said before it died at start
            await self._emit(bytes(self._pending))
            self._pending.clear()
        self.marked.set()

    async def _feed(self, chunk: bytes) -> None:
        self._pending += chunk
        if self._capture is None:  # between executions: keep a little for the next one
            del self._pending[_CARRY_MAX:]
            return
        at = self._pending.find(self._marker)
        if at >= 0:
            await self._emit(bytes(self._pending[:at]))
            del self._pending[: at + len(self._marker)]
            self._capture = self._sink = None
            self.marked.set()
            return
        keep = _partial_marker(self._pending, self._marker)
        ready = len(self._pending) - keep
        if ready > 0:
            await self._emit(bytes(self._pending[:ready]))
            del self._pending[:ready]

    async def _emit(self, data: bytes) -> None:
        if not data or self._capture is None:
            return
        kept = self._capture.take(data)
        if kept and self._sink is not None:
            await self._sink(self.stream, kept)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(BaseException):
            await self._task


def _partial_marker(data: bytearray, marker: bytes) -> int:
    """How many bytes at the end of `data` could begin the marker (held back for the next read)."""
    for size in range(min(len(marker) - 1, len(data)), 0, -1):
        if data.endswith(marker[:size]):
            return size
    return 0


class SessionSandbox:
    """A live session: its sandbox, the network it is attached to, the driver's pipes."""

    def __init__(
        self, sandboxes: Sandboxes, box: Sandbox, stack: AsyncExitStack, control: asyncio.StreamReader,
        control_transport: asyncio.ReadTransport, marker: bytes, spec: SandboxSpec, net: Attached,
    ) -> None:
        self._sandboxes = sandboxes
        self.box = box
        self._stack = stack
        self._control = control
        #: Read only during an execution: between them the driver's writes wait in the pipe.
        self._control_transport = control_transport
        self.spec = spec
        self._net = net
        assert box.proc.stdout is not None and box.proc.stderr is not None
        self._out = _StreamReader("stdout", box.proc.stdout, marker)
        self._err = _StreamReader("stderr", box.proc.stderr, marker)
        self._closed = False
        #: What of /data/outputs earlier executions already kept (runtime/outputs.py `collect`).
        self._collected: dict[str, tuple[int, int]] = {}

    @property
    def alive(self) -> bool:
        return not self._closed and self.box.proc.returncode is None

    def memory_bytes(self) -> int:
        """The most memory the session's sandbox has held (its cgroup's peak)."""
        with contextlib.suppress(Exception):
            return self.box.group.stats().memory_peak_bytes
        return 0

    async def ready(self, timeout_s: float) -> None:
        """Wait for the driver's first line. One that never comes: the interpreter did not
        start, maybe because of what the thread's home holds (a broken `.pth`), so it is the
        program's failure (SessionStartFailed, with what it printed), not the platform's."""
        try:
            line = await asyncio.wait_for(self._control.readline(), timeout_s)
        except (asyncio.TimeoutError, ValueError):
            line = b""
        if line.startswith(b'{"ready"'):
            self._control_transport.pause_reading()
            self.box.group.freeze(True)
            return
        self.box.group.kill_all()
        await self.box.proc.wait()
        code = self.box.proc.returncode if self.box.proc.returncode is not None else -1
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(self._out.marked.wait(), self._err.marked.wait()), 5)
        raise SessionStartFailed(
            128 - code if code < 0 else code or 1, bytes(self._out.carry), bytes(self._err.carry)
        )

    async def execute(
        self, spec: SandboxSpec, *, sink: OutputSink | None = None, cancel: asyncio.Event | None = None,
        started: float | None = None,
    ) -> SessionRun:
        """Run `spec.code` (with `spec.env` set) in the session, within `spec.limits`' timeout
        and output cap (counted from `started`, default now)."""
        started = time.monotonic() if started is None else started
        limit = spec.limits.output_limit_bytes
        out, err = _Capture(limit, bytearray()), _Capture(limit, bytearray())
        self._out.begin(out, sink)
        self._err.begin(err, sink)
        await self._out.flush_carry()
        await self._err.flush_carry()
        proc = self.box.proc
        seen = _counts(self._net.so_far()) if self._net.so_far is not None else None
        used_before = _stats(self.box.group)
        self.box.group.freeze(False)
        self._control_transport.resume_reading()
        reply = asyncio.ensure_future(self._send_and_wait(warm.request(spec)))
        waits: set[asyncio.Future[Any]] = {reply, asyncio.ensure_future(proc.wait())}
        cancelled = asyncio.ensure_future(cancel.wait()) if cancel is not None else None
        if cancelled is not None:
            waits.add(cancelled)
        try:
            remaining = max(0.0, spec.limits.timeout_s - (time.monotonic() - started))
            done, _ = await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                if waiter is not reply:
                    waiter.cancel()
        message = reply.result() if reply in done and not reply.cancelled() else None
        reply.cancel()
        if message is not None and self.box.group.oom_killed():
            message = None  # a process of the session was killed: the session is not whole
        ended: str | None = None
        if message is None:
            finished = reply in done or proc.returncode is not None
            self.box.group.kill_all()  # whatever ended it, nothing of the session goes on
            await proc.wait()
            code = proc.returncode if proc.returncode is not None else -1
            exit_code = 128 - code if code < 0 else code
            if cancelled is not None and cancelled in done:
                ended, status, error = "cancelled", ExecStatus.CANCELLED, "cancelled"
            elif not finished:
                ended, status, error = "timeout", ExecStatus.TIMEOUT, "timeout"
            elif self.box.group.oom_killed():
                ended, status, error = "oom", ExecStatus.OOM, "memory_limit_exceeded"
            elif exit_code == _SECCOMP_KILLED:
                ended, status, error = "crash", ExecStatus.SECCOMP, "security_policy_violation"
            else:
                ended, status, error = "crash", ExecStatus.FAILED, None
                exit_code = exit_code or 1  # the interpreter ended: never a success
        else:
            exit_code = _exit_code(message)
            status = ExecStatus.SUCCESS if exit_code == 0 else ExecStatus.FAILED
            error = None
        duration_ms = int((time.monotonic() - started) * 1000)
        # The output up to the markers (or to the end): the driver wrote it before its reply.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.gather(self._out.marked.wait(), self._err.marked.wait()), 5)
        self._out.end()
        self._err.end()
        if ended is None:
            self._control_transport.pause_reading()
        network = _added(seen, self._net.so_far()) if seen is not None and self._net.so_far is not None else ()
        if status is ExecStatus.FAILED and any(not d.allowed for d in network):
            status, error = ExecStatus.BLOCKED, "blocked"  # as the cold runner says it
        result = ExecResult(
            status=status, exit_code=exit_code, stdout=bytes(out.data), stderr=bytes(err.data),
            stdout_truncated=out.truncated, stderr_truncated=err.truncated, duration_ms=duration_ms,
            error=error, network=network,
        )
        # The session's cgroup: CPU since this run began; its memory peak is the session's.
        result = with_usage(result, self.box.group, used_before)
        if spec.artifacts_dir is not None and self.box.outputs is not None:
            result = await self._collect(spec, result)
        outputs = _outputs(message) if message is not None else ()
        if ended is not None:
            await self.close()
        else:  # between runs nothing of the session runs: no background work outlives its run
            self.box.group.freeze(True)
        return SessionRun(result, outputs, ended)

    async def _collect(self, spec: SandboxSpec, result: ExecResult) -> ExecResult:
        """The execution's artifacts: what is new or changed in /data/outputs since the last
        execution of this session (which keeps its /data, like its interpreter)."""
        assert self.box.outputs is not None and spec.artifacts_dir is not None
        got = await asyncio.to_thread(
            collect_outputs, self.box.outputs, spec.artifacts_dir, self._collected,
            max_files=spec.limits.outputs_max_files, max_bytes=spec.limits.outputs_size_mib * 1024 * 1024,
        )
        self._collected = got.seen
        return replace(result, artifacts=got.files, artifacts_dropped=got.dropped)

    async def _send_and_wait(self, request: bytes) -> dict[str, Any] | None:
        """Send the request and read the reply: both within the execution's timeout (a driver
        that stopped reading blocks the write, not the server)."""
        stdin = self.box.proc.stdin
        assert stdin is not None
        stdin.write(request)
        with contextlib.suppress(ConnectionError):
            await stdin.drain()
        return await self._reply()

    async def _reply(self) -> dict[str, Any] | None:
        """The driver's line, or None (the session is then ended as a crash): the driver runs
        with the sandbox's code, so a line too long, not JSON or too deep is its failure."""
        try:
            line = await self._control.readline()
            message = json.loads(line) if line else None
        except Exception:  # LimitOverrunError, ValueError, RecursionError
            return None
        return message if isinstance(message, dict) else None

    async def close(self) -> None:
        """End the session: the sandbox disposed of, the network torn down; idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._sandboxes.dispose(self.box)
        finally:
            await self._out.close()
            await self._err.close()
            await self._stack.aclose()


async def start(
    sandboxes: Sandboxes, network: Network, spec: SandboxSpec, *, timeout_s: float
) -> SessionSandbox:
    """A session sandbox for `spec` (its code is not run), its driver up and waiting."""
    stack = AsyncExitStack()
    box: Sandbox | None = None
    try:
        net: Attached = await stack.enter_async_context(network.attach(spec.network, spec.egress))
        control_r, control_w = os.pipe2(os.O_CLOEXEC)
        control_file = os.fdopen(control_r, "rb", buffering=0)
        stack.callback(control_file.close)
        nonce = secrets.token_hex(16)
        program = drivers.program(
            spec.language, control_fd=control_w, nonce=nonce,
            item_max_bytes=OUTPUT_ITEM_MAX_BYTES, total_max_bytes=OUTPUT_TOTAL_MAX_BYTES,
        )
        try:
            box = await sandboxes.launch(replace(spec, code=b""), net, program=program, ready_fd=control_w)
        finally:
            os.close(control_w)
        control = asyncio.StreamReader(limit=_CONTROL_LINE_MAX)
        transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: asyncio.StreamReaderProtocol(control), control_file
        )
        stack.callback(transport.close)
    except BaseException:
        if box is not None:
            await sandboxes.dispose(box)
        await stack.aclose()
        raise
    session = SessionSandbox(sandboxes, box, stack, control, transport, drivers.marker(nonce), spec, net)
    try:
        await session.ready(timeout_s)
    except BaseException:
        await session.close()
        raise
    return session


def _counts(decisions: tuple[NetworkDecision, ...]) -> dict[tuple[Any, ...], int]:
    return {(d.host, d.port, d.allowed, d.reason, d.connector, d.method, d.status): d.count for d in decisions}


def _added(before: dict[tuple[Any, ...], int], now: tuple[NetworkDecision, ...]) -> tuple[NetworkDecision, ...]:
    """The decisions one execution added to its session's (counts are the session's so far)."""
    return tuple(
        replace(d, count=d.count - before.get(key, 0))
        for d in now
        if d.count > before.get(key := (d.host, d.port, d.allowed, d.reason, d.connector, d.method, d.status), 0)
    )


def _stats(group: Cgroup) -> CgroupStats | None:
    try:
        return group.stats()
    except (OSError, ValueError):
        return None


def _exit_code(message: dict[str, Any]) -> int:
    """The driver's status as a process's (0-255): it could say anything."""
    code = message.get("exit")
    return code & 0xFF if isinstance(code, int) and not isinstance(code, bool) else 1


def _outputs(message: dict[str, Any]) -> tuple[dict[str, Any], ...]:
    """The driver's items, checked: it runs the sandbox's code and may have been tampered with."""
    items = message.get("outputs")
    if not isinstance(items, list):
        return ()
    kept: list[dict[str, Any]] = []
    total = 0
    for item in items:
        if not isinstance(item, dict) or item.get("type") not in OUTPUT_TYPES or not isinstance(item.get("data"), str):
            continue
        entry: dict[str, Any] = {"type": item["type"], "data": item["data"]}
        size = len(entry["data"])
        if item.get("truncated") or size > OUTPUT_ITEM_MAX_BYTES * 2 or total + size > OUTPUT_TOTAL_MAX_BYTES * 2:
            declared = item.get("size")
            entry = {"type": entry["type"], "data": "", "truncated": True,
                     "size": declared if isinstance(declared, int) else size}
        total += len(entry["data"])
        kept.append(entry)
    return tuple(kept)
