"""The HTTP gate in front of the MCP SDK: every request to /mcp is authenticated here first.

Pure ASGI. It authenticates the Bearer key exactly as the REST API does (same limiter, same
401/429 bodies `{"error", "message"}`), puts the caller's principal in the ASGI scope for the
tool handlers, and answers 405 to anything but POST: a stateless server has no session to
DELETE and no server-initiated messages to send on a GET stream, and the Streamable HTTP
transport spec asks such a server to answer GET with 405. A JSON array (a JSON-RPC batch,
dropped from MCP in revision 2025-06-18) is refused with JSON-RPC's "Invalid Request".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcp_types import INVALID_REQUEST
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..api.errors import error_response, response_for
from ..errors import SandboxdError
from ..service.auth import authenticate, bearer_token

if TYPE_CHECKING:
    from ..app import Services

#: The ASGI scope key that carries the authenticated Principal to the tool handlers.
PRINCIPAL = "sandboxd.principal"


class McpGate:
    def __init__(self, app: ASGIApp, services: Services, path: str) -> None:
        self.app = app
        self.services = services
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        client = scope.get("client")  # forwarded only by trusted proxies (server.py)
        address = client[0] if client else "unknown"
        authorization = Headers(scope=scope).get("authorization")
        try:
            principal = await authenticate(
                self.services.keys, self.services.auth_failures, address, bearer_token(authorization)
            )
        except SandboxdError as exc:
            await response_for(exc)(scope, receive, send)
            return
        if scope["method"] != "POST":
            refusal = error_response(
                405,
                "method_not_allowed",
                f"method {scope['method']} is not allowed on {self.path}: this MCP server is "
                "stateless (no sessions, no server-initiated messages); POST JSON-RPC messages",
                {"Allow": "POST"},
            )
            await refusal(scope, receive, send)
            return
        body = await _read_body(receive)
        if body is None:  # the client went away, or BodySizeLimit refused the body (413)
            return
        if body.lstrip()[:1] == b"[":
            await _batch_refusal()(scope, receive, send)
            return
        replay: list[Message] = [{"type": "http.request", "body": body, "more_body": False}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        scope[PRINCIPAL] = principal
        await self.app(scope, replayed, send)


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body (bounded: the app's BodySizeLimit runs first); None on a disconnect."""
    chunks = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def _batch_refusal() -> JSONResponse:
    return JSONResponse(
        {
            "jsonrpc": "2.0",
            "id": None,
            "error": {
                "code": INVALID_REQUEST,
                "message": "JSON-RPC batches are not supported (MCP 2025-06-18 and later): "
                "POST one request or notification at a time",
            },
        },
        status_code=400,
    )
