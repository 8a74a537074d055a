"""The execution status document (spec §4.1): what GET /v1/executions/{id} answers and what a
webhook delivers. One function, so the two never drift apart."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..store import Execution
from .health import PLATFORM_ERRORS


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def execution_document(e: Execution, error_message: str | None = None) -> dict[str, Any]:
    """`error_message`: a platform failure's own message (ExecutionService.error_message);
    without one, a platform error code gets its general message."""
    return {
        "trace_id": e.trace_id,
        "status": e.status,
        "exit_code": e.exit_code,
        "stdout": e.stdout,
        "stderr": e.stderr,
        "error": e.error,
        "error_message": error_message or PLATFORM_ERRORS.get(e.error or ""),
        "duration_ms": e.duration_ms,
        "delivery_mode": e.delivery_mode,
        "created_at": iso(e.created_at) or "",
        "completed_at": iso(e.completed_at),
        "webhook_url": e.webhook_url,
        "webhook_delivery_status": e.webhook_delivery_status,
        "webhook_attempts": e.webhook_attempts,
        "language": e.language,
        "thread_id": e.thread_id,
        "metadata": e.metadata,
        "output_truncated": e.output_truncated,
        "network": e.network_log or [],
        # Which root it ran on (sandboxd's addition; None for runs from before images existed).
        "image": {"name": e.image_name, "digest": e.image_digest} if e.image_name else None,
        # What it had under /data/, as scoped for it (service/data_mounts.py).
        "storage": e.storage or [],
        "connectors": e.connectors or [],
        # What the result said besides the spec's fields (job.py Outcome.extras).
        **empty_extras(),
        **(e.extras or {}),
    }


def empty_extras() -> dict[str, Any]:
    """A result's extras when it has none: no session, no rich outputs, artifacts or notes."""
    return {"session": None, "outputs": [], "artifacts": [], "notes": []}
