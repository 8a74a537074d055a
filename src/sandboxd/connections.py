"""HTTP connections at the socket: deadlines for receiving a request, caps on open connections.

uvicorn times only the idle gap between two requests of a kept-alive connection: a connection
that sends a request line and one header and then nothing stays open for ever, and ~20,000 of
them exhausted the server's file descriptors (issue #12). `GuardedProtocol` is uvicorn's
httptools protocol plus:

- a request's headers must arrive within `header_timeout_s` of the connection opening, or of
  the request's first byte on a kept-alive connection, and fit in 64 KiB;
- its body must keep coming: never `body_timeout_s` of silence, and after that grace an average
  of at least `body_min_rate_bytes_s` (a drip of one byte every few seconds is cut too). Time
  the server itself stops reading (back-pressure) is not held against the client;
- a client (clients.client_key) may hold `max_connections_per_client` connections, and all
  clients `max_connections`; a connection over a cap is answered 429 or 503 and closed at once.
  A trusted proxy carries many clients, so it counts only toward the total.

A late request is answered `408 {"error": "request_timeout", ...}` when no response has
started on the connection, then closed. Nothing is timed once the request is in: a response
(an NDJSON or MCP stream, a long inline run) lasts as long as it needs.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .clients import TrustedProxies, client_key
from .observability import Metrics

#: Request line and headers larger than this are refused (431), as nginx's 4 × 8 KiB buffers do.
MAX_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    body_min_rate_bytes_s: int
    max_connections: int
    max_connections_per_client: int
    trusted_proxies: TrustedProxies


def _response(status: int, reason: str, code: str, message: str, retry_after_s: int | None = None) -> bytes:
    """A complete HTTP/1.1 error response in the API's format, closing the connection."""
    body = json.dumps({"error": code, "message": message}, separators=(",", ":")).encode()
    head = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(body)}"]
    if retry_after_s is not None:
        head.append(f"retry-after: {retry_after_s}")
    head.append("connection: close")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class ConnectionGuard:
    """Counts open connections per client and in total: one per server, shared by its connections."""

    def __init__(self, limits: ConnectionLimits, metrics: Metrics | None = None) -> None:
        self.limits = limits
        self.closed = (metrics or Metrics()).connections_closed
        self.open = 0
        self._by_client: dict[str, int] = defaultdict(int)
        self._over_total = _response(
            503, "Service Unavailable", "unavailable",
            f"the server has {limits.max_connections} connections open (its limit); retry shortly", 1,
        )
        self._over_client = _response(
            429, "Too Many Requests", "rate_limited",
            f"too many open connections from your address (limit {limits.max_connections_per_client})", 1,
        )
        self.headers_late = _response(
            408, "Request Timeout", "request_timeout",
            f"request headers not received within {limits.header_timeout_s:g} s",
        )
        self.body_late = _response(
            408, "Request Timeout", "request_timeout",
            f"request body not received in time (at most {limits.body_timeout_s:g} s of silence, "
            f"{limits.body_min_rate_bytes_s} bytes/s on average)",
        )
        self.head_too_large = _response(
            431, "Request Header Fields Too Large", "validation_error",
            f"request line and headers exceed {MAX_HEAD_BYTES} bytes",
        )

    def admit(self, host: str | None) -> Callable[[], None] | bytes:
        """Count a connection from `host`: the function that uncounts it (once), or the refusal."""
        if self.open >= self.limits.max_connections:
            self.closed.labels("total_cap").inc()
            return self._over_total
        key = None if host is None or host in self.limits.trusted_proxies else client_key(host)
        if key is not None:
            if self._by_client[key] >= self.limits.max_connections_per_client:
                self.closed.labels("per_client_cap").inc()
                return self._over_client
            self._by_client[key] += 1
        self.open += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.open -= 1
            if key is not None:
                self._by_client[key] -= 1
                if not self._by_client[key]:
                    del self._by_client[key]

        return release


class GuardedProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with request deadlines and connection caps (module docstring)."""

    guard: ConnectionGuard  # set by protocol_class

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._release: Callable[[], None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._awaiting: Literal["headers", "body"] | None = None
        self._head_bytes = 0
        self._body_start = 0.0
        self._body_last = 0.0
        self._body_bytes = 0

    # connection

    # asyncio.Protocol takes a BaseTransport; a server's is a Transport (uvicorn narrows it too).
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        admitted = self.guard.admit(self.client[0] if self.client else None)
        if isinstance(admitted, bytes):
            transport.write(admitted)
            transport.close()
            return
        self._release = admitted
        self._await_headers()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        if self._release is not None:
            self._release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._release is None:  # refused: its answer is written, the socket is closing
            return
        if self._awaiting is None and (self.cycle is None or self.cycle.response_complete):
            self._await_headers()  # the first byte of the next request on a kept-alive connection
        if self._awaiting == "headers":
            self._head_bytes += len(data)
        super().data_received(data)
        if self._awaiting == "headers" and self._head_bytes > MAX_HEAD_BYTES:
            self._close_with(self.guard.head_too_large, "head_too_large")

    # parser callbacks

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._awaiting is None:  # a pipelined request, read while a response is going out
            self._await_headers()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self._await_body()  # ended at once by on_message_complete when there is none

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        self._body_last = self.loop.time()
        super().on_body(body)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._stop_timer()
        self._awaiting = None

    # deadlines

    def _await_headers(self) -> None:
        self._awaiting = "headers"
        self._head_bytes = 0
        self._stop_timer()
        self._timer = self.loop.call_later(self.guard.limits.header_timeout_s, self._headers_late)

    def _headers_late(self) -> None:
        self._timer = None
        self._close_with(self.guard.headers_late, "header_timeout")

    def _await_body(self) -> None:
        self._awaiting = "body"
        self._body_start = self._body_last = self.loop.time()
        self._body_bytes = 0
        self._stop_timer()
        self._timer = self.loop.call_later(self.guard.limits.body_timeout_s, self._check_body)

    def _check_body(self) -> None:
        self._timer = None
        limits = self.guard.limits
        rate = limits.body_min_rate_bytes_s
        now = self.loop.time()
        if self.flow.read_paused or self.cycle.waiting_for_100_continue:
            # we are not reading (the app is behind, or has not asked for the body a client
            # sending `Expect: 100-continue` holds back): restart the clocks
            self._body_last = now
            self._body_start = now - (self._body_bytes / rate if rate else 0.0)
        deadline = self._body_last + limits.body_timeout_s
        if rate:  # the bytes so far buy this much time after the grace
            deadline = min(deadline, self._body_start + limits.body_timeout_s + self._body_bytes / rate)
        if now + 0.001 >= deadline:
            self._close_with(self.guard.body_late, "body_timeout")
        else:
            self._timer = self.loop.call_at(deadline, self._check_body)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _close_with(self, response: bytes, reason: str) -> None:
        """Answer `response` unless a response already started on this connection, then close."""
        self.guard.closed.labels(reason).inc()
        reading_body = self._awaiting == "body"
        self._awaiting = None
        self._stop_timer()
        cycle = self.cycle
        if reading_body:  # `cycle` is this request's
            if cycle.response_started:
                response = b""
            else:  # the app waits for this body: it reads a disconnect, and its answer is dropped
                cycle.disconnected = True
                cycle.message_event.set()
        elif cycle is not None and not cycle.response_complete:  # a pipelined request's headers
            response = b""
        if response and not self.transport.is_closing():
            self.transport.write(response)
        self.transport.close()


def protocol_class(limits: ConnectionLimits, metrics: Metrics | None = None) -> type[GuardedProtocol]:
    """The protocol class for `uvicorn.Config(http=...)`, bound to one server's guard."""

    class _Bound(GuardedProtocol):
        guard = ConnectionGuard(limits, metrics)

    return _Bound
