"""The MCP server at /mcp: the official SDK's lowlevel Server over stateless Streamable HTTP.

Stateless: every POST gets a fresh transport, no `Mcp-Session-Id` is issued, `initialize` is
answered but not required, so any replica can answer any request. Protocol revisions: the
SDK's, i.e. 2025-11-25 and older ones negotiated by `initialize`, and 2026-07-28 (which is
stateless by design) on requests that name it. Responses to requests are SSE streams
(`json_response=False`) so that output can be streamed as progress notifications.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from mcp.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.server.transport_security import TransportSecuritySettings
from starlette.routing import Route

from .. import __version__
from ..config import Settings
from .gate import McpGate
from .handlers import Handlers
from .tools import INPUT_SCHEMAS

if TYPE_CHECKING:
    from ..app import Services

PATH = "/mcp"
_LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
_WILDCARD_BINDS = ("", "0.0.0.0", "::", "[::]")
_HAS_PORT = re.compile(r"^(\[[^\]]*\]|[^:\[\]]+):\d+$")

INSTRUCTIONS = (
    "sandboxd runs code in isolated sandboxes. Use sandbox_execute to run Python, Node.js or "
    "Bash; pass the same thread_id to keep files under /home/baponi between calls. files_list "
    "and files_download read the files of a thread (or of a volume)."
)


def transport_security(settings: Settings) -> TransportSecuritySettings:
    """Host/Origin checks (DNS-rebinding protection): localhost, the address the server is bound
    to, and `public_hosts`; a host given without a port is accepted on any port."""
    if "*" in settings.public_hosts:
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    names = list(_LOCAL_HOSTS)
    if settings.host not in _WILDCARD_BINDS:
        names.append(f"[{settings.host}]" if ":" in settings.host else settings.host)
    names.extend(settings.public_hosts)
    hosts: list[str] = []
    origins: list[str] = []
    for name in dict.fromkeys(names):
        patterns = [name] if _HAS_PORT.match(name) else [name, f"{name}:*"]
        hosts.extend(patterns)
        origins.extend(f"{scheme}://{p}" for p in patterns for scheme in ("http", "https"))
    return TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )


def mount_mcp(app: FastAPI, services: Services) -> None:
    """Serve MCP at /mcp, and run the SDK's session manager (its task group) in `app`'s lifespan."""
    handlers = Handlers(services)
    server: Server[Any] = Server(
        "sandboxd",
        version=__version__,
        instructions=INSTRUCTIONS,
        get_tool_input_schema=INPUT_SCHEMAS.get,
        on_list_tools=handlers.list_tools,
        on_call_tool=handlers.call_tool,
    )
    manager = StreamableHTTPSessionManager(
        app=server,
        stateless=True,
        json_response=False,
        security_settings=transport_security(services.settings),
        max_request_body_size=services.settings.max_body_bytes,
    )
    app.router.routes.append(Route(PATH, endpoint=McpGate(manager.handle_request, services, PATH)))
    previous = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(asgi_app: Any) -> AsyncIterator[Any]:
        async with manager.run(), previous(asgi_app) as state:
            yield state

    app.router.lifespan_context = lifespan
