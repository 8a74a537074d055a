"""Brokered connectors: HTTP/1.1 on a TLS stream the server terminated, the secret put in on
the way out and taken out on the way back.

The sandbox holds only a placeholder (random per execution). Each request to a connector host
gets the connector's own header set to the template with the secret, whatever the client
sent in it (the sandbox never chooses the bytes around the secret); the placeholder is put
nowhere else (not the target, the query or another header). The session is bound to its host: `Host` is always the broker's (the
client's is dropped), an absolute-form target must name that host (it is rewritten to
origin-form) and `CONNECT` or `Upgrade` are refused. `Range`/`If-Range` are dropped, so that
an echo cannot be fetched in pieces the scrubber never sees whole. The request goes on over TLS verified against the host's trust store (plus an optional extra
CA: `Settings.broker_upstream_ca_file`). The response comes back with the secret, and its
base64 forms, replaced by the placeholder in the reason phrase, headers and body (streamed,
across chunk boundaries; `Accept-Encoding: identity` upstream keeps the body scrubbable), re-framed since
its length changed. Several requests may share one client connection.

The secret never reaches a log, an exception that leaves here or a decision: errors are
answered with fixed texts.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import h11

from ...scrub import StreamReplacer, paired_forms
from .policy import Brokered, host_name

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]
#: Opens a TCP connection to host:port the policy allows (the proxy's own checks), or raises.
Dial = Callable[[str, int], Awaitable[Streams]]
#: Records one brokered request: (host, port, allowed, reason, method, upstream status or None).
Note = Callable[[str, int, bool, str, str, int | None], None]

_READ = 65536
_IDLE_S = 60.0
_UPSTREAM_S = 120.0
_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization", b"te", b"trailer",
    b"upgrade", b"expect", b"accept-encoding",
})
#: Never passed on: the broker sets `Host`; a byte range of an echo could carry a piece of the
#: secret that the scrubber cannot recognise.
_DROPPED = frozenset({b"host", b"range", b"if-range"})
#: Methods recorded by name; any other is "OTHER" (the record stays small: see proxy._note).
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
_REFRAMED = frozenset({b"content-length", b"transfer-encoding", b"connection", b"keep-alive"})


def scrubber(rule: Brokered) -> StreamReplacer:
    """The secret's forms (scrub.py: itself, base64 at each alignment) back to the placeholder's."""
    return StreamReplacer(paired_forms(rule.secret.encode(), rule.placeholder.encode()))


@dataclass
class _Upstream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    conn: h11.Connection

    def close(self) -> None:
        self.writer.close()


class _Failed(Exception):
    """The upstream could not be reached or spoke nonsense (a fixed text, never a secret)."""


async def serve(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    host: str,
    port: int,
    rule: Brokered,
    *,
    dial: Dial,
    upstream_tls: ssl.SSLContext,
    note: Note,
) -> None:
    """Broker every request on this (already TLS-terminated) client connection, then close it."""
    session = _Session(reader, writer, host, port, rule, dial, upstream_tls, note)
    sock = writer.get_extra_info("socket")
    if sock is not None:  # small writes (a head, a chunk) go out at once
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await session.run()
    except Exception:  # noqa: BLE001 - anything here could carry the secret: say nothing
        pass
    finally:
        session.close()


class _Session:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        port: int,
        rule: Brokered,
        dial: Dial,
        upstream_tls: ssl.SSLContext,
        note: Note,
    ) -> None:
        self.reader, self.writer = reader, writer
        self.host, self.port, self.rule = host, port, rule
        self.dial, self.tls, self.note = dial, upstream_tls, note
        self.client = h11.Connection(h11.SERVER)
        self.upstream: _Upstream | None = None

    def close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None
        self.writer.close()

    async def run(self) -> None:
        while True:
            try:
                async with asyncio.timeout(_IDLE_S):
                    event = await _next(self.client, self.reader)
            except h11.RemoteProtocolError:
                await self._answer(400, "sandboxd broker: malformed request")
                return
            if not isinstance(event, h11.Request):
                return
            if not await self._one(event):
                return
            if self.client.our_state is not h11.DONE or self.client.their_state is not h11.DONE:
                return
            self.client.start_next_cycle()

    async def _one(self, request: h11.Request) -> bool:
        """One request through; False when the client connection cannot go on."""
        method = request.method.decode("ascii", "replace")
        method = method if method in _METHODS else "OTHER"
        target = self._target(request.target)
        if method == "CONNECT" or any(name == b"upgrade" for name, _ in request.headers):
            self.note(self.host, self.port, False, "CONNECT and upgrades are not brokered", method, None)
            await self._answer(400, "sandboxd broker: CONNECT and protocol upgrades are not brokered")
            return False
        if target is None:
            self.note(self.host, self.port, False, "a target for another host", method, None)
            await self._answer(400, f"sandboxd broker: this connection reaches {self.host} only")
            return False
        if self.client.client_is_waiting_for_100_continue:
            await self._send(h11.InformationalResponse(status_code=100, headers=[]))
        has_body = any(name in (b"content-length", b"transfer-encoding") for name, _ in request.headers)
        try:
            outgoing = h11.Request(method=request.method, target=target, headers=self._headers(request))
            reused = self.upstream is not None and self.upstream.conn.our_state is h11.IDLE
            try:
                up, response = await self._exchange(outgoing)
            except (_Failed, OSError, TimeoutError, h11.ProtocolError):
                if not reused or has_body:
                    raise
                # A kept-alive upstream connection may have been closed while idle: nothing of
                # the request was lost (it has no body), so once more on a new connection.
                self._drop_upstream()
                up, response = await self._exchange(outgoing)
        except (_Failed, OSError, TimeoutError, h11.ProtocolError):
            self._drop_upstream()
            self.note(self.host, self.port, True, "upstream failed", method, None)
            await self._answer(502, "sandboxd broker: the upstream could not be reached")
            return False
        self.note(self.host, self.port, True, "brokered", method, response.status_code)
        scrub = scrubber(self.rule)
        bodyless = method == "HEAD" or response.status_code in (204, 304)
        headers = [
            (name, scrub.replace(value))
            for name, value in response.headers.raw_items()
            if bodyless or name.lower() not in _REFRAMED
        ]
        if bodyless:
            headers = [(n, v) for n, v in headers if n.lower() not in (b"connection", b"keep-alive")]
        await self._send(h11.Response(
            status_code=response.status_code, headers=headers, reason=scrub.replace(response.reason)
        ))
        while True:
            async with asyncio.timeout(_UPSTREAM_S):
                event = await _next(up.conn, up.reader)
            if isinstance(event, h11.Data):
                if out := scrub.feed(event.data):
                    await self._send(h11.Data(data=out))
            elif isinstance(event, h11.EndOfMessage):
                if out := scrub.flush():
                    await self._send(h11.Data(data=out))
                await self._send(h11.EndOfMessage())
                break
            else:
                return False  # the upstream broke off mid-body: so do we
        if up.conn.our_state is h11.DONE and up.conn.their_state is h11.DONE:
            up.conn.start_next_cycle()
        else:
            self._drop_upstream()
        return True

    async def _exchange(self, outgoing: h11.Request) -> tuple[_Upstream, h11.Response]:
        """Send the request (its body read from the client as it comes); the response's head."""
        up = await self._upstream()
        await _send(up, outgoing)
        while up.conn.our_state is h11.SEND_BODY:
            if self.client.their_state is h11.DONE:  # a second try: the request was all read
                await _send(up, h11.EndOfMessage())
                break
            async with asyncio.timeout(_IDLE_S):
                event = await _next(self.client, self.reader)
            if isinstance(event, h11.Data):
                await _send(up, h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await _send(up, h11.EndOfMessage())
            else:
                raise _Failed("the client went away")
        async with asyncio.timeout(_UPSTREAM_S):
            response = await _next(up.conn, up.reader)
            while isinstance(response, h11.InformationalResponse):
                response = await _next(up.conn, up.reader)
        if not isinstance(response, h11.Response):
            raise _Failed("the upstream closed the connection")
        return up, response

    def _target(self, target: bytes) -> bytes | None:
        """The target in origin-form, or None when it names anything but this session's host."""
        if target.startswith(b"/") or (target == b"*"):
            return target
        try:
            parts = urlsplit(target.decode("ascii"))
            if (
                parts.scheme == "https" and parts.username is None and parts.password is None
                and host_name(parts.hostname) == self.host and (parts.port or 443) == self.port
            ):
                path = parts.path or "/"
                return (path + ("?" + parts.query if parts.query else "")).encode("ascii")
        except ValueError:  # UnicodeError, a bad port or name
            pass
        return None

    def _headers(self, request: h11.Request) -> list[tuple[bytes, bytes]]:
        wanted = self.rule.header.lower().encode()
        host = self.host if self.port == 443 else f"{self.host}:{self.port}"
        headers = [(b"Host", host.encode())]
        for name, value in request.headers.raw_items():
            lower = name.lower()
            if lower in _HOP or lower in _DROPPED or lower == wanted:
                continue
            headers.append((name, value))
        # The connector's header is the template, whatever the client sent in it: the sandbox
        # never chooses the bytes around the secret (padding it across a truncated echo would
        # read it out a character at a time).
        headers.append((self.rule.header.encode(), self.rule.header_value().encode()))
        headers.append((b"Accept-Encoding", b"identity"))
        return headers

    async def _upstream(self) -> _Upstream:
        if self.upstream is not None and self.upstream.conn.our_state is h11.IDLE:
            return self.upstream
        self._drop_upstream()
        try:
            reader, writer = await self.dial(self.host, self.port)
        except Exception as exc:  # noqa: BLE001 - the dialer noted why; no text goes on
            raise _Failed("dial") from exc
        try:
            async with asyncio.timeout(_UPSTREAM_S):
                await writer.start_tls(self.tls, server_hostname=self.host)
        except BaseException:
            writer.close()
            raise
        self.upstream = _Upstream(reader, writer, h11.Connection(h11.CLIENT))
        return self.upstream

    def _drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.close()
            self.upstream = None

    async def _send(self, event: h11.Event) -> None:
        data = self.client.send(event)
        if data:
            self.writer.write(data)
            async with asyncio.timeout(_IDLE_S):  # a client that stops reading
                await self.writer.drain()

    async def _answer(self, status: int, text: str) -> None:
        if self.client.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        body = (text + "\n").encode()
        with contextlib.suppress(Exception):
            await self._send(h11.Response(status_code=status, headers=[
                (b"Content-Type", b"text/plain"), (b"Content-Length", str(len(body)).encode()),
                (b"Connection", b"close"), (b"X-Sandboxd-Policy", b"error"),
            ]))
            await self._send(h11.Data(data=body))
            await self._send(h11.EndOfMessage())


async def _next(conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Event | type[h11.PAUSED]:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]  # narrowed above
        conn.receive_data(await reader.read(_READ))


async def _send(up: _Upstream, event: h11.Event) -> None:
    data = up.conn.send(event)
    if data:
        up.writer.write(data)
        async with asyncio.timeout(_UPSTREAM_S):  # an upstream that stops reading
            await up.writer.drain()
