"""The execution job: prepare mounts and storage, run, commit the thread's state, record the result.

Submission (executions.py) decides what runs and under which limits, and holds the thread
lock and the admission slot; the job is handed a `JobDescription` of plain values and the
stack that releases what submission holds. Everything that depends on the node that runs the
sandbox (volume paths, the thread's working copy and host uid, the runner) is resolved here,
so an executor node given only the description could do the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection

from ..buckets.mounts import Lease
from ..buckets.rclone import MountFailed
from ..bus import Event, ExecutionLog, OutputEvents
from ..errors import SandboxSetupError
from ..observability import Metrics
from ..observability.logging import get_logger
from ..runtime import ExecResult, ExecStatus, Language, Limits, RootImage, Runner, SandboxSpec, SessionStartFailed
from ..runtime.session import PICTURE_TYPES
from ..runtime.network import NetworkDecision, NetworkPolicy
from ..store import Execution, Store, utcnow
from ..store.plans import add_usage
from ..connectors.redact import Redactor
from .artifacts import Artifacts
from .audit import AuditLog, ExecutionFacts
from .connectors import ConnectorBinding, ConnectorError, ConnectorService
from .data_mounts import DataMountError, DataMounts
from .documents import empty_extras
from .notes import notes_for
from .health import (
    PlatformFailure,
    PlatformHealth,
    connector_failure,
    data_mount_failure,
    runtime_failure,
    setup_failure,
    thread_failure,
)
from .storage import StorageMountBinding, StorageService
from .sessions import Session, Sessions, ThreadSessions, fingerprint
from .threads import ThreadService, WorkingCopy
from .volumes import VolumeBinding, VolumeService

log = logging.getLogger("sandboxd.executions")
events_log = get_logger("sandboxd.executions")


@dataclass(frozen=True)
class JobDescription:
    """Everything an execution job needs, as plain values: it travels as JSON (`to_json`)."""

    trace_id: str
    org_id: str
    #: The organization's host group (a database fact, the same on every node).
    org_gid: int | None
    key_id: str | None
    language: Language
    code: str
    env: dict[str, str]
    #: Decided at submission: the server's defaults, the sandbox config's CPU and memory, the
    #: requested timeout within the config's cap.
    limits: Limits
    network: str
    network_allow: tuple[str, ...]
    volumes: tuple[VolumeBinding, ...]
    thread_id: str | None
    #: Delivered by webhook: the delivery worker is woken when the job ends.
    webhook: bool
    #: The root it runs on (the sandbox config's image, as found at submission).
    image: RootImage
    #: The buckets bound to the key (service/storage.py).
    storage: tuple[StorageMountBinding, ...] = ()
    #: The request's `sub_paths` (service/scoping.py); None: every mount whole.
    sub_paths: tuple[str, ...] | None = None
    #: The connectors bound to the key, by id (their secrets are opened where the job runs).
    connectors: tuple[ConnectorBinding, ...] = ()
    #: The server's URL as the submitting client reached it: artifact URLs start with it
    #: ("": they are relative, `/v1/artifacts/...`).
    base_url: str = ""
    #: The timeout the request asked for (seconds), before the sandbox config's cap (notes.py).
    requested_timeout_s: int | None = None
    #: The sandbox config's session mode: "persistent" runs a thread's code in its session.
    session: str = "stateless"
    #: Who set the timeout cap when it is not the key's sandbox config: "the Free plan's limit".
    timeout_cap_by: str | None = None
    #: For the audit row (service/audit.py): the key's display prefix, the client's address,
    #: and whether the organization's rows keep the code.
    key_prefix: str | None = None
    client_ip: str | None = None
    audit_code: bool = False
    #: Run from the console's "Try it" by this member (its id and email; None: not from the
    #: console). Set by the server from the signed-in session, never from the request.
    member_id: str | None = None
    member_email: str | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> JobDescription:
        data = json.loads(text)
        return cls(**{
            **data,
            "limits": Limits(**data["limits"]),
            "network_allow": tuple(data["network_allow"]),
            "volumes": tuple(VolumeBinding(**v) for v in data["volumes"]),
            "storage": tuple(StorageMountBinding(**b) for b in data.get("storage", ())),
            "connectors": tuple(
                ConnectorBinding(**{**b, "variables": tuple(b["variables"])}) for b in data.get("connectors", ())
            ),
            "sub_paths": tuple(data["sub_paths"]) if data.get("sub_paths") is not None else None,
            "session": data.get("session", "stateless"),
            "image": RootImage(**{
                **data["image"],
                "binaries": tuple(tuple(pair) for pair in data["image"]["binaries"]),
                "env": tuple(tuple(pair) for pair in data["image"]["env"]),
            }),
        })

    def environment(self) -> str:
        """What a session is started with besides the code (service/sessions.py): a run on
        another image, limits, network, mounts or connectors cannot use it."""
        return fingerprint(
            self.language, self.org_gid, self.key_id, asdict(self.image), asdict(replace(self.limits, timeout_s=0)),
            self.network, self.network_allow, self.volumes, self.storage, self.sub_paths, self.connectors,
        )

    def spec(self) -> SandboxSpec:
        """The sandbox, before this node adds mounts, the thread's home and its uid."""
        return SandboxSpec(
            language=self.language,
            code=self.code.encode("utf-8", errors="surrogatepass"),
            limits=self.limits,
            env=dict(self.env),
            host_gid=self.org_gid,
            network=NetworkPolicy.parse(self.network, self.network_allow),
            image=self.image,
        )


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
    #: A persistent session's `{"state": "new"|"kept"|"reset", "reason": ...}` (service/sessions.py).
    session: dict[str, str | None] | None = None
    #: Rich outputs: `{"type": "image/png", "data": ..., ["truncated": True, "size": n]}`.
    outputs: tuple[dict[str, Any], ...] = ()
    #: Files written under /data/outputs/: `{"path", "size", "url", "expires_at"}`.
    artifacts: tuple[dict[str, Any], ...] = ()
    #: What the agent should know about how it ran (a timeout lowered, output cut, ...).
    notes: tuple[str, ...] = ()
    #: The streams cut at the output cap ("stdout", "stderr"): for the note that says so.
    streams_truncated: tuple[str, ...] = ()
    #: What the sandbox's cgroup counted: `{"cpu_ms", "memory_peak_bytes"}`; None: not measured
    #: (the program never ran, or a runtime without cgroups). Stored in the execution's extras.
    resources: dict[str, int] | None = None

    @property
    def success(self) -> bool:
        return self.status == ExecStatus.SUCCESS.value

    def extras(self) -> dict[str, Any]:
        """What sandboxd's result says besides the spec's fields (SDKs ignore them)."""
        return {
            "session": self.session,
            "outputs": list(self.outputs),
            "artifacts": list(self.artifacts),
            "notes": list(self.notes),
        }

    def result(self) -> dict[str, Any]:
        """The spec's SandboxResult object, and sandboxd's extras."""
        return {
            "success": self.success,
            "stdout": self.stdout,
            "stderr": self.stderr,
            "exit_code": self.exit_code,
            "error": self.error,
            "error_message": self.error_message,
            **self.extras(),
        }


