"""The server's Prometheus metrics, in a registry of its own.

Each `Metrics` has its own `CollectorRegistry` (never prometheus-client's global default), so
several servers or tests in one process never collide. Label values come from small fixed
sets (languages, statuses, route templates, reasons), never from what a client sent, so the
number of series stays bounded.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

#: Program run times: from a few ms (warm interpreters) to the 3600 s timeout cap.
_RUN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
#: What the platform adds around a run: database writes, cgroup, mounts, thread snapshots.
_OVERHEAD_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
#: HTTP requests: most are fast; inline executions and streams last as long as the program.
_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """Every metric sandboxd exports; the service layer and the HTTP middleware update them."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)  # process_cpu_seconds_total, process_resident_memory_bytes, ...
        self.executions = Counter(
            "sandboxd_executions",
            "Executions finished, by language and final status; platform_error when the platform "
            "failed them (then counted by layer in sandboxd_platform_errors_total), so failed "
            "counts only programs that failed.",
            ["language", "status"], registry=r,
        )
        self.platform_errors = Counter(
            "sandboxd_platform_errors",
            "Executions the platform failed (result error sandbox_error, internal_error, "
            "volume_mount_error, thread_mount_error), by the failing layer: cgroup, uids, network, "
            "home_slot, interpreter, storage, sandbox, runtime, volume, thread_home.",
            ["layer"], registry=r,
        )
        self.platform_unready = Gauge(
            "sandboxd_platform_unready",
            "1 while /ready answers 503 after repeated platform errors, until a fresh self-check passes.",
            registry=r,
        )
        self.execution_duration = Histogram(
            "sandboxd_execution_duration_seconds",
            "Time in the sandbox: from starting bubblewrap to the program's end.",
            ["language"], buckets=_RUN_BUCKETS, registry=r,
        )
        self.execution_overhead = Histogram(
            "sandboxd_execution_overhead_seconds",
            "Platform time of an execution: from the request being admitted to the result "
            "recorded, minus the time in the sandbox.",
            ["language"], buckets=_OVERHEAD_BUCKETS, registry=r,
        )
        self.admission_rejections = Counter(
            "sandboxd_admission_rejections",
            "Requests refused before running: global_concurrency and org_concurrency (429), "
            "auth_lockout (429), thread_busy (409), shutting_down (503).",
            ["reason"], registry=r,
        )
        self.connections_closed = Counter(
            "sandboxd_connections_closed",
            "Client connections the server closed at its edge: per_client_cap (429), total_cap "
            "(503), header_timeout and body_timeout (408), head_too_large (431).",
            ["reason"], registry=r,
        )
        self.active_sandboxes = Gauge(
            "sandboxd_active_sandboxes", "Sandboxes running a program now.", registry=r
        )
        self.threads = Gauge(
            "sandboxd_threads", "Threads (persistent homes) that exist, all organizations.", registry=r
        )
        self.pool_sandboxes = Gauge(
            "sandboxd_pool_sandboxes",
            "Pre-spawned single-use sandboxes waiting for a request, by language.",
            ["language"], registry=r,
        )
        self.pool_requests = Counter(
            "sandboxd_pool_requests",
            "Poolable runs served by a waiting sandbox (hit) or started cold (miss).",
            ["result"], registry=r,
        )
        self.webhook_deliveries = Counter(
            "sandboxd_webhook_deliveries",
            "Webhook delivery attempts by outcome: delivered, retrying (failed, will retry), "
            "failed (given up).",
            ["outcome"], registry=r,
        )
        self.http_requests = Counter(
            "sandboxd_http_requests", "HTTP requests answered, by method, route template and status.",
            ["method", "route", "status"], registry=r,
        )
        self.http_duration = Histogram(
            "sandboxd_http_request_duration_seconds",
            "HTTP request time, from the request to the end of the response body.",
            ["method", "route"], buckets=_HTTP_BUCKETS, registry=r,
        )
        self._refreshers: list[Callable[[], Awaitable[None]]] = []

    def on_scrape(self, refresh: Callable[[], Awaitable[None]]) -> None:
        """Run `refresh` before each scrape: for values read from the store (e.g. threads)."""
        self._refreshers.append(refresh)

    async def render(self) -> bytes:
        """The Prometheus text exposition of every metric, refreshed."""
        for refresh in self._refreshers:
            await refresh()
        return generate_latest(self.registry)
