"""Database connectors: 127.0.0.1:port inside the sandbox, spliced to an admin-chosen target.

Each `Forward` has a listening socket made inside the sandbox's namespace (netns.create); each
connection accepted there is joined to a connection the server opens to host:upstream_port
from its own network. The target is not checked against `egress_refusal`: the admin chose it
(a database on the server's loopback is the usual case), and reaching it is the connector's
whole point. The sandbox cannot pick another target. One decision per forward used.

Every listener the server runs inside a sandbox's namespace (here, the egress proxy, the
transparent TLS listener) takes at most `MAX_CONNECTIONS` at once (`capped`): one more is
closed at once and counted as a refused decision, so a sandbox cannot make the server hold
an unbounded number of sockets and tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable

from .policy import Forward, NetworkDecision

Connect = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
_CONNECT_TIMEOUT_S = 10.0
#: Connections one listener of one execution serves at once, and the refusal's reason.
MAX_CONNECTIONS = 64
TOO_MANY = f"more than {MAX_CONNECTIONS} connections at once"


def capped(handle: Handler, limit: int, refused: Callable[[], None]) -> Handler:
    """`handle` for at most `limit` connections at once; past that, close and call `refused`."""
    active = 0

    async def gate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active
        if active >= limit:
            refused()
            writer.close()
            return
        active += 1
        try:
            await handle(reader, writer)
        finally:
            active -= 1

    return gate


class Forwarder:
    def __init__(self, *, connect: Connect = asyncio.open_connection) -> None:
        self._connect = connect
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[None]] = set()
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
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            try:
                await self._serve(forward, reader, writer)
            finally:
                self._tasks.discard(task)

        gate = capped(handle, MAX_CONNECTIONS, lambda: self._count(forward, TOO_MANY))
        self._servers.append(await asyncio.start_server(gate, sock=listener))

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        for server in self._servers:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 2)

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


async def splice(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    up_r: asyncio.StreamReader,
    up_w: asyncio.StreamWriter,
) -> None:
    """Copy both ways until both ends are done (a half-close is passed on)."""

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await src.read(65536):
                dst.write(chunk)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()

    await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))
