"""Platform failures: what the client is told, how they are counted, when /ready turns off.

A platform failure is an execution the platform could not run (the program never started:
`exit_code` -1), or whose thread home it could not save. Its result carries `error` (a platform
code) and `error_message`, which names the failing layer. The message is built from the layer,
the setup step and the OS error's name only, never from the exception's text: that text can
hold host paths (cgroup directories, mount points), so it goes to the server log, with the
trace id, and nowhere else. Platform errors never appear in `stderr` (spec §3.4).

Readiness: `threshold` failures of the sandbox runtime in a row (no sandbox ran in between),
all within `window_s`, turn the server not-ready (`/ready` 503 with the reason) until a fresh
self-check sandbox passes; it is tried every `recheck_s`. Executions are still admitted
meanwhile: a load balancer moves traffic away on /ready, while a client of this one server
still gets its run if the fault was transient, or a result naming the layer if not. Storage
failures (a volume, a thread's home) are counted but do not turn /ready off: the self-check
cannot test them, and they concern only the runs that use that storage.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ..errors import SandboxSetupError
from ..observability import Metrics

log = logging.getLogger("sandboxd.health")

#: The platform's error codes (spec §3.4 lists the storage ones; sandbox_error and
#: internal_error are sandboxd's). Each has a general message for records that lost the
#: specific one (e.g. stored by an older version).
PLATFORM_ERRORS = {
    "sandbox_error": "platform error: the sandbox could not be set up; the program did not run",
    "internal_error": "platform error: the server failed to run or record this execution",
    "volume_mount_error": "platform error in the volume layer: a volume could not be mounted; "
    "the program did not run",
    "storage_mount_error": "platform error in the storage layer: a storage connection could not be "
    "mounted; the program did not run",
    "connector_error": "platform error in the connectors layer: a connector could not be given to "
    "the run; the program did not run",
    "thread_mount_error": "platform error in the thread_home layer: the thread's home could not "
    "be prepared or saved; it keeps its previous state",
}

#: The `layer` label of sandboxd_platform_errors_total, by the prefix of the setup step that
#: failed (runtime/ names its steps); a step not listed is `sandbox`.
_STEP_LAYERS = (
    ("cgroup", "cgroup"),
    ("uid", "uids"),
    ("network", "network"),
    ("home slot", "home_slot"),
    ("interpreter", "interpreter"),
    ("subvolume", "storage"),
    ("thread storage", "storage"),
    ("storage mount", "storage"),
)
LAYERS = (
    *dict.fromkeys(layer for _, layer in _STEP_LAYERS), "sandbox", "runtime", "volume", "thread_home", "connectors",
)


@dataclass(frozen=True)
class PlatformFailure:
    code: str
    layer: str
    message: str
    #: A failure of the sandbox runtime, which the self-check tests: it counts for readiness.
    runtime: bool = True


def setup_failure(exc: SandboxSetupError) -> PlatformFailure:
    """A sandbox layer failed to set up (fail closed: the program did not run).

    A mount's directory refused at launch ("storage mount": a sandbox swapped a link in after
    the server's check, or a bucket's mount failed) is what a tenant's storage holds, not a
    fault of the runtime: it must not count toward turning /ready off, or a tenant racing
    its own links could take the node out of rotation."""
    layer = _layer_of(exc.step)
    runtime = not exc.step.startswith("storage mount")
    return PlatformFailure(exc.code, layer, _message(layer, _what(exc.step, exc)), runtime=runtime)


def runtime_failure(exc: BaseException) -> PlatformFailure:
    """An unexpected error in the sandbox runtime."""
    what = "unexpected " + _what(type(exc).__name__, exc)
    return PlatformFailure("internal_error", "runtime", _message("runtime", what))


def data_mount_failure(code: str, message: str, *, ran: bool = False) -> PlatformFailure:
    """A volume or bucket of /data could not be shown (or, `ran`, what the program wrote to a
    bucket could not be uploaded); `message` is already safe to show."""
    layer = "volume" if code == "volume_mount_error" else "storage"
    then = "the program ran, but what it wrote there may be lost" if ran else "the program did not run"
    return PlatformFailure(code, layer, f"{message}; {then}", runtime=False)


def connector_failure(message: str) -> PlatformFailure:
    """A connector's secret could not be opened for the run (`message` is safe to show)."""
    return PlatformFailure("connector_error", "connectors", f"{message}; the program did not run", runtime=False)