@dataclass
class Submission:
    """A running execution: its event log, its cancel switch and the task that runs it."""

    trace_id: str
    log: ExecutionLog
    output: OutputEvents
    accepted_at: float = field(default_factory=time.monotonic)
    sandbox_s: float | None = None  # time in the sandbox, once it ran
    started_at: datetime | None = None  # when the job began preparing it (audit rows)
    #: The execution's row as submission recorded it (None: submitted elsewhere, read it back).
    record: Execution | None = None
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    interrupted: bool = False
    task: asyncio.Task[Outcome] | None = None

    async def outcome(self) -> Outcome:
        """Wait for the end; cancelling the waiter (a client gone) does not stop the run."""
        assert self.task is not None
        return await asyncio.shield(self.task)


@dataclass
class Held:
    """What submission holds for the job: `stack` gives back the admission slot and the thread
    lock (dropping an uncommitted working copy), once, however the job ends."""

    stack: AsyncExitStack
    thread: WorkingCopy | None = None


def _redacted(item: dict[str, Any], redactor: Redactor) -> dict[str, Any]:
    """A rich output with the connectors' secrets masked (text kinds; images are pixels)."""
    if not redactor or item["type"] in PICTURE_TYPES:
        return item
    return {**item, "data": redactor.redact(item["data"].encode()).decode("utf-8", "replace")}


def usage_of(job: JobDescription, outcome: Outcome) -> tuple[float, float]:
    """What one execution adds to its organization's month besides its count: CPU-seconds
    (the cgroup's count; 0 when not measured) and GiB-seconds (the sandbox's memory limit in
    GiB times the time it ran)."""
    cpu_s = (outcome.resources or {}).get("cpu_ms", 0) / 1000
    gib_s = job.limits.memory_mib / 1024 * outcome.duration_ms / 1000
    return cpu_s, gib_s


