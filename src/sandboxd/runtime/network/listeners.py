"""What every listener the server runs inside a sandbox's namespace shares (the egress proxy,
the transparent TLS listener, each database forward): a cap on connections at once, the
handler tasks tracked so `close()` ends them all, and the two-way copy between two streams.

A listener takes at most `MAX_CONNECTIONS` at once: one more is closed at once and counted as
a refused decision, so a sandbox cannot make the server hold an unbounded number of sockets
and tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Any

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
#: Connections one listener of one execution serves at once, and the refusal's reason.
MAX_CONNECTIONS = 64
TOO_MANY = f"more than {MAX_CONNECTIONS} connections at once"


class Listeners:
    def __init__(self) -> None:
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, handle: Handler, listener: socket.socket, refused: Callable[[], None], **options: Any) -> None:
        """Serve `listener` with `handle` (at most MAX_CONNECTIONS at once; past that the
        connection is closed and `refused` called); `options` go to asyncio.start_server."""
        active = 0

        async def gate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal active
            if active >= MAX_CONNECTIONS:
                refused()
                writer.close()
                return
            task = asyncio.current_task()
            assert task is not None
            active += 1
            self._tasks.add(task)
            try:
                await handle(reader, writer)
            finally:
                active -= 1
                self._tasks.discard(task)

        self._servers.append(await asyncio.start_server(gate, sock=listener, **options))

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
