"""Response bodies: the contract the official SDK parses (spec §3.4, §4.1, §22)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from ..service import Outcome


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


class NetworkDecisionBody(BaseModel):
    host: str = Field(description="Host name asked of the egress proxy, or the address (full policy).")
    port: int
    allowed: bool
    reason: str
    count: int = Field(description="How many times this same decision was made.")


class ExecutionStatus(BaseModel):
    """Spec §4.1, plus what sandboxd records besides (language, thread, metadata, attempts)."""

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
    webhook_attempts: int = 0
    language: str
    thread_id: str | None = None
    metadata: dict[str, str] | None = None
    output_truncated: bool = False
    network: list[NetworkDecisionBody] = Field(
        default_factory=list,
        description="The network policy's decision for each destination the code asked for "
        "(allowlist and full policies): the audit record of its egress.",
    )


class WebhookAccepted(BaseModel):
    trace_id: str
    status: str


class CancelResponse(BaseModel):
    trace_id: str
    status: str


#: NDJSON item schema: the four event types (spec §3.5).
EVENT_SCHEMA: dict[str, object] = {
    "type": "object",
    "required": ["type", "seq"],
    "properties": {
        "type": {"enum": ["status", "output", "keepalive", "result"]},
        "seq": {"type": "integer", "minimum": 1},
        "trace_id": {"type": "string"},
        "status": {"type": "string"},
        "stream": {"enum": ["stdout", "stderr"]},
        "data": {"type": "string"},
        "result": {"type": "object"},
        "output_truncated": {"type": "boolean"},
    },
}


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
