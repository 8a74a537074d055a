"""The allowlist egress proxy: the only way out of an `allowlist` sandbox.

It accepts on a socket that lives inside the sandbox's otherwise empty network namespace, so
the sandbox reaches it at 127.0.0.1:3128 and nothing else. Each request names a host
(`CONNECT host:port` for TLS, or an absolute `http://host/...` URI); the decision uses that
name only. The proxy resolves the name itself and refuses it when any address it resolves
to is in `addresses.egress_refusal` (no DNS rebinding into the operator's network), then
connects to the address it checked. Raw IP destinations are refused: an allowlist is a list
of names. Every decision is counted for the execution's audit record.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from .addresses import IPAddress, egress_refusal
from .policy import NetworkDecision, NetworkPolicy

Resolver = Callable[[str, int], Awaitable[list[str]]]
Connect = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]

LISTEN = ("127.0.0.1", 3128)
PROXY_URL = f"http://{LISTEN[0]}:{LISTEN[1]}"
_HEAD_LIMIT = 16 * 1024
_HEAD_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 10.0
_MAX_DECISIONS = 256
_HOP_HEADERS = frozenset({"proxy-connection", "proxy-authorization", "connection", "keep-alive"})


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _Refused(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class EgressProxy:
    def __init__(
        self,
        policy: NetworkPolicy,
        *,
        resolver: Resolver = system_resolver,
        host_addresses: frozenset[IPAddress] = frozenset(),
        connect: Connect = asyncio.open_connection,
    ) -> None:
        self._policy = policy
        self._resolve = resolver
        self._connect = connect
        self._host_addresses = host_addresses
        self._decisions: dict[tuple[str, int, bool, str], int] = {}
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def decisions(self) -> tuple[NetworkDecision, ...]:
        return tuple(NetworkDecision(h, p, a, r, n) for (h, p, a, r), n in self._decisions.items())

    @property
    def refused_any(self) -> bool:
        return any(not allowed for (_, _, allowed, _) in self._decisions)

    async def start(self, listener: socket.socket) -> None:
        self._server = await asyncio.start_server(self._handle, sock=listener, limit=_HEAD_LIMIT)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        upstream: asyncio.StreamWriter | None = None
        try:
            try:
                async with asyncio.timeout(_HEAD_TIMEOUT_S):
                    head = await reader.readuntil(b"\r\n\r\n")
                method, host, port, forward = _parse_head(head)
                up_reader, upstream = await self._open(host, port)
            except _Refused as refused:
                await _reply(writer, refused.status, refused.reason)
                return
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, ValueError):
                await _reply(writer, 400, "sandboxd egress proxy: malformed request")
                return
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                upstream.write(forward)
            await _splice(reader, writer, up_reader, upstream)
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.close()
            self._tasks.discard(task)

    async def _open(self, host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Decide, resolve, check, connect: the policy in the order it is applied."""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            raise self._deny(host, port, "raw IP destinations are refused; use a host name")
        if not self._policy.permits(host, port):
            raise self._deny(host, port, "not in this sandbox's allowlist")
        try:
            addresses = await self._resolve(host, port)
        except OSError:
            addresses = []
        if not addresses:
            self._note(host, port, True, "does not resolve")
            raise _Refused(502, f"sandboxd egress proxy: {host} does not resolve")
        for address in addresses:
            why = egress_refusal(ipaddress.ip_address(address), self._host_addresses)
            if why is not None:
                raise self._deny(host, port, f"resolves to {why}")
        last: OSError | None = None
        for address in addresses:
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                    opened = await self._connect(address, port)
            except (OSError, TimeoutError) as exc:
                last = exc if isinstance(exc, OSError) else OSError("connect timed out")
                continue
            self._note(host, port, True, "allowed")
            return opened
        self._note(host, port, True, "connect failed")
        raise _Refused(502, f"sandboxd egress proxy: cannot connect to {host}:{port}: {last}")

    def _deny(self, host: str, port: int, reason: str) -> _Refused:
        self._note(host, port, False, reason)
        return _Refused(403, f"sandboxd: egress to {host}:{port} refused by network policy: {reason}")

    def _note(self, host: str, port: int, allowed: bool, reason: str) -> None:
        key = (host, port, allowed, reason)
        if key in self._decisions or len(self._decisions) < _MAX_DECISIONS:
            self._decisions[key] = self._decisions.get(key, 0) + 1


def _parse_head(head: bytes) -> tuple[str, str, int, bytes]:
    """(method, host, port, the head to forward for plain HTTP); ValueError when malformed."""
    lines = head.decode("latin-1").split("\r\n")
    method, target, version = lines[0].split(" ")
    if not version.startswith("HTTP/1."):
        raise ValueError("not HTTP/1.x")
    if method == "CONNECT":
        parts = urlsplit(f"//{target}")
        if parts.port is None:
            raise ValueError("CONNECT without a port")
        return method, _host(parts.hostname), parts.port, b""
    parts = urlsplit(target)
    if parts.scheme != "http":
        raise _Refused(400, "sandboxd egress proxy: use CONNECT for https, absolute http:// URIs otherwise")
    port = parts.port or 80
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    kept = [
        line for line in lines[1:]
        if line and line.split(":", 1)[0].strip().lower() not in _HOP_HEADERS
    ]
    forward = "\r\n".join([f"{method} {path} {version}", *kept, "Connection: close", "", ""])
    return method, _host(parts.hostname), port, forward.encode("latin-1")


def _host(name: str | None) -> str:
    if not name:
        raise ValueError("no host")
    name = name.rstrip(".").lower()
    if not name.isascii():
        name = name.encode("idna").decode("ascii")
    return name


async def _reply(writer: asyncio.StreamWriter, status: int, text: str) -> None:
    reason = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}[status]
    body = (text + "\n").encode()
    writer.write(
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        f"X-Sandboxd-Policy: {'blocked' if status == 403 else 'error'}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(ConnectionError, OSError):
        await writer.drain()


async def _splice(
    client_r: asyncio.StreamReader,
    client_w: asyncio.StreamWriter,
    up_r: asyncio.StreamReader,
    up_w: asyncio.StreamWriter,
) -> None:
    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await src.read(65536):
                dst.write(chunk)
                await dst.drain()
            if dst.can_write_eof():
                dst.write_eof()

    await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))
