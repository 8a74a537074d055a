"""Executions: check, admit, record and hand each one to its job; read, follow and cancel them.

Every delivery mode is a view of the same background job (job.py): inline awaits its
outcome, a stream follows its event log, webhook mode answers at once and delivers when it
ends. The job never depends on the HTTP request that started it, so a client that
disconnects loses nothing: the events stay replayable and the result stays retrievable.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace

import structlog

from ..bus import Event, OutputEvents
from ..errors import Conflict, InvalidRequest, NotFound, Unavailable
from ..ids import new_trace_id
from ..observability import Metrics
from ..runtime import HOST_IMAGE, Language, Limits, RootImage, Runner, spoken
from ..store import Execution, Store, utcnow
from .events import EventSettings, StoredEventLogs
from .health import PLATFORM_ERRORS, PlatformHealth
from . import data_mounts, plans
from .images import ImageService
from .job import ExecutionJobs, Held, JobDescription, Outcome, Submission
from .keys import Principal
from .ports import Admission, EventLogs
from .requests import ExecuteRequest
from .roles import Actor
from ..runtime.network import BROKER_ENV_NAMES
from .artifacts import Artifacts
from .audit import AuditLog
from .connectors import ConnectorBinding, ConnectorService
from .sessions import Sessions
from .storage import StorageMountBinding, StorageService
from .threads import ThreadService, WorkingCopy
from .volumes import VolumeBinding, VolumeService
from .webhooks import TERMINAL, WebhookService


class ExecutionService:
    def __init__(
        self,
        store: Store,
        runner: Runner,
        limiter: Admission,
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
        images: ImageService | None = None,
        storage: StorageService | None = None,
        connectors: ConnectorService | None = None,
        artifacts: Artifacts | None = None,
        sessions: Sessions | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self._node_id = node_id
        self._images = images  # recorded with each execution: service/recovery.py
        self._metrics = metrics or Metrics()
        self._closing = False
        self._threads = threads
        self._store = store
        self._runner = runner
        self._limiter = limiter
        self._defaults = defaults
        self._webhooks = webhooks
        self._event_settings = events or EventSettings()
        self._logs: EventLogs = StoredEventLogs(store, self._event_settings)
        self._jobs = ExecutionJobs(
            store, runner, threads, volumes, webhooks, keepalive_s=keepalive_s, metrics=self._metrics,
            health=health or PlatformHealth(self._metrics), storage=storage, connectors=connectors,
            artifacts=artifacts,
            sessions=sessions,
            audit=audit,
        )
        self._live: dict[str, Submission] = {}

    @property
    def languages(self) -> frozenset[Language]:
        return self._runner.languages

    def limits_for(self, principal: Principal, request: ExecuteRequest) -> Limits:
        """The server's defaults, with the sandbox config's CPU and memory; a requested timeout
        above the config's cap (or the plan's, if lower) is lowered to it."""
        cap_s, _ = plans.timeout_cap(principal.plan, principal.sandbox.timeout_cap_s)
        return replace(
            self._defaults,
            cpus=principal.sandbox.cpus,
            memory_mib=principal.sandbox.memory_mib,
            timeout_s=min(request.timeout, cap_s),
        )

    # --- submit --------------------------------------------------------------------------------

    async def submit(
        self,
        principal: Principal,
        request: ExecuteRequest,
        *,
        delivery_mode: str = "inline",
        client_id: str | None = None,
        base_url: str = "",
        progress: bool = False,
        client_ip: str | None = None,
        member: Actor | None = None,
    ) -> Submission:
        """Check, admit, record and start an execution; every refusal happens here, before any
        output. What it takes (the thread lock, an admission slot) goes back through one stack:
        here if a later step fails, else when the job ends. `progress`: an MCP caller asked for
        its output as progress notifications (streaming, as the plan sees it). `member`: the
        console's signed-in member who ran it ("Try it"), named on the execution's audit row."""
        accepted_at = time.monotonic()
        if self._closing:
            self._metrics.admission_rejections.labels("shutting_down").inc()
            raise Unavailable("the server is shutting down; retry shortly")
        plan = principal.plan
        plans.check_delivery(plan, "mcp-progress" if progress else delivery_mode)
        sandbox = principal.sandbox  # a config left over the plan by a downgrade runs no more
        plans.check_sandbox_config(plan, cpus=sandbox.cpus, memory_mib=sandbox.memory_mib, name=sandbox.name)
        image = self.image_of(principal)
        if request.language not in (found := self.languages_of(image)):
            has = spoken(sorted(found), "and") if found else "no language sandboxd runs"
            raise InvalidRequest(
                f"language {request.language!r} is not available in image {image.name!r} (it has {has})"
            )
        if request.webhook_url is not None:
            if delivery_mode != "webhook":
                raise InvalidRequest("webhook_url is only used in webhook mode (header Prefer: respond-async)")
            await self._webhooks.check_request(principal.org.id, request.webhook_url)
        job = replace(
            self._describe(new_trace_id(), principal, request, image), base_url=base_url, client_ip=client_ip,
            member_id=member.id if member is not None else None,
            member_email=member.name if member is not None else None,
        )
        _check_connector_variables(job)
        job.spec()  # a sandbox config that cannot be run is refused before anything is recorded
        shown = data_mounts.plan(job.volumes, job.storage, job.sub_paths)  # 400 for a stray sub_path
        async with AsyncExitStack() as stack:
            thread = None
            if request.thread_id is not None:  # 409 for a busy thread comes before everything else
                thread = await self._claim(principal.org.id, request.thread_id, job.trace_id)
                stack.push_async_callback(self._threads.release, thread)
            stack.callback(await self._limiter.acquire(
                principal.org.id, plan.limits.concurrent,
                over_cap=lambda count, cap: plans.concurrency_refused(plan, count, cap),
            ))
            record = await self._record(job, principal, request, delivery_mode, client_id, shown)
            submission = self._submission(job.trace_id, accepted_at)
            submission.record = record
            await submission.log.append("status", trace_id=job.trace_id, status="queued")
            held = Held(stack.pop_all(), thread)
        self._live[job.trace_id] = submission
        structlog.contextvars.bind_contextvars(trace_id=job.trace_id)  # the job's task inherits it
        submission.task = asyncio.create_task(self._run(job, submission, held), name=job.trace_id)
        return submission

    def image_of(self, principal: Principal) -> RootImage:
        """The root the principal's runs use: its sandbox config's image, or `host`."""
        if principal.image is None:
            if principal.sandbox.image_id is not None:
                raise Unavailable(f"the image of sandbox {principal.sandbox.name!r} was deleted; give it another")
            return HOST_IMAGE
        if self._images is None:
            raise Unavailable("this server runs no images")
        return self._images.runtime(principal.image)

    def languages_of(self, image: RootImage) -> frozenset[Language]:
        return self._runner.languages if image.root is None else image.languages

    def languages_for(self, principal: Principal) -> frozenset[Language]:
        """The languages the principal's runs may use (none while its image is gone)."""
        try:
            return self.languages_of(self.image_of(principal))
        except Unavailable:
            return frozenset()

    def _describe(self, trace_id: str, principal: Principal, request: ExecuteRequest, image: RootImage) -> JobDescription:
        sandbox = principal.sandbox
        return JobDescription(
            trace_id=trace_id,
            org_id=principal.org.id,
            org_gid=principal.org.gid,
            key_id=principal.key_id,
            language=request.language,
            code=request.code,
            env=dict(request.env_vars or {}),
            limits=self.limits_for(principal, request),
            network=sandbox.network,
            network_allow=tuple(sandbox.network_allow or ()),
            volumes=VolumeBinding.of(principal),
            thread_id=request.thread_id,
            webhook=request.webhook_url is not None,
            image=image,
            storage=StorageMountBinding.of(principal),
            sub_paths=tuple(request.sub_paths) if request.sub_paths is not None else None,
            connectors=ConnectorBinding.of(principal),
            requested_timeout_s=request.timeout,
            session=sandbox.session,
            timeout_cap_by=plans.timeout_cap(principal.plan, sandbox.timeout_cap_s)[1],
            key_prefix=principal.key.display_prefix if principal.key is not None else None,
            audit_code=principal.org.audit_code,
        )

    async def _claim(self, org_id: str, thread_id: str, trace_id: str) -> WorkingCopy:
        try:
            return await self._threads.claim(org_id, thread_id, trace_id)
        except Conflict:
            self._metrics.admission_rejections.labels("thread_busy").inc()
            raise

    async def _record(
        self, job: JobDescription, principal: Principal, request: ExecuteRequest, delivery_mode: str,
        client_id: str | None, shown: list[data_mounts.Scoped],
    ) -> Execution:
        record = Execution(
            trace_id=job.trace_id,
            org_id=job.org_id,
            key_id=job.key_id,
            language=job.language,
            # Admission is immediate (a refusal, never a queue): stored as running at
            # once, one write fewer on the hot path. The event log still says queued first.
            status="running",
            timeout_s=int(job.limits.timeout_s),
            delivery_mode=delivery_mode,
            created_at=utcnow(),
            client_id=client_id[:128] if client_id else None,
            thread_id=job.thread_id,
            metadata=dict(request.metadata) if request.metadata else None,
            webhook_url=request.webhook_url,
            webhook_delivery_status="pending" if request.webhook_url else None,
            node_id=self._node_id,
            image_name=job.image.name,
            image_digest=job.image.digest,
            storage=[m.record() for m in shown] or None,
            connectors=[c.record() for c in job.connectors] or None,
        )
        await self._store.executions.add(record)
        if request.webhook_url:
            await self._webhooks.register(job.trace_id, job.org_id, request.webhook_url)
        return record

    def _submission(self, trace_id: str, accepted_at: float) -> Submission:
        log = self._logs.open(trace_id)
        settings = self._event_settings
        output = OutputEvents(
            log, interval_s=settings.output_interval_s, max_bytes=settings.output_max_bytes,
            max_events=settings.max_output_events,
        )
        return Submission(trace_id=trace_id, log=log, output=output, accepted_at=accepted_at)

    async def _run(self, job: JobDescription, submission: Submission, held: Held) -> Outcome:
        try:
            return await self._jobs.run(job, submission, held)
        finally:
            self._live.pop(job.trace_id, None)

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
        for event in reversed(await self._logs.replay(execution.trace_id)):
            if event.type == "result":
                message = (event.body.get("result") or {}).get("error_message")
                return message if isinstance(message, str) else None
        return None

    async def events(self, principal: Principal, trace_id: str, after_seq: int = 0) -> AsyncIterator[Event]:
        """Events after `after_seq`: live while it runs, from the store once it has ended.

        Raises NotFound before the first event, so a surface can answer 404 before streaming;
        Forbidden for following a running one on a plan without streaming (a replay is not).
        """
        execution = await self.get(principal, trace_id)
        live = self._live.get(trace_id)
        if live is not None:
            plans.check_delivery(principal.plan, "streaming")  # following it live is streaming
            return live.log.follow(after_seq)
        stored = await self._logs.replay(trace_id, after_seq)
        if execution.status in TERMINAL and not (stored and stored[-1].type == "result"):
            # Ended, but its result is not stored (its last write failed, or a restart before
            # version 0006 ended it): a reconnect still ends with a result, numbered after
            # anything the client or the store has, so no seq is reused.
            last = await self._logs.last(trace_id)
            if last is None or last[1] != "result":
                stored += _synthesized(execution, after=max(after_seq, last[0] if last else 0))
        return _iterate(stored)

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


def _synthesized(e: Execution, *, after: int) -> list[Event]:
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
        Event(after + 1, "status", {"trace_id": e.trace_id, "status": e.status}),
        Event(after + 2, "result", {"trace_id": e.trace_id, "status": e.status, "result": result,
                             "output_truncated": e.output_truncated}),
    ]


def _check_connector_variables(job: JobDescription) -> None:
    """A request may not set a variable its key's connectors set: the connector's value is
    the admin's decision, and silently replacing either one would surprise someone."""
    if any(b.kind == "http" for b in job.connectors):
        for name in sorted(BROKER_ENV_NAMES & job.env.keys()):
            raise InvalidRequest(
                f"env_vars key {name!r} is set by the network for the key's brokered connectors; leave it out"
            )
    for binding in job.connectors:
        for name in binding.variables:
            if name in job.env:
                raise InvalidRequest(
                    f"env_vars key {name!r} is set by the key's connector {binding.name!r}; leave it out"
                )
