"""Serving the API with uvicorn: a drain before stopping, and the optional metrics listener.

uvicorn alone stops listening as soon as it is signalled. Here the first SIGTERM or SIGINT
starts a drain while the API keeps answering: /ready and new executions get 503, running
executions get `shutdown_grace_s` to finish and are then killed and recorded
failed/interrupted, and the clients waiting on them (inline, streams) get their results.
Only then does uvicorn stop, giving open responses up to the grace period again. A second
signal stops at once.

At the edge: each connection runs `connections.GuardedProtocol` (request deadlines, connection
caps), the open-file limit is raised to its hard limit so that those caps, not the kernel, are
what a flood meets, and forwarded headers are believed only from `trusted_proxies`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import resource
import signal
from collections.abc import Awaitable, Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any

import uvicorn

from .api import create_api
from .api.routes import metrics as metrics_routes
from .clients import TrustedProxies
from .connections import ConnectionLimits, protocol_class
from .console import mount_console
from .mcp import mount_mcp
from .observability.logging import get_logger

if TYPE_CHECKING:
    from .app import Services
    from .config import Settings

log = get_logger("sandboxd.server")


class _DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_requested = False
        self.draining: asyncio.Task[None] | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        """Runs in the signal handler: schedule the drain on the loop, or stop on a second signal."""
        if self._drain_requested or self._loop is None:
            super().handle_exit(sig, frame)
            return
        self._drain_requested = True
        self._loop.call_soon_threadsafe(self._start_drain, signal.Signals(sig).name)

    def _start_drain(self, signal_name: str) -> None:
        log.info("draining", signal=signal_name)
        self.draining = asyncio.create_task(self._drain_then_stop(), name="drain")

    async def _drain_then_stop(self) -> None:
        try:
            await self._drain()
        finally:
            self.should_exit = True


class _SignallessServer(uvicorn.Server):
    """The metrics listener: the API server owns the signals and stops this one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _raise_fd_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; the limit now in force.

    Sandboxes set their own (runtime/rlimits.py), so only the server gets the high limit.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        with open("/proc/sys/fs/nr_open") as f:  # the most Linux allows a process
            hard = int(f.read())
    if soft == resource.RLIM_INFINITY or soft >= hard:
        return hard
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("could not raise the open-file limit", soft=soft, hard=hard, error=str(exc))
        return soft
    return hard


#: Descriptors kept from the connection cap: the server's own work (1,024), plus one burst of
#: connections accepted before any is refused (uvicorn's listen backlog, 2,048).
_RESERVED_FDS = 1024 + 2048


def _connection_limits(settings: Settings, open_files: int) -> ConnectionLimits:
    """The settings' limits, with the connection cap lowered to leave the server some descriptors
    (database, pipes and cgroup files of running sandboxes, the storage image, a burst of
    accepted connections): a flood must meet the cap, never EMFILE."""
    reserve = min(_RESERVED_FDS, open_files // 2)
    total = min(settings.max_connections, max(1, open_files - reserve))
    if total < settings.max_connections:
        log.warning(
            "max_connections lowered to fit the open-file limit",
            max_connections=total, open_files_limit=open_files,
        )
    return ConnectionLimits(
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        body_min_rate_bytes_s=settings.body_min_rate_bytes_s,
        max_connections=total,
        max_connections_per_client=settings.max_connections_per_client,
        trusted_proxies=TrustedProxies(settings.trusted_proxies),
    )


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


async def serve(services: Services) -> None:
    """Serve until signalled, then drain and stop; the caller closes the services."""
    settings = services.settings
    limits = _connection_limits(settings, _raise_fd_limit())
    common: dict[str, Any] = {
        "log_config": None,  # logging is configured once (observability.logging)
        "log_level": settings.log_level,
        "access_log": False,  # api.telemetry writes one structured line per request
        "timeout_keep_alive": settings.keepalive_timeout_s,
    }
    app = create_api(services)
    mount_mcp(app, services)  # here, not in api/: sandboxd.mcp uses api's error table
    mount_console(app, services)  # the web console at /console (sandboxd/console)
    api = _DrainingServer(
        uvicorn.Config(
            app, host=settings.host, port=settings.port,
            lifespan="on",  # the MCP endpoint's session manager runs in the app's lifespan
            http=protocol_class(limits, services.metrics),
            ws="none",  # no WebSocket routes; an upgrade would hand the socket past the guard
            # X-Forwarded-For/-Proto only from configured proxies (uvicorn's default trusts
            # loopback, which let every request name its own client address)
            proxy_headers=bool(limits.trusted_proxies),
            forwarded_allow_ips=limits.trusted_proxies.as_uvicorn(),
            timeout_graceful_shutdown=max(1, math.ceil(settings.shutdown_grace_s)), **common,
        ),
        services.drain,
    )
    side: _SignallessServer | None = None
    if settings.metrics_enabled and settings.metrics_port:
        side = _SignallessServer(
            uvicorn.Config(
                metrics_routes.standalone(services), host=settings.metrics_host,
                port=settings.metrics_port, lifespan="off", http=protocol_class(limits, services.metrics), ws="none",
                proxy_headers=False, **common,
            )
        )
    metrics_url = None
    if settings.metrics_enabled:
        metrics_url = (
            _url(settings.metrics_host, settings.metrics_port) if side else _url(settings.host, settings.port)
        ) + "/metrics"
    log.info(
        "sandboxd starting", url=_url(settings.host, settings.port), data_dir=str(settings.data_dir),
        metrics=metrics_url, hint=f"create an API key: sandboxd keys create --data-dir {settings.data_dir}",
    )
    # uvicorn re-raises the signal it caught once serve() returns, with the previous handler
    # back; ignoring them here lets the caller's shutdown run (grace period, results recorded).
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    side_task = asyncio.create_task(side.serve(), name="metrics-listener") if side else None
    try:
        await api.serve()
    finally:
        if side is not None and side_task is not None:
            side.should_exit = True
            with contextlib.suppress(asyncio.CancelledError):
                await side_task
        if api.draining is not None and not api.draining.done():  # a second signal cut it short
            api.draining.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await api.draining
