"""Executions: admit, record, run in the sandbox, record the result.

The flow of DESIGN.md, for the inline mode: auth happened at the surface; here we validate
what depends on the key (language in the image, timeout cap), admit under the concurrency
caps, record the execution, run it, and finish the record whatever happened.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from ..errors import InvalidRequest, NotFound, SandboxSetupError
from ..ids import new_trace_id
from ..runtime import ExecResult, ExecStatus, Language, Limits, OutputSink, SandboxSpec
from ..store import Execution, Store, utcnow
from .admission import ConcurrencyLimiter
from .keys import Principal
from .requests import ExecuteRequest


class Runner(Protocol):
    languages: frozenset[Language]

    async def run(self, spec: SandboxSpec, *, sink: OutputSink | None = None) -> ExecResult: ...


@dataclass(frozen=True)
class SandboxDefaults:
    """Per-sandbox limits that are server settings rather than per-config choices."""

    pids_max: int = 256
    tmp_mib: int = 64
    workdir_mib: int = 256
    home_mib: int = 256
    file_size_mib: int = 256
    open_files_max: int = 1024
    output_bytes: int = 1024 * 1024


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

    @property
    def success(self) -> bool:
        return self.status == ExecStatus.SUCCESS.value


class ExecutionService:
    def __init__(
        self,
        store: Store,
        runner: Runner,
        limiter: ConcurrencyLimiter,
        defaults: SandboxDefaults,
    ) -> None:
        self._store = store
        self._runner = runner
        self._limiter = limiter
        self._defaults = defaults

    @property
    def languages(self) -> frozenset[Language]:
        return self._runner.languages

    def limits_for(self, principal: Principal, request: ExecuteRequest) -> Limits:
        """The sandbox config decides; a requested timeout above its cap is lowered to the cap."""
        d = self._defaults
        return Limits(
            cpus=principal.sandbox.cpus,
            memory_mib=principal.sandbox.memory_mib,
            timeout_s=min(request.timeout, principal.sandbox.timeout_cap_s),
            pids_max=d.pids_max,
            tmp_mib=d.tmp_mib,
            workdir_mib=d.workdir_mib,
            home_mib=d.home_mib,
            file_size_mib=d.file_size_mib,
            open_files_max=d.open_files_max,
            output_bytes=d.output_bytes,
        )

    async def execute(
        self,
        principal: Principal,
        request: ExecuteRequest,
        *,
        delivery_mode: str = "inline",
        client_id: str | None = None,
    ) -> Outcome:
        if request.language not in self._runner.languages:
            raise InvalidRequest(f"language {request.language!r} is not available in this sandbox's image")
        limits = self.limits_for(principal, request)
        spec = SandboxSpec(
            language=request.language,
            code=request.code.encode("utf-8", errors="surrogatepass"),
            limits=limits,
            env=dict(request.env_vars or {}),
        )
        org_cap = principal.org.max_concurrent
        with self._limiter.slot(principal.org.id, org_cap):
            trace_id = new_trace_id()
            await self._store.executions.add(
                Execution(
                    trace_id=trace_id,
                    org_id=principal.org.id,
                    key_id=principal.key_id,
                    language=request.language,
                    status="running",
                    timeout_s=int(limits.timeout_s),
                    delivery_mode=delivery_mode,
                    created_at=utcnow(),
                    client_id=client_id[:128] if client_id else None,
                    thread_id=request.thread_id,
                    metadata=dict(request.metadata) if request.metadata else None,
                )
            )
            try:
                result = await self._runner.run(spec)
            except SandboxSetupError as exc:
                await self._store.executions.update(
                    trace_id, status="failed", exit_code=-1, error=exc.code, completed_at=utcnow(),
                    stdout="", stderr="",
                )
                raise
            except BaseException:
                await self._store.executions.update(
                    trace_id, status="failed", exit_code=-1, error="interrupted", completed_at=utcnow(),
                    stdout="", stderr="",
                )
                raise
            outcome = Outcome(
                trace_id=trace_id,
                status=result.status.value,
                exit_code=result.exit_code,
                stdout=result.stdout.decode("utf-8", errors="replace"),
                stderr=result.stderr.decode("utf-8", errors="replace"),
                error=result.error,
                duration_ms=result.duration_ms,
                output_truncated=result.output_truncated,
            )
            await self._store.executions.update(
                trace_id,
                status=outcome.status,
                exit_code=outcome.exit_code,
                stdout=outcome.stdout,
                stderr=outcome.stderr,
                output_truncated=outcome.output_truncated,
                error=outcome.error,
                duration_ms=outcome.duration_ms,
                completed_at=utcnow(),
            )
            return outcome

    async def get(self, principal: Principal, trace_id: str) -> Execution:
        """An execution of the caller's organization; any other is indistinguishable from none."""
        execution = await self._store.executions.get(trace_id)
        if execution is None or execution.org_id != principal.org.id:
            raise NotFound(f"no execution {trace_id!r}")
        return execution

    async def recover_interrupted(self) -> int:
        """On start: executions left `running` by a stopped server end as failed/interrupted."""
        return await self._store.executions.fail_unfinished(error="interrupted", at=utcnow())
