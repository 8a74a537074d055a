"""Database connectors: 127.0.0.1:port inside the sandbox, spliced to an admin-chosen target.

Each `Forward` has a listening socket made inside the sandbox's namespace (netns.create); each
connection accepted there is joined to a connection the server opens to host:upstream_port
from its own network. The target is not checked against `egress_refusal`: the admin chose it
(a database on the server's loopback is the usual case), and reaching it is the connector's
whole point. The sandbox cannot pick another target. One decision per forward used.
Each forward takes at most `listeners.MAX_CONNECTIONS` connections at once.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

from .listeners import TOO_MANY, Listeners, splice
from .policy import Forward, NetworkDecision

Connect = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
_CONNECT_TIMEOUT_S = 10.0


class Forwarder:
    def __init__(self, *, connect: Connect = asyncio.open_connection) -> None:
        self._connect = connect
        self._listeners = Listeners()
        #: (connector, host, port, reason) -> connections
        self._counts: dict[tuple[str, str, int, str], int] = {}

    @property
    def decisions(self) -> tuple[NetworkDecision, ...]:
        return tuple(
            NetworkDecision(host, port, reason != TOO_MANY, reason, count, connector=connector)
            for (connector, host, port, reason), count in self._counts.items()
        )

    async def start(self, forward: Forward, listener: socket.socket) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self._serve(forward, reader, writer)

        await self._listeners.start(handle, listener, lambda: self._count(forward, TOO_MANY))

    async def close(self) -> None:
        await self._listeners.close()

    async def _serve(self, forward: Forward, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                    up_reader, upstream = await self._connect(forward.host, forward.upstream_port)
            except (OSError, TimeoutError):
                self._count(forward, "connect failed")
                return
            self._count(forward, "forwarded")
            await splice(reader, writer, up_reader, upstream)
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.close()

    def _count(self, forward: Forward, reason: str) -> None:
        key = (forward.connector, forward.host, forward.upstream_port, reason)
        self._counts[key] = self._counts.get(key, 0) + 1