def thread_failure(exc: BaseException, *, saving: bool) -> PlatformFailure:
    """The thread's home could not be opened for the run, or its changes not saved after it."""
    step = exc.step if isinstance(exc, SandboxSetupError) else ("save" if saving else "open")
    then = "the program ran, but its changes to /home/baponi were not kept" if saving else None
    message = _message("thread_home", _what(step, exc), then)
    return PlatformFailure("thread_mount_error", "thread_home", message, runtime=False)


def _message(layer: str, what: str, then: str | None = None) -> str:
    return f"platform error in the {layer} layer ({what}); {then or 'the program did not run'}"


def _layer_of(step: str) -> str:
    return next((layer for prefix, layer in _STEP_LAYERS if step.startswith(prefix)), "sandbox")


def _what(step: str, exc: BaseException) -> str:
    """`step`, with the OS error's name when there is one (never a path)."""
    cause = exc if isinstance(exc, OSError) else exc.__cause__
    if isinstance(cause, OSError) and cause.errno:
        return f"{step}: {os.strerror(cause.errno)}"
    return step


class PlatformHealth:
    """Counts platform failures by layer; after repeated ones of the sandbox runtime the server is
    not ready until `check` (a fresh self-check sandbox) passes."""

    def __init__(
        self,
        metrics: Metrics,
        check: Callable[[], Awaitable[None]] | None = None,
        *,
        threshold: int = 3,
        window_s: float = 60.0,
        recheck_s: float = 5.0,
        check_timeout_s: float = 60.0,
    ) -> None:
        self._metrics = metrics
        self._check = check
        self._threshold = threshold if check is not None else 0
        self._window_s = window_s
        self._recheck_s = recheck_s
        self._check_timeout_s = check_timeout_s
        self._streak: list[float] = []  # monotonic times of the runtime failures in a row
        self._reason: str | None = None
        self._rechecks: asyncio.Task[None] | None = None

    @property
    def unready_reason(self) -> str | None:
        """Why the server is not ready (no host paths: /ready is unauthenticated); None if it is."""
        return self._reason

    def failed(self, failure: PlatformFailure) -> None:
        self._metrics.platform_errors.labels(failure.layer).inc()
        if not failure.runtime or self._threshold == 0:
            return
        now = time.monotonic()
        self._streak = [t for t in self._streak if now - t <= self._window_s]
        self._streak.append(now)
        if len(self._streak) >= self._threshold and self._reason is None:
            self._reason = (
                f"{len(self._streak)} platform errors in a row within {self._window_s:g} s, the last: "
                f"{failure.message}; not ready until a fresh sandbox self-check passes"
            )
            log.error("not ready: %s", self._reason)
            self._metrics.platform_unready.set(1)
            self._rechecks = asyncio.create_task(self._recheck_until_passed(), name="selfcheck")

    def ran(self) -> None:
        """A sandbox ran (whatever the program did): the streak is broken."""
        self._streak.clear()

    async def _recheck_until_passed(self) -> None:
        assert self._check is not None
        while True:
            await asyncio.sleep(self._recheck_s)
            try:
                await asyncio.wait_for(self._check(), self._check_timeout_s)
            except Exception as exc:  # the server log may name paths; /ready does not
                log.warning("self-check failed, still not ready: %s", exc)
                continue
            self._streak.clear()
            self._reason = None
            self._metrics.platform_unready.set(0)
            log.info("self-check passed: ready again")
            return

    async def close(self) -> None:
        if self._rechecks is not None:
            self._rechecks.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rechecks
