"""Executions: admit, record, run in the background, publish events, finish the record.

Every delivery mode is a view of the same background run: inline awaits its outcome, a
stream follows its event log, webhook mode answers at once and delivers when it ends. The
run never depends on the HTTP request that started it, so a client that disconnects loses
nothing: the events stay replayable and the result stays retrievable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import structlog

from ..bus import Event, EventLog, OutputEvents
from ..errors import Conflict, InvalidRequest, NotFound, SandboxSetupError, Unavailable
from ..ids import new_trace_id
from ..observability import Metrics
from ..observability.logging import get_logger
from ..runtime import ExecStatus, Language, Limits, Mount, Runner, SandboxSpec
from ..runtime.network import NetworkDecision, NetworkPolicy
from ..store import Execution, Store, utcnow
from .admission import ConcurrencyLimiter
from .health import (
    PLATFORM_ERRORS,
    PlatformFailure,
    PlatformHealth,
    runtime_failure,
    setup_failure,
    thread_failure,
    volume_failure,
)
from .keys import Principal
from .requests import ExecuteRequest
from .threads import ThreadService, WorkingCopy
from .volumes import VolumeMissing, VolumeService
from .webhooks import TERMINAL, WebhookService

log = logging.getLogger("sandboxd.executions")
events_log = get_logger("sandboxd.executions")


@dataclass(frozen=True)
class Outcome:
    """What every surface reports back for a finished execution."""

    trace_id: str
    status: str
    exit_code: int
    stdout: str
    stderr: str
    error: str | None
    duration_ms: int
    output_truncated: bool
    #: What the network policy decided for each destination the code asked for.
    network: tuple[NetworkDecision, ...] = ()
    #: A platform failure's message naming the failing layer (service/health.py); else None.
    error_message: str | None = None

    @property
    def success(self) -> bool:
        return self.status == ExecStatus.SUCCESS.value

    def result(self) -> dict[str, Any]:
        """The spec's SandboxResult object."""
        return {
            "success": self.success,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "exit_code": self.exit_code,
            "error": self.error,
            "error_message": self.error_message,
        }


@dataclass(frozen=True)
class EventSettings:
    """How output becomes events and how often a running log is written (settings
    `output_event_interval_ms`, `output_event_max_bytes`, `max_output_events`,
    `event_flush_interval_ms`)."""

    output_interval_s: float = 0.01
    output_max_bytes: int = 64 * 1024
    max_output_events: int = 10_000
    flush_interval_s: float = 0.1


@dataclass
class Submission:
    """A running execution: its event log, its cancel switch and the task that runs it."""

    trace_id: str
    org_id: str
    log: EventLog
    output: OutputEvents
    accepted_at: float = field(default_factory=time.monotonic)
    sandbox_s: float | None = None  # time in the sandbox, once it ran
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    interrupted: bool = False
    thread: WorkingCopy | None = None
    principal: Principal | None = None
    task: asyncio.Task[Outcome] | None = None
    #: Delivered by webhook: the delivery worker is woken when it ends.
    webhook: bool = False

    async def outcome(self) -> Outcome:
        """Wait for the end; cancelling the waiter (a client gone) does not stop the run."""
        assert self.task is not None
        return await asyncio.shield(self.task)


