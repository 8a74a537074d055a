"""Response bodies: the contract the official SDK parses (spec §3.4, §4.1, §22)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from ..service import Outcome
from ..store import Execution


class ErrorBody(BaseModel):
    error: str = Field(description="Machine-readable code, e.g. validation_error.")
    message: str = Field(description="What went wrong, naming the field where there is one.")


class SandboxResult(BaseModel):
    success: bool
    stdout: str
    stderr: str
    exit_code: int
    error: str | None = None
    trace_id: str
    duration_ms: int
    output_truncated: bool = False

    @classmethod
    def of(cls, outcome: Outcome) -> SandboxResult:
        return cls(
            success=outcome.success,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            exit_code=outcome.exit_code,
            error=outcome.error,
            trace_id=outcome.trace_id,
            duration_ms=outcome.duration_ms,
            output_truncated=outcome.output_truncated,
        )


def _iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class ExecutionStatus(BaseModel):
    trace_id: str
    status: str
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    error: str | None = None
    duration_ms: int = 0
    delivery_mode: str = "inline"
    created_at: str = ""
    completed_at: str | None = None
    webhook_url: str | None = None
    webhook_delivery_status: str | None = None
    language: str
    thread_id: str | None = None
    metadata: dict[str, str] | None = None
    output_truncated: bool = False

    @classmethod
    def of(cls, e: Execution) -> ExecutionStatus:
        return cls(
            trace_id=e.trace_id,
            status=e.status,
            exit_code=e.exit_code,
            stdout=e.stdout,
            stderr=e.stderr,
            error=e.error,
            duration_ms=e.duration_ms,
            delivery_mode=e.delivery_mode,
            created_at=_iso(e.created_at) or "",
            completed_at=_iso(e.completed_at),
            webhook_url=e.webhook_url,
            webhook_delivery_status=e.webhook_delivery_status,
            language=e.language,
            thread_id=e.thread_id,
            metadata=e.metadata,
            output_truncated=e.output_truncated,
        )


#: Every error status any endpoint may answer, for the OpenAPI document.
ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody, "description": text}
    for status, text in {
        400: "Validation error (`validation_error`)",
        401: "Missing, invalid or revoked API key (`unauthorized`)",
        413: "Request body too large (`payload_too_large`)",
        429: "Rate limited (`rate_limited`); see Retry-After",
        500: "Server error",
        503: "Temporarily unavailable",
    }.items()
}
