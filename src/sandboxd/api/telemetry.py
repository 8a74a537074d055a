"""Per-request telemetry, as one pure ASGI middleware: request id, access log line, metrics.

The request id is the client's `X-Request-Id` when it is sane (at most 64 of
`[A-Za-z0-9._:-]`), else a new one; it is returned in the `X-Request-Id` header and bound for
every log line written while the request is handled (and by the executions it starts).

Routes are labelled by their template (`/v1/executions/{trace_id}`), never the raw path: raw
paths would make a metric series per trace id, and a signed file URL's path is its token.
"""

from __future__ import annotations

import re
import time
import uuid

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..observability import Metrics
from ..observability.logging import get_logger

_SANE_ID = re.compile(rb"^[A-Za-z0-9._:-]{1,64}$")
#: The route label of a request no route matched (404s, and refusals before routing).
UNMATCHED = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

log = get_logger("sandboxd.access")


def _request_id(scope: Scope) -> str:
    headers: list[tuple[bytes, bytes]] = scope["headers"]
    for name, value in headers:
        if name == b"x-request-id" and _SANE_ID.match(value):
            return value.decode()
    return uuid.uuid4().hex


class RequestTelemetry:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        structlog.contextvars.clear_contextvars()  # this request's task: start from nothing
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - started
            route = getattr(scope.get("route"), "path", None) or UNMATCHED
            method = scope["method"] if scope["method"] in _METHODS else "OTHER"
            self.metrics.http_requests.labels(method, route, str(status)).inc()
            self.metrics.http_duration.labels(method, route).observe(elapsed)
            log.info(
                "request", method=method, route=route, status=status,
                duration_ms=round(elapsed * 1000, 1), client=(scope.get("client") or ("-",))[0],
            )