class ExecutionService:
    def __init__(
        self,
        store: Store,
        runner: Runner,
        limiter: ConcurrencyLimiter,
        defaults: Limits,
        webhooks: WebhookService,
        threads: ThreadService,
        volumes: VolumeService,
        *,
        keepalive_s: float = 15.0,
        metrics: Metrics | None = None,
        health: PlatformHealth | None = None,
        events: EventSettings | None = None,
        node_id: str | None = None,
    ) -> None:
        self._node_id = node_id  # recorded with each execution: service/recovery.py
        self._events = events or EventSettings()
        self._metrics = metrics or Metrics()
        self._health = health or PlatformHealth(self._metrics)
        self._closing = False
        self._threads = threads
        self._volumes = volumes
        self._store = store
        self._runner = runner
        self._limiter = limiter
        self._defaults = defaults
        self._webhooks = webhooks
        self._keepalive_s = keepalive_s
        self._live: dict[str, Submission] = {}

    @property
    def languages(self) -> frozenset[Language]:
        return self._runner.languages

    def limits_for(self, principal: Principal, request: ExecuteRequest) -> Limits:
        """The server's defaults, with the sandbox config's CPU and memory; a requested timeout
        above the config's cap is lowered to the cap."""
        return replace(
            self._defaults,
            cpus=principal.sandbox.cpus,
            memory_mib=principal.sandbox.memory_mib,
            timeout_s=min(request.timeout, principal.sandbox.timeout_cap_s),
        )

    # --- submit and run --------------------------------------------------------------------

    async def submit(
        self,
        principal: Principal,
        request: ExecuteRequest,
        *,
        delivery_mode: str = "inline",
        client_id: str | None = None,
    ) -> Submission:
        """Check, admit and start an execution; every refusal happens here, before any output."""
        accepted_at = time.monotonic()
        if self._closing:
            self._metrics.admission_rejections.labels("shutting_down").inc()
            raise Unavailable("the server is shutting down; retry shortly")
        if request.language not in self._runner.languages:
            raise InvalidRequest(f"language {request.language!r} is not available in this sandbox's image")
        if request.webhook_url is not None:
            if delivery_mode != "webhook":
                raise InvalidRequest("webhook_url is only used in webhook mode (header Prefer: respond-async)")
            await self._webhooks.check_request(principal.org.id, request.webhook_url)
        limits = self.limits_for(principal, request)
        spec = SandboxSpec(
            language=request.language,
            code=request.code.encode("utf-8", errors="surrogatepass"),
            limits=limits,
            env=dict(request.env_vars or {}),
            host_gid=principal.org.gid,
            network=NetworkPolicy.parse(principal.sandbox.network, principal.sandbox.network_allow or ()),
        )
        trace_id = new_trace_id()
        thread = None
        if request.thread_id is not None:  # 409 for a busy thread comes before everything else
            try:
                thread = await self._threads.claim(principal.org.id, request.thread_id, trace_id)
            except Conflict:
                self._metrics.admission_rejections.labels("thread_busy").inc()
                raise
        try:
            release = await self._limiter.acquire(principal.org.id, principal.org.max_concurrent)
        except BaseException:
            if thread is not None:
                await self._threads.close(thread, keep=False)
            raise
        try:
            await self._store.executions.add(
                Execution(
                    trace_id=trace_id,
                    org_id=principal.org.id,
                    key_id=principal.key_id,
                    language=request.language,
                    # Admission is immediate (a refusal, never a queue): stored as running at
                    # once, one write fewer on the hot path. The event log still says queued first.
                    status="running",
                    timeout_s=int(limits.timeout_s),
                    delivery_mode=delivery_mode,
                    created_at=utcnow(),
                    client_id=client_id[:128] if client_id else None,
                    thread_id=request.thread_id,
                    metadata=dict(request.metadata) if request.metadata else None,
                    webhook_url=request.webhook_url,
                    webhook_delivery_status="pending" if request.webhook_url else None,
                    node_id=self._node_id,
                )
            )
            if request.webhook_url:
                await self._webhooks.register(trace_id, principal.org.id, request.webhook_url)
            submission = self._submission(
                trace_id=trace_id, org_id=principal.org.id, accepted_at=accepted_at,
                thread=thread, principal=principal, webhook=request.webhook_url is not None,
            )
            await submission.log.append("status", trace_id=trace_id, status="queued")
        except BaseException:
            release()
            if thread is not None:
                await self._threads.close(thread, keep=False)
            raise
        self._live[trace_id] = submission
        structlog.contextvars.bind_contextvars(trace_id=trace_id)  # the run's task inherits it
        submission.task = asyncio.create_task(self._run(submission, spec, release), name=trace_id)
        return submission

    def _submission(self, trace_id: str, **fields: Any) -> Submission:
        """A submission whose event log is stored as it goes (module `bus.log`)."""

        async def write(events: list[Event]) -> None:
            await self._store.events.add(trace_id, [(e.seq, e.type, e.body) for e in events])

        settings = self._events
        log = EventLog(write, flush_interval_s=settings.flush_interval_s)
        output = OutputEvents(
            log, interval_s=settings.output_interval_s, max_bytes=settings.output_max_bytes,
            max_events=settings.max_output_events,
        )
        return Submission(trace_id=trace_id, log=log, output=output, **fields)

    async def execute(
        self,
        principal: Principal,
        request: ExecuteRequest,
        *,
        delivery_mode: str = "inline",
        client_id: str | None = None,
    ) -> Outcome:
        submission = await self.submit(principal, request, delivery_mode=delivery_mode, client_id=client_id)
        return await submission.outcome()

    async def _run(self, sub: Submission, spec: SandboxSpec, release: Callable[[], None]) -> Outcome:
        keepalive = asyncio.create_task(self._keepalives(sub.log))
        outcome: Outcome | None = None
        try:
            await sub.log.append("status", trace_id=sub.trace_id, status="running")
            assert sub.principal is not None
            try:
                volumes = await self._volumes.mounts(sub.principal)
                mounts = tuple(Mount(str(v.path), f"/data/{v.volume.slug}", v.read_only) for v in volumes)
                spec = replace(spec, mounts=mounts)
            except (VolumeMissing, SandboxSetupError, OSError) as exc:
                log.error("execution %s: volumes: %s", sub.trace_id, exc)
                outcome = self._platform_failure(sub, volume_failure(exc))
            if sub.thread is not None and outcome is None:
                try:
                    home = await self._threads.open(sub.thread, sub.trace_id, spec.host_gid)
                    spec = replace(spec, home=home, host_uid=sub.thread.thread.uid)
                except Exception as exc:
                    log.error("execution %s: thread home: %s", sub.trace_id, exc)
                    outcome = self._platform_failure(sub, thread_failure(exc, saving=False))
            if outcome is None:
                outcome = await self._sandbox(sub, spec)
        finally:
            keepalive.cancel()
            release()
            if sub.thread is not None:
                # A thread keeps what a run that ended by itself wrote; after a timeout, OOM,
                # cancel or platform failure it keeps its previous state.
                keep = outcome is not None and outcome.error is None
                try:
                    await self._threads.close(sub.thread, keep=keep)
                except Exception as exc:
                    log.exception("execution %s: saving the thread home failed", sub.trace_id)
                    if keep and outcome is not None:  # its writes are lost: say so
                        failure = thread_failure(exc, saving=True)
                        self._health.failed(failure)
                        outcome = replace(
                            outcome, status="failed", error=failure.code, error_message=failure.message
                        )
        try:
            await self._finish(sub, outcome)
        finally:
            self._live.pop(sub.trace_id, None)
            if sub.webhook:
                self._webhooks.kick()
            self._observe(sub, spec.language, outcome)
            # The replacement sandbox starts once this task is done: its done-callbacks run in
            # order, so the inline response (whose handler awaits this task) is written first.
            # On a small machine a start racing the result's write slows the answer by 10 ms.
            if (task := asyncio.current_task()) is not None:
                task.add_done_callback(lambda _: self._runner.refill(spec))  # spec is final here
        return outcome

    def _observe(self, sub: Submission, language: str, outcome: Outcome) -> None:
        """Count the execution and log one line for it (never its code, env or output)."""
        wall_s = time.monotonic() - sub.accepted_at
        status = outcome.status if outcome.error_message is None else "platform_error"
        self._metrics.executions.labels(language, status).inc()
        if sub.sandbox_s is not None:
            self._metrics.execution_overhead.labels(language).observe(max(0.0, wall_s - sub.sandbox_s))
        events_log.info(
            "execution finished", language=language, status=outcome.status, error=outcome.error,
            exit_code=outcome.exit_code, duration_ms=outcome.duration_ms, wall_ms=round(wall_s * 1000),
        )

    async def _sandbox(self, sub: Submission, spec: SandboxSpec) -> Outcome:
        try:
            with self._metrics.active_sandboxes.track_inprogress():
                result = await self._runner.run(spec, sink=sub.output.write, cancel=sub.cancel, refill_later=True)
        except SandboxSetupError as exc:
            log.error("execution %s: %s", sub.trace_id, exc.message)
            return self._platform_failure(sub, setup_failure(exc))
        except Exception as exc:
            log.exception("execution %s failed in the runtime", sub.trace_id)
            return self._platform_failure(sub, runtime_failure(exc))
        self._health.ran()
        sub.sandbox_s = result.duration_ms / 1000
        self._metrics.execution_duration.labels(spec.language).observe(sub.sandbox_s)
        status, error = result.status.value, result.error
        if sub.interrupted:
            status, error = "failed", "interrupted"
        return Outcome(
            trace_id=sub.trace_id,
            status=status,
            exit_code=result.exit_code,
            stdout=result.stdout.decode("utf-8", errors="replace"),
            stderr=result.stderr.decode("utf-8", errors="replace"),
            error=error,
            duration_ms=result.duration_ms,
            output_truncated=result.output_truncated,
            network=result.network,
        )

    def _platform_failure(self, sub: Submission, failure: PlatformFailure) -> Outcome:
        """The process never ran: exit code -1, the platform's error code (spec §3.4) and a
        message naming the layer (never in stderr); counted apart from programs that failed."""
        self._health.failed(failure)
        return Outcome(
            sub.trace_id, "failed", -1, "", "", failure.code, 0, False, error_message=failure.message
        )

    async def _finish(self, sub: Submission, outcome: Outcome) -> None:
        """Record the result, close the log with the result event, keep the log for replays.

        The result event is published even if the store fails, so no follower waits forever.
        The row and the rest of the event log (result included) are written in one
        transaction; the output is stored once, in the output events (`store.ExecutionRepo.finish`).
        """
        await sub.output.drain()
        result = {
            "trace_id": sub.trace_id,
            "status": outcome.status,
            "result": outcome.result(),
            "output_truncated": outcome.output_truncated,
        }
        logged = {stream: "".join(
            e.body["data"] for e in sub.log.events if e.type == "output" and e.body["stream"] == stream
        ) for stream in ("stdout", "stderr")}

        async def write(events: list[Event]) -> None:
            await self._store.executions.finish(
                sub.trace_id,
                [(e.seq, e.type, e.body) for e in events],
                logged,
                status=outcome.status,
                exit_code=outcome.exit_code,
                stdout=outcome.stdout,
                stderr=outcome.stderr,
                output_truncated=outcome.output_truncated,
                error=outcome.error,
                duration_ms=outcome.duration_ms,
                completed_at=utcnow(),
                network_log=[asdict(d) for d in outcome.network] or None,
            )

        try:
            await sub.log.close(write, **result)
        except Exception:
            log.exception("execution %s: recording the result failed", sub.trace_id)
            with contextlib.suppress(Exception):
                await self._store.executions.update(
                    sub.trace_id, status="failed", exit_code=-1, error="internal_error",
                    stdout="", stderr="", completed_at=utcnow(),
                )
            raise

    async def _keepalives(self, log: EventLog) -> None:
        """A keepalive whenever nothing else was published for `keepalive_s`."""
        while True:
            due = log.last_append + self._keepalive_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if time.monotonic() >= log.last_append + self._keepalive_s and not log.closed:
                await log.append("keepalive")

    # --- read, follow, cancel ----------------------------------------------------------------

    async def get(self, principal: Principal, trace_id: str) -> Execution:
        """An execution of the caller's organization; any other is indistinguishable from none."""
        execution = await self._store.executions.get(trace_id)
        if execution is None or execution.org_id != principal.org.id:
            raise NotFound(f"no execution {trace_id!r}")
        return execution

    async def error_message(self, execution: Execution) -> str | None:
        """A finished platform failure's message naming the layer, from its stored result event
        (no column holds it); None when there is none (documents.py then gives the code's)."""
        if execution.error not in PLATFORM_ERRORS or execution.status not in TERMINAL:
            return None
        if execution.exit_code != -1 and execution.error != "thread_mount_error":
            return None  # the program ran and nothing failed after it: its log can be long
        for _, kind, body in reversed(await self._store.events.after(execution.trace_id, 0)):
            if kind == "result":
                message = (body.get("result") or {}).get("error_message")
                return message if isinstance(message, str) else None
        return None

    async def events(self, principal: Principal, trace_id: str, after_seq: int = 0) -> AsyncIterator[Event]:
        """Events after `after_seq`: live while it runs, from the store once it has ended.

        Raises NotFound before the first event, so a surface can answer 404 before streaming.
        """
        execution = await self.get(principal, trace_id)
        live = self._live.get(trace_id)
        if live is not None:
            return live.log.follow(after_seq)
        stored = await self._store.events.after(trace_id, after_seq)
        if execution.status in TERMINAL and not (stored and stored[-1][1] == "result"):
            # Ended, but its result is not stored (its last write failed, or a restart before
            # version 0006 ended it): a reconnect still ends with a result, numbered after
            # anything the client or the store has, so no seq is reused.
            last = await self._store.events.last(trace_id)
            if last is None or last[1] != "result":
                stored += _synthesized(execution, after=max(after_seq, last[0] if last else 0))
        return _iterate([Event(seq=s, type=t, body=b) for s, t, b in stored])  # type: ignore[arg-type]  # a stored type is a str

    async def cancel(self, principal: Principal, trace_id: str) -> str:
        """Ask a running execution to stop; returns `cancelling`, or the final status if it ended."""
        execution = await self.get(principal, trace_id)
        live = self._live.get(trace_id)
        if live is None or execution.status in TERMINAL:
            return execution.status
        live.cancel.set()
        await self._store.executions.move(trace_id, to="cancelling", only_from=("queued", "running"))
        return "cancelling"

    @property
    def closing(self) -> bool:
        return self._closing

    async def shutdown(self, grace_s: float = 0.0) -> None:
        """Stop: refuse new executions (503), let running ones finish for `grace_s`, then kill
        them; they are recorded failed/interrupted, with the output they had written."""
        self._closing = True
        running = [s for s in self._live.values() if s.task is not None]
        if running and grace_s > 0:
            await asyncio.wait([s.task for s in running if s.task], timeout=grace_s)
        for sub in list(self._live.values()):
            sub.interrupted = True
            sub.cancel.set()
        tasks = [s.task for s in running if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=30)


async def _iterate(events: list[Event]) -> AsyncIterator[Event]:
    for event in events:
        yield event


def _synthesized(e: Execution, *, after: int) -> list[tuple[int, str, dict[str, Any]]]:
    """The status and result of a terminal execution whose result is not stored, numbered
    from `after` + 1."""
    result = {
        "success": e.status == "success",
        "stdout": e.stdout or "",
        "stderr": e.stderr or "",
        "exit_code": e.exit_code if e.exit_code is not None else -1,
        "error": e.error,
    }
    return [
        (after + 1, "status", {"trace_id": e.trace_id, "status": e.status}),
        (after + 2, "result", {"trace_id": e.trace_id, "status": e.status, "result": result,
                       "output_truncated": e.output_truncated}),
    ]
