"""Response bodies: the contract the official SDK parses (spec §3.4, §4.1, §22)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from ..service import Outcome
from .ndjson import MEDIA_TYPE as NDJSON


class ErrorBody(BaseModel):
    error: str = Field(description="Machine-readable code, e.g. validation_error.")
    message: str = Field(description="What went wrong, naming the field where there is one.")


#: Not in the Baponi spec (its clients ignore extra fields, §3.4): platform errors never go to stderr.
ERROR_MESSAGE: Any = Field(
        default=None,
        description="A platform error's message (error sandbox_error, internal_error, "
        "volume_mount_error, thread_mount_error): names the layer that failed; null otherwise.",
    )


class SessionBody(BaseModel):
    state: Literal["new", "kept", "reset"] = Field(
        description="new: a fresh interpreter; kept: the thread's interpreter state from its last run; "
        "reset: a fresh one because the last ended (see reason)."
    )
    reason: str | None = Field(
        default=None,
        description="Why the last session ended: idle, timeout, oom, crash, cancelled, restart, "
        "evicted, changed (the sandbox config, the image or the thread changed); null unless reset.",
    )


class OutputItem(BaseModel):
    type: str = Field(description="MIME type: image/png, image/jpeg, image/svg+xml, text/html, text/markdown.")
    data: str = Field(description="Base64 for images, the text otherwise; empty when truncated.")
    truncated: bool = Field(default=False, description="Too large: left out (see size).")
    size: int | None = Field(default=None, description="The size in bytes of what was left out.")


class Artifact(BaseModel):
    path: str = Field(description="Below /data/outputs/.")
    size: int
    url: str = Field(description="Signed download URL (no API key needed) until expires_at.")
    expires_at: str


#: sandboxd's additions to a result (clients that do not know them ignore them, spec §3.4).
SESSION_FIELD: Any = Field(
    default=None,
    description="With a persistent session (sandbox config `--session persistent` and a thread_id): "
    "whether the interpreter state was kept; null for stateless runs.",
)
OUTPUTS_FIELD: Any = Field(
    default_factory=list,
    description="Rich outputs: figures, images, HTML tables, markdown (size-capped).",
)
ARTIFACTS_FIELD: Any = Field(default_factory=list, description="Files the run wrote under /data/outputs/.")
NOTES_FIELD: Any = Field(
    default_factory=list,
    description="What the caller should know about how it ran: a timeout lowered to the cap, "
    "output truncated, no network access, state not kept.",
)


class SandboxResult(BaseModel):
    success: bool
    stdout: str
    stderr: str
    exit_code: int
    error: str | None = None
    error_message: str | None = ERROR_MESSAGE
    trace_id: str
    duration_ms: int
    output_truncated: bool = False
    session: SessionBody | None = SESSION_FIELD
    outputs: list[OutputItem] = OUTPUTS_FIELD
    artifacts: list[Artifact] = ARTIFACTS_FIELD
    notes: list[str] = NOTES_FIELD

    @classmethod
    def of(cls, outcome: Outcome) -> SandboxResult:
        return cls(
            success=outcome.success,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            exit_code=outcome.exit_code,
            error=outcome.error,
            error_message=outcome.error_message,
            trace_id=outcome.trace_id,
            duration_ms=outcome.duration_ms,
            output_truncated=outcome.output_truncated,
            **outcome.extras(),
        )


class NetworkDecisionBody(BaseModel):
    host: str = Field(description="Host name asked of the egress proxy, or the address (full policy).")
    port: int
    allowed: bool
    reason: str
    count: int = Field(description="How many times this same decision was made.")
    connector: str | None = Field(
        default=None, description="The connector that brokered this request or forwarded this port (never a secret)."
    )
    method: str | None = Field(default=None, description="A brokered request's HTTP method.")
    status: int | None = Field(default=None, description="A brokered request's upstream HTTP status.")


class ImageUsed(BaseModel):
    name: str = Field(description="The runtime image's name (`host`: the host's own /usr).")
    digest: str | None = Field(default=None, description="Its manifest digest; null for `host`.")


class MountUsed(BaseModel):
    name: str = Field(description="The volume's or storage connection's name (its slug under /data/).")
    type: str = Field(description="`volume`, or the bucket's provider: `s3`, `gcs`, `azure`.")
    path: str = Field(description="Where it showed in the sandbox: `/data/<name>/` or, with sub_paths, a directory of it.")
    read_only: bool
    scope: str = Field(
        description="What of the volume or bucket that path showed: for a bucket, the path below the "
        "bucket's name (connection prefix, key prefix, sub_paths); \"\" = all of it."
    )


class ConnectorUsed(BaseModel):
    name: str = Field(description="The connector's name.")
    type: str = Field(description="`env`, `postgres`, `mysql` or `http` (brokered).")


class ResourcesUsed(BaseModel):
    cpu_ms: int = Field(description="CPU time of every process of the sandbox, milliseconds.")
    memory_peak_bytes: int = Field(description="The most memory the sandbox held at once, bytes.")


class ExecutionStatus(BaseModel):
    """Spec §4.1, plus what sandboxd records besides (language, thread, metadata, attempts, image, storage)."""

    trace_id: str
    status: str
    exit_code: int | None = None
    stdout: str | None = None
    stderr: str | None = None
    error: str | None = None
    error_message: str | None = ERROR_MESSAGE
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
    image: ImageUsed | None = Field(default=None, description="The runtime image it ran on.")
    storage: list[MountUsed] = Field(
        default_factory=list,
        description="The volumes and storage connections it had under /data/, each as scoped for it "
        "(decided at submission: a run refused at mount time lists what it was to get).",
    )
    connectors: list[ConnectorUsed] = Field(
        default_factory=list,
        description="The connectors it was given (their names; secrets are never recorded).",
    )
    session: SessionBody | None = SESSION_FIELD
    outputs: list[OutputItem] = OUTPUTS_FIELD
    artifacts: list[Artifact] = ARTIFACTS_FIELD
    notes: list[str] = NOTES_FIELD
    resources: ResourcesUsed | None = Field(
        default=None,
        description="What its sandbox used, as the cgroup counted it (null when the program never ran).",
    )


class WebhookAccepted(BaseModel):
    trace_id: str
    status: str


class CancelResponse(BaseModel):
    trace_id: str
    status: str


# --- the NDJSON stream (spec §3.5): one event a line, `seq` = 1, 2, 3, ... -------------------


class StatusEvent(BaseModel):
    """First event of a stream (queued/running), with the trace id to reconnect with."""

    type: Literal["status"]
    seq: int = Field(ge=1)
    trace_id: str
    status: str


class OutputEvent(BaseModel):
    type: Literal["output"]
    seq: int = Field(ge=1)
    stream: Literal["stdout", "stderr"]
    data: str


class KeepaliveEvent(BaseModel):
    """Sent after `SANDBOXD_KEEPALIVE_INTERVAL_S` of silence; carries nothing else."""

    type: Literal["keepalive"]
    seq: int = Field(ge=1)


class EventResult(BaseModel):
    success: bool
    stdout: str
    stderr: str
    exit_code: int
    error: str | None
    error_message: str | None = ERROR_MESSAGE
    session: SessionBody | None = SESSION_FIELD
    outputs: list[OutputItem] = OUTPUTS_FIELD
    artifacts: list[Artifact] = ARTIFACTS_FIELD
    notes: list[str] = NOTES_FIELD


class ResultEvent(BaseModel):
    """Last event of a stream: the final status and the whole result."""

    type: Literal["result"]
    seq: int = Field(ge=1)
    trace_id: str
    status: str
    result: EventResult
    output_truncated: bool


ExecutionEvent = Annotated[
    StatusEvent | OutputEvent | KeepaliveEvent | ResultEvent, Field(discriminator="type")
]

#: The models the OpenAPI document needs besides those of the routes (see api/openapi.py).
EXTRA_MODELS: dict[str, Any] = {"ExecutionEvent": ExecutionEvent}  # type forms (TypeAdapter)

#: An NDJSON 200 response: each line is an ExecutionEvent (`itemSchema`, as FastAPI writes
#: it for JSON Lines), the body as a whole a string.
NDJSON_CONTENT: dict[str, object] = {
    NDJSON: {
        "schema": {"type": "string", "description": "Newline-delimited ExecutionEvent objects."},
        "itemSchema": {"$ref": "#/components/schemas/ExecutionEvent"},
    }
}


# --- errors -------------------------------------------------------------------------------

_ERROR_TEXT = {
    400: "Invalid request (`validation_error`): the message names the field",
    401: "Missing, invalid or revoked API key (`unauthorized`)",
    403: "Not allowed (`forbidden`)",
    404: "No such resource (`not_found`)",
    409: "Conflict (`conflict`): the thread is busy with an execution",
    413: "Request body too large (`payload_too_large`)",
    429: "Rate limited (`rate_limited`); retry after `Retry-After` seconds",
    500: "Server error (`internal_error`, `sandbox_error`)",
    503: "Temporarily unavailable (`unavailable`)",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer", "minimum": 1}}}


def error_responses(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """The `responses=` entries for the error statuses a route can answer, all `ErrorBody`.

    `descriptions` overrides the text of a status: `error_responses(404, s404="No such file")`.
    """
    responses: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {
            "model": ErrorBody,
            "description": descriptions.get(f"s{status}", _ERROR_TEXT[status]),
        }
        if status == 429:
            entry["headers"] = _RETRY_AFTER
        responses[status] = entry
    return responses


#: What every route behind an API key can answer: no/bad key, lockout, an unexpected failure.
AUTHENTICATED = (401, 429, 500)
