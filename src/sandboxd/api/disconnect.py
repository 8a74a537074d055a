"""Tell the service layer when a request's client goes away, for a request waiting for a slot.

uvicorn does not cancel a handler whose client disconnected, and nothing reads the connection
once the body is in: an execute request waiting in the admission queue would keep its place
and, once admitted, run for nobody. This keeps reading after the body and sets the request's
`caller_gone` event on `http.disconnect`; the limiter then drops the waiter
(service/admission.py). Pure ASGI; the app still sees every message, in order.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..service.admission import caller_gone


class CallerGone:
    def __init__(self, app: ASGIApp, paths: tuple[str, ...]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        gone = asyncio.Event()
        after_body: asyncio.Future[Message] | None = None

        async def watched() -> Message:
            message = await receive()
            if message["type"] == "http.disconnect":
                gone.set()
            return message

        async def app_receive() -> Message:
            nonlocal after_body
            if after_body is not None:  # the one message after the body: a disconnect
                return await asyncio.shield(after_body)
            message = await watched()
            if message["type"] == "http.request" and not message.get("more_body", False):
                after_body = asyncio.ensure_future(watched())
            return message

        token = caller_gone.set(gone)
        try:
            await self.app(scope, app_receive, send)
        finally:
            caller_gone.reset(token)
            if after_body is not None:
                after_body.cancel()