class Kick(Protocol):
    def kick(self) -> None:
        """An execution ended: look for due webhook deliveries now."""


class ExecutionJobs:
    """Runs execution jobs on this node."""

    def __init__(
        self,
        store: Store,
        runner: Runner,
        threads: ThreadService,
        volumes: VolumeService,
        webhooks: Kick,
        *,
        keepalive_s: float,
        metrics: Metrics,
        health: PlatformHealth,
        storage: StorageService | None = None,
        connectors: ConnectorService | None = None,
        artifacts: Artifacts | None = None,
        sessions: Sessions | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self._store = store
        self._audit = audit
        self._sessions = sessions
        self._connectors = connectors
        self._artifacts = artifacts
        self._runner = runner
        self._threads = threads
        self._data = DataMounts(volumes, storage)
        self._webhooks = webhooks
        self._keepalive_s = keepalive_s
        self._metrics = metrics
        self._health = health

    async def run(self, job: JobDescription, sub: Submission, held: Held) -> Outcome:
        keepalive = asyncio.create_task(self._keepalives(sub.log))
        outcome: Outcome | None = None
        spec: SandboxSpec | None = None
        try:
            async with held.stack:
                sub.started_at = utcnow()
                await sub.log.append("status", trace_id=job.trace_id, status="running")
                if self._sessions is not None and held.thread is not None:
                    if job.session == "persistent":
                        outcome = await self._session_run(job, sub, job.spec(), held.thread, self._sessions)
                    else:  # a stateless run commits the thread's home: its sessions are stale
                        await self._sessions.end(job.org_id, held.thread.thread.thread_id, "changed")
                if outcome is None:
                    outcome, spec = await self._prepared_run(job, sub, job.spec(), held.thread)
                    if held.thread is not None and outcome.error is None:
                        outcome = await self._save(job, held.thread, outcome)
        except Exception as exc:
            # The result is recorded and published whatever failed: a row left `running` and a
            # log never closed would keep followers waiting until a restart.
            if outcome is None:
                log.exception("execution %s failed before it had a result", job.trace_id)
                outcome = self._platform_failure(job, runtime_failure(exc))
            else:  # e.g. a discarded working copy that could not be deleted: the result stands
                log.exception("execution %s: releasing the thread or the slot failed", job.trace_id)
        finally:
            keepalive.cancel()
        outcome = replace(outcome, notes=outcome.notes + notes_for(job, outcome))
        try:
            await self._finish(job, sub, outcome)
        finally:
            if job.webhook:
                self._webhooks.kick()
            self._observe(sub, job.language, outcome)
            # The replacement sandbox starts once this task is done: its done-callbacks run in
            # order, so the inline response (whose handler awaits this task) is written first.
            # On a small machine a start racing the result's write slows the answer by 10 ms.
            if (task := asyncio.current_task()) is not None and spec is not None:
                used = spec

                def refill(_: asyncio.Future[object]) -> None:
                    self._runner.refill(used)

                task.add_done_callback(refill)
        return outcome

    async def _prepared_run(
        self, job: JobDescription, sub: Submission, spec: SandboxSpec, thread: WorkingCopy | None
    ) -> tuple[Outcome, SandboxSpec]:
        """Mount /data (volumes, buckets), open the thread's working copy, run; a failure to
        prepare is a platform failure (the program never ran). Bucket mounts are leased for
        the run and given back after it, however it ends."""
        leases: list[Lease] = []
        try:
            prepared = await self._prepare(job, spec, leases)
            if isinstance(prepared, Outcome):
                return prepared, spec
            spec, redactor = prepared
            if thread is not None:
                try:
                    home = await self._threads.open(thread, job.trace_id, spec.host_gid)
                    spec = replace(spec, home=home, host_uid=thread.thread.uid)
                except Exception as exc:
                    log.error("execution %s: thread home: %s", job.trace_id, exc)
                    return self._platform_failure(job, thread_failure(exc, saving=False)), spec
            outcome = await self._sandbox(job, sub, spec, redactor)
            return await self._settle(job, leases, outcome), spec
        finally:
            for lease in leases:
                lease.release()

    async def _prepare(
        self, job: JobDescription, spec: SandboxSpec, leases: list[Lease]
    ) -> tuple[SandboxSpec, Redactor] | Outcome:
        """The key's connectors opened and /data mounted (bucket mounts leased into `leases`);
        a failure is the platform failure the result reports."""
        redactor = Redactor(())
        if job.connectors:
            try:
                if self._connectors is None:
                    raise ConnectorError("connectors are not available on this node")
                given = await self._connectors.open(job.connectors)
            except ConnectorError as exc:
                log.error("execution %s: connector_error: %s", job.trace_id, exc.message)
                return self._platform_failure(job, connector_failure(exc.message))
            spec = replace(spec, env=spec.env | given.env, egress=given.egress)
            redactor = given.redactor
        try:
            mounts = await self._data.prepare(job.volumes, job.storage, job.sub_paths, job.org_gid, leases)
        except DataMountError as exc:
            log.error("execution %s: %s: %s", job.trace_id, exc.code, exc.message)
            return self._platform_failure(job, data_mount_failure(exc.code, exc.message))
        return replace(spec, mounts=mounts), redactor

    async def _session_run(
        self, job: JobDescription, sub: Submission, spec: SandboxSpec, copy: WorkingCopy, sessions: Sessions
    ) -> Outcome:
        """Run in the thread's session of this language, starting one if there is none (or the
        one there was started for another environment); checkpoint the workspace after a run
        that ended by itself, end the thread's sessions after one that did not.

        The checkpoint is taken once the result is out (`Sessions.save_later`): whatever comes
        next for the thread waits for it. If it failed, the next run saves again first and
        fails, naming the layer, if it still cannot: a run's writes are never dropped silently."""
        thread = copy.thread
        image = job.image.digest or job.image.name
        async with sessions.locked(job.org_id, thread.thread_id, thread.uid) as ts:
            ts.busy = True
            try:
                if ts.unsaved and ts.workspace is not None:  # the last run's checkpoint failed
                    try:
                        await self._threads.checkpoint(copy, ts.workspace, image)
                        ts.unsaved = False
                    except Exception as exc:
                        log.exception("execution %s: saving the last run's thread home failed", job.trace_id)
                        await sessions.end_thread(ts, "crash")
                        return self._platform_failure(job, thread_failure(exc, saving=True))
                session, state = await sessions.state(ts, job.language, job.environment())
                if session is None:
                    await sessions.evict(wanted_bytes=job.limits.memory_mib * 1024 * 1024, org_id=job.org_id)
                    started = await self._start_session(job, spec, copy, ts, sessions)
                    if isinstance(started, Outcome):
                        return replace(started, session=state)
                    session = started
                outcome, ended = await self._in_session(job, sub, spec, session)
                outcome = replace(outcome, session=state)
                if ended is None and outcome.error in (None, "blocked"):  # ended by itself
                    workspace = ts.workspace
                    assert workspace is not None
                    copy.image = image  # the thread's last image, recorded when it is released
                    sessions.save_later(ts, lambda: self._threads.checkpoint(copy, workspace, image))
                elif ended is None:  # a bucket's upload failed, or the server is stopping
                    ended = "crash"
                if ended is not None:
                    await sessions.end_thread(ts, ended)
                return outcome
            finally:
                ts.busy = False

    async def _start_session(
        self, job: JobDescription, spec: SandboxSpec, copy: WorkingCopy, ts: ThreadSessions, sessions: Sessions
    ) -> Session | Outcome:
        leases: list[Lease] = []
        try:
            prepared = await self._prepare(job, spec, leases)
            if isinstance(prepared, Outcome):
                return prepared
            spec, redactor = prepared
            try:
                if ts.workspace is None:
                    ts.workspace = await self._threads.take_workspace(copy, job.trace_id, spec.host_gid)
            except Exception as exc:
                log.error("execution %s: thread home: %s", job.trace_id, exc)
                return self._platform_failure(job, thread_failure(exc, saving=False))
            spec = replace(spec, home=str(ts.workspace), host_uid=ts.uid)
            try:
                sandbox = await self._runner.start_session(spec)
            except SessionStartFailed as exc:  # the program's failure (e.g. a broken .pth in its home)
                self._health.ran()
                return Outcome(
                    job.trace_id, "failed", exc.exit_code, redactor.redact(exc.stdout).decode("utf-8", "replace"),
                    redactor.redact(exc.stderr).decode("utf-8", "replace"), None, 0, False,
                    notes=("the session's interpreter did not start; its output is above",),
                )
            except SandboxSetupError as exc:
                log.error("execution %s: %s", job.trace_id, exc.message)
                return self._platform_failure(job, setup_failure(exc))
            except Exception as exc:
                log.exception("execution %s: starting its session failed", job.trace_id)
                return self._platform_failure(job, runtime_failure(exc))
            env = {k: v for k, v in spec.env.items() if k not in job.env}
            session = Session(job.language, job.environment(), sandbox, sessions.new_token(), redactor, env, leases)
            leases = []  # the session holds them now
            await sessions.add(ts, session)
            return session
        finally:
            for lease in leases:
                lease.release()
            if not ts.sessions and ts.workspace is not None:
                await sessions.end_thread(ts, "crash")

    async def _in_session(
        self, job: JobDescription, sub: Submission, spec: SandboxSpec, session: Session
    ) -> tuple[Outcome, str | None]:
        """One execution in a live session: the outcome, and why the session ended (None: it lives)."""
        spec = replace(spec, env=spec.env | session.env)
        if self._artifacts is not None:  # what is new in the session's /data/outputs
            spec = replace(spec, artifacts_dir=str(self._artifacts.dir_for(job.org_id, job.trace_id)))
        redactor = session.redactor
        try:
            with self._metrics.active_sandboxes.track_inprogress():
                try:
                    run = await session.sandbox.execute(spec, sink=redactor.sink(sub.output.write), cancel=sub.cancel)
                finally:
                    await redactor.flush(sub.output.write)
        except Exception as exc:
            log.exception("execution %s failed in its session", job.trace_id)
            return self._platform_failure(job, runtime_failure(exc)), "crash"
        finally:
            session.last_used = time.monotonic()
        outputs = tuple(_redacted(item, redactor) for item in run.outputs)
        outcome = replace(self._outcome(job, sub, spec, run.result, redactor), outputs=outputs)
        return await self._settle(job, session.leases, outcome), run.ended

    async def _settle(self, job: JobDescription, leases: list[Lease], outcome: Outcome) -> Outcome:
        """The run's writes to its buckets are uploaded before its result says anything (what
        rclone cached is uploaded after the program closed it); a write that did not make it
        fails the execution with storage_mount_error, as a thread's unsaved home does."""
        for lease in leases:
            try:
                await lease.settle()
            except MountFailed as exc:
                log.error("execution %s: bucket upload: %s", job.trace_id, exc.message)
                failure = data_mount_failure("storage_mount_error", exc.message, ran=True)
                self._health.failed(failure)
                return replace(outcome, status="failed", error=failure.code, error_message=failure.message)
        return outcome

    async def _save(self, job: JobDescription, thread: WorkingCopy, outcome: Outcome) -> Outcome:
        """A thread keeps what a run that ended by itself wrote; after a timeout, OOM, cancel
        or platform failure its working copy is dropped on release and it keeps its state."""
        try:
            await self._threads.commit(thread, job.image.digest or job.image.name)
        except Exception as exc:
            log.exception("execution %s: saving the thread home failed", job.trace_id)
            failure = thread_failure(exc, saving=True)  # its writes are lost: say so
            self._health.failed(failure)
            return replace(outcome, status="failed", error=failure.code, error_message=failure.message)
        return outcome

    async def _sandbox(self, job: JobDescription, sub: Submission, spec: SandboxSpec, redactor: Redactor) -> Outcome:
        """Run; the output is redacted of the connectors' secrets before anything sees it.
        What the run left in /data/outputs is kept as its artifacts."""
        if self._artifacts is not None:
            spec = replace(spec, artifacts_dir=str(self._artifacts.dir_for(job.org_id, job.trace_id)))
        try:
            with self._metrics.active_sandboxes.track_inprogress():
                try:
                    result = await self._runner.run(
                        spec, sink=redactor.sink(sub.output.write), cancel=sub.cancel, refill_later=True
                    )
                finally:
                    await redactor.flush(sub.output.write)
        except SandboxSetupError as exc:
            log.error("execution %s: %s", job.trace_id, exc.message)
            return self._platform_failure(job, setup_failure(exc))
        except Exception as exc:
            log.exception("execution %s failed in the runtime", job.trace_id)
            return self._platform_failure(job, runtime_failure(exc))
        return self._outcome(job, sub, spec, result, redactor)

    def _outcome(
        self, job: JobDescription, sub: Submission, spec: SandboxSpec, result: ExecResult, redactor: Redactor
    ) -> Outcome:
        """A program's result as every surface reports it, redacted of the connectors' secrets."""
        self._health.ran()
        sub.sandbox_s = result.duration_ms / 1000
        self._metrics.execution_duration.labels(spec.language).observe(sub.sandbox_s)
        status, error = result.status.value, result.error
        if sub.interrupted:
            status, error = "failed", "interrupted"
        artifacts: tuple[dict[str, Any], ...] = ()
        notes: tuple[str, ...] = ()
        if self._artifacts is not None:
            artifacts = self._artifacts.listing(job.org_id, job.trace_id, result.artifacts, job.base_url)
            notes = self._artifacts.notes(
                result.artifacts_dropped, spec.limits.outputs_max_files, spec.limits.outputs_size_mib
            )
        return Outcome(
            trace_id=job.trace_id,
            status=status,
            exit_code=result.exit_code,
            stdout=redactor.redact(result.stdout).decode("utf-8", errors="replace"),
            stderr=redactor.redact(result.stderr).decode("utf-8", errors="replace"),
            error=error,
            duration_ms=result.duration_ms,
            output_truncated=result.output_truncated,
            network=result.network,
            artifacts=artifacts,
            notes=notes,
            streams_truncated=tuple(
                name for name, cut in (("stdout", result.stdout_truncated), ("stderr", result.stderr_truncated)) if cut
            ),
            resources=(
                {"cpu_ms": result.cpu_ms, "memory_peak_bytes": result.memory_peak_bytes or 0}
                if result.cpu_ms is not None else None
            ),
        )

    def _platform_failure(self, job: JobDescription, failure: PlatformFailure) -> Outcome:
        """The process never ran: exit code -1, the platform's error code (spec §3.4) and a
        message naming the layer (never in stderr); counted apart from programs that failed."""
        self._health.failed(failure)
        return Outcome(
            job.trace_id, "failed", -1, "", "", failure.code, 0, False, error_message=failure.message
        )

    async def _finish(self, job: JobDescription, sub: Submission, outcome: Outcome) -> None:
        """Record the result, close the log with the result event, keep the log for replays.

        The result event is published even if the store fails, so no follower waits forever.
        The row, the rest of the event log (result included), the organization's usage of the
        month and the execution's audit row are written in one transaction; the output is
        stored once, in the output events (`store.ExecutionRepo.finish`).
        """
        audit = self._audit
        facts = ExecutionFacts(
            code=job.code, key_prefix=job.key_prefix, client_ip=job.client_ip, audit_code=job.audit_code,
            started_at=sub.started_at, member_id=job.member_id, member_email=job.member_email,
        )

        async def audited(conn: AsyncConnection, execution: Execution | None) -> None:
            assert audit is not None
            if execution is None:
                execution = await self._store.executions.get_in(conn, sub.trace_id)
            await audit.execution(execution, facts, conn)

        completed_at = utcnow()
        extras = outcome.extras()
        stored_extras = (
            {**extras, "resources": outcome.resources} if outcome.resources is not None
            else extras if extras != empty_extras() else None
        )
        cpu_s, gib_s = usage_of(job, outcome)
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
            final: dict[str, Any] = dict(
                status=outcome.status,
                exit_code=outcome.exit_code,
                stdout=outcome.stdout,
                stderr=outcome.stderr,
                output_truncated=outcome.output_truncated,
                error=outcome.error,
                duration_ms=outcome.duration_ms,
                completed_at=completed_at,
                network_log=[asdict(d) for d in outcome.network] or None,
                extras=stored_extras,
            )
            # The audit row is made from the record as submitted plus these values (no read).
            record = replace(sub.record, **final) if sub.record is not None else None

            async def then(conn: AsyncConnection) -> None:
                await add_usage(conn, job.org_id, completed_at.strftime("%Y-%m"), cpu_s, gib_s)
                if audit is not None:
                    await audited(conn, record)

            await self._store.executions.finish(
                sub.trace_id,
                [(e.seq, e.type, e.body) for e in events],
                logged,
                then=then,
                **final,
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
            if audit is not None:  # its own transaction now: the record's failed with it
                try:
                    if (execution := await self._store.executions.get(sub.trace_id)) is not None:
                        await audit.execution(execution, facts)
                except Exception:
                    log.exception("execution %s: its audit row could not be written", sub.trace_id)
            raise

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

    async def _keepalives(self, log: ExecutionLog) -> None:
        """A keepalive whenever nothing else was published for `keepalive_s`."""
        while True:
            due = log.last_append + self._keepalive_s
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            if time.monotonic() >= log.last_append + self._keepalive_s and not log.closed:
                await log.append("keepalive")
