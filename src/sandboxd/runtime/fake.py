"""A runner that runs nothing: scripted results, for fast tests of the service layer.

It implements `Runner` (interface.py) the way `BwrapRunner` behaves from outside: output
reaches the sink chunk by chunk and is capped at `limits.output_limit_bytes`; a run is ended by its
timeout (`limits.timeout_s`) or its cancel event, killed as by SIGKILL (exit 137). No root,
no bubblewrap, no process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from ..errors import SandboxSetupError
from .session import SessionSandbox
from .spec import ExecResult, ExecStatus, Language, OutputSink, SandboxSpec, Stream

_KILLED = 137  # 128 + SIGKILL, as a shell reports it


@dataclass(frozen=True)
class Script:
    """What one fake run does: write `output` in order, then wait `sleep_s`, then end."""

    output: tuple[tuple[Stream, bytes], ...] = ()
    sleep_s: float = 0.0
    exit_code: int = 0
    #: Ends as killed by the memory limit (status oom).
    oom: bool = False
    #: Raised instead of running (a setup failure: SandboxSetupError, or any other error).
    error: BaseException | None = None


def echo(spec: SandboxSpec) -> Script:
    """The default: the code is written to stdout and the run succeeds."""
    return Script(output=(("stdout", spec.code),))


class FakeRunner:
    def __init__(
        self,
        scripts: Callable[[SandboxSpec], Script] = echo,
        languages: Iterable[Language] = ("python", "node", "bash"),
    ) -> None:
        self.languages = frozenset(languages)
        self._scripts = scripts
        #: Every spec run, and every spec whose sandbox was refilled, in order.
        self.runs: list[SandboxSpec] = []
        self.refills: list[SandboxSpec] = []
        self.closed = False

    async def run(
        self,
        spec: SandboxSpec,
        *,
        sink: OutputSink | None = None,
        cancel: asyncio.Event | None = None,
        refill_later: bool = False,
    ) -> ExecResult:
        self.runs.append(spec)
        script = self._scripts(spec)
        if script.error is not None:
            raise script.error
        started = time.monotonic()
        captured: dict[Stream, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        truncated: set[Stream] = set()
        for stream, data in script.output:
            room = spec.limits.output_limit_bytes - len(captured[stream])
            if len(data) > room:
                data = data[:max(0, room)]
                truncated.add(stream)
            if data:
                captured[stream].extend(data)
                if sink is not None:
                    await sink(stream, data)
        error: str | None
        ended_by = await _sleep(min(script.sleep_s, spec.limits.timeout_s), spec.limits.timeout_s, cancel)
        if ended_by is not None:
            status, code, error = ended_by, _KILLED, ended_by.value  # "timeout", "cancelled"
        elif script.oom:
            status, code, error = ExecStatus.OOM, _KILLED, "memory_limit_exceeded"
        else:
            code = script.exit_code
            status, error = (ExecStatus.SUCCESS, None) if code == 0 else (ExecStatus.FAILED, None)
        return ExecResult(
            status=status,
            exit_code=code,
            stdout=bytes(captured["stdout"]),
            stderr=bytes(captured["stderr"]),
            stdout_truncated="stdout" in truncated,
            stderr_truncated="stderr" in truncated,
            duration_ms=round((time.monotonic() - started) * 1000),
            error=error,
        )

    async def start_session(self, spec: SandboxSpec) -> SessionSandbox:
        """The fake runs no interpreter: a session cannot start (the service says so)."""
        raise SandboxSetupError("session", "the fake runner has no sessions")

    def refill(self, spec: SandboxSpec) -> None:
        self.refills.append(spec)

    async def close(self) -> None:
        self.closed = True


async def _sleep(seconds: float, timeout_s: float, cancel: asyncio.Event | None) -> ExecStatus | None:
    """Sleep `seconds` (at most the timeout); TIMEOUT if it reached the timeout, CANCELLED if
    `cancel` was set first, else None."""
    if cancel is not None and cancel.is_set():
        return ExecStatus.CANCELLED
    if seconds <= 0:
        return None
    waiter = asyncio.ensure_future(cancel.wait() if cancel is not None else asyncio.sleep(seconds + 1))
    try:
        done, _ = await asyncio.wait({waiter}, timeout=seconds)
    finally:
        waiter.cancel()
    if cancel is not None and waiter in done:
        return ExecStatus.CANCELLED
    return ExecStatus.TIMEOUT if seconds >= timeout_s else None
