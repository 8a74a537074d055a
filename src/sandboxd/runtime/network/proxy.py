"""The allowlist egress proxy: the only way out of an `allowlist` sandbox.

It accepts on a socket that lives inside the sandbox's otherwise empty network namespace, so
the sandbox reaches it at 127.0.0.1:3128 and nothing else. Each request names a host
(`CONNECT host:port` for TLS, or an absolute `http://host/...` URI); the decision uses that
name only. The proxy resolves the name itself and refuses it when any address it resolves
to is in `addresses.egress_refusal` (no DNS rebinding into the operator's network), then
connects to the address it checked. Raw IP destinations are refused: an allowlist is a list
of names. Every decision is counted for the execution's audit record.

With brokered connectors (broker.py) it also terminates TLS for their hosts: `CONNECT` to a
connector host gets a 200, then the server side of TLS with a leaf of the server's CA, then
the broker; and `start_transparent` serves clients that ignore proxy variables, which reach a
connector host through the sandbox's /etc/hosts at 127.0.0.1:443 and are told apart by SNI.
A connector host is reachable for its connector even when the allowlist lacks it (plain
`http://` to it goes through unchanged, never with the secret). `permit_any` (network `full`)
lets any name through that passes `egress_refusal`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import ssl
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import urlsplit

from . import broker as _broker
from .addresses import IPAddress, egress_refusal
from .ca import CertificateAuthority
from .listeners import TOO_MANY, Listeners, splice
from .policy import Brokered, Egress, NetworkDecision, NetworkPolicy, host_name

Resolver = Callable[[str, int], Awaitable[list[str]]]
Connect = Callable[[str, int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]

LISTEN = ("127.0.0.1", 3128)
PROXY_URL = f"http://{LISTEN[0]}:{LISTEN[1]}"
_HEAD_LIMIT = 16 * 1024
_HEAD_TIMEOUT_S = 10.0
_CONNECT_TIMEOUT_S = 10.0
_MAX_DECISIONS = 256
#: Where a decision goes once the record is full: one row per (connector, allowed, method),
#: host "*", so nothing goes unrecorded and a refusal still shows.
_OVERFLOW_HOST = "*"
_OVERFLOW_REASON = "more destinations than the record holds"
#: No control character anywhere in a request's head (a NUL would cut the name the
#: resolver sees short of the one the rules saw); a tab only inside header lines.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
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
        egress: Egress = Egress(),
        ca: CertificateAuthority | None = None,
        upstream_tls: ssl.SSLContext | None = None,
        permit_any: bool = False,
    ) -> None:
        self._policy = policy
        self._resolve = resolver
        self._connect = connect
        self._host_addresses = host_addresses
        self._egress = egress if ca is not None else Egress(forwards=egress.forwards)
        self._ca = ca
        self._upstream_tls = upstream_tls or ssl.create_default_context()
        self._permit_any = permit_any
        self._decisions: dict[_Key, int] = {}
        self._listeners = Listeners()

    @property
    def decisions(self) -> tuple[NetworkDecision, ...]:
        return tuple(NetworkDecision(h, p, a, r, n, c, m, s) for (h, p, a, r, c, m, s), n in self._decisions.items())

    @property
    def refused_any(self) -> bool:
        return any(not key[2] for key in self._decisions)

    async def start(self, listener: socket.socket) -> None:
        await self._listeners.start(
            self._handle, listener, lambda: self._note(LISTEN[0], LISTEN[1], False, TOO_MANY), limit=_HEAD_LIMIT
        )

    async def start_transparent(
        self, listener: socket.socket, contexts: Mapping[str, ssl.SSLContext], *, port: int | None = None
    ) -> None:
        """TLS on `listener` (127.0.0.1:port in the sandbox) for the exact connector hosts in
        `contexts`, picked by SNI; any other name is refused in the handshake. `port` is the
        one the sandbox meant (default: the listener's)."""
        port = port if port is not None else listener.getsockname()[1]
        names = {id(ctx): host for host, ctx in contexts.items()}
        front = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        front.minimum_version = ssl.TLSVersion.TLSv1_2

        def pick(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
            try:
                host = host_name(name)
            except ValueError:
                self._note("(no SNI)" if not name else "(invalid SNI)", port, False, "not a connector host")
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            if host not in contexts:
                self._note(host, port, False, "not a connector host")
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            sslobj.context = contexts[host]
            return None

        front.sni_callback = pick

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            sslobj = writer.get_extra_info("ssl_object")
            host = names.get(id(sslobj.context)) if sslobj is not None else None
            rule = self._egress.broker_for(host, port) if host is not None else None
            if host is None or rule is None:
                writer.close()
                return
            await self._broker(reader, writer, host, port, rule)

        # Counted once TLS is up (asyncio runs the handshake before `handle`); the handshake
        # itself is bounded in time.
        await self._listeners.start(
            handle, listener, lambda: self._note(LISTEN[0], port, False, TOO_MANY),
            ssl=front, limit=_HEAD_LIMIT, ssl_handshake_timeout=_HEAD_TIMEOUT_S,
        )

    async def close(self) -> None:
        await self._listeners.close()

    async def _broker(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str, port: int, rule: Brokered
    ) -> None:
        def note(h: str, p: int, allowed: bool, reason: str, method: str, status: int | None) -> None:
            self._note(h, p, allowed, reason, rule.connector, method, status)

        async def dial(h: str, p: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await self._dial(h, p, rule.connector)

        await _broker.serve(
            reader, writer, host, port, rule, dial=dial, upstream_tls=self._upstream_tls, note=note
        )

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: asyncio.StreamWriter | None = None
        try:
            try:
                async with asyncio.timeout(_HEAD_TIMEOUT_S):
                    head = await reader.readuntil(b"\r\n\r\n")
                method, host, port, forward = _parse_head(head)
                rule = self._egress.broker_for(host, port)
                if method == "CONNECT" and rule is not None and self._ca is not None:
                    # A leaf only for a checked name that the policy lets through (resolved,
                    # no refused address): a sandbox cannot have us sign for anything else.
                    await self._check_resolves(host, port, rule.connector)
                    ctx = await asyncio.to_thread(self._ca.server_context, host)
                    # The client's hello must stay in the socket for TLS, not in the reader.
                    if isinstance(writer.transport, asyncio.ReadTransport):
                        writer.transport.pause_reading()
                    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    await writer.drain()
                    try:
                        await writer.start_tls(ctx)
                    except (OSError, TimeoutError):  # e.g. a client that does not trust our CA
                        self._note(host, port, True, "TLS with the sandbox failed", rule.connector)
                        return
                    await self._broker(reader, writer, host, port, rule)
                    return
                up_reader, upstream = await self._open(host, port, rule)
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
            await splice(reader, writer, up_reader, upstream)
        except (ConnectionError, OSError):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.close()

    async def _open(
        self, host: str, port: int, rule: Brokered | None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Decide, resolve, check, connect: the policy in the order it is applied."""
        try:
            ipaddress.ip_address(host)
        except ValueError:
            pass
        else:
            raise self._deny(host, port, "raw IP destinations are refused; use a host name")
        if rule is not None:  # plain http to a connector host: through, but never with the secret
            opened = await self._dial(host, port, rule.connector)
            self._note(host, port, True, "brokered only over https", rule.connector)
            return opened
        if not (self._permit_any or self._policy.permits(host, port)):
            raise self._deny(host, port, "not in this sandbox's allowlist")
        opened = await self._dial(host, port)
        self._note(host, port, True, "allowed")
        return opened

    async def _check_resolves(self, host: str, port: int, connector: str | None = None) -> list[str]:
        """The name's addresses, or _Refused (noted) when none or any leads inside."""
        try:
            addresses = await self._resolve(host, port)
        except OSError:
            addresses = []
        if not addresses:
            self._note(host, port, True, "does not resolve", connector)
            raise _Refused(502, f"sandboxd egress proxy: {host} does not resolve")
        for address in addresses:
            why = egress_refusal(ipaddress.ip_address(address), self._host_addresses)
            if why is not None:
                raise self._deny(host, port, f"resolves to {why}", connector)
        return addresses

    async def _dial(
        self, host: str, port: int, connector: str | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Resolve, refuse any address that leads inside, connect to an address checked."""
        addresses = await self._check_resolves(host, port, connector)
        last: OSError | None = None
        for address in addresses:
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT_S):
                    return await self._connect(address, port)
            except (OSError, TimeoutError) as exc:
                last = exc if isinstance(exc, OSError) else OSError("connect timed out")
                continue
        self._note(host, port, True, "connect failed", connector)
        raise _Refused(502, f"sandboxd egress proxy: cannot connect to {host}:{port}: {last}")

    def _deny(self, host: str, port: int, reason: str, connector: str | None = None) -> _Refused:
        self._note(host, port, False, reason, connector)
        return _Refused(403, f"sandboxd: egress to {host}:{port} refused by network policy: {reason}")

    def _note(
        self, host: str, port: int, allowed: bool, reason: str,
        connector: str | None = None, method: str | None = None, status: int | None = None,
    ) -> None:
        key = (host, port, allowed, reason, connector, method, status)
        if key not in self._decisions and len(self._decisions) >= _MAX_DECISIONS:
            key = (_OVERFLOW_HOST, 0, allowed, _OVERFLOW_REASON, connector, method, None)
        self._decisions[key] = self._decisions.get(key, 0) + 1


_Key = tuple[str, int, bool, str, str | None, str | None, int | None]


def _parse_head(head: bytes) -> tuple[str, str, int, bytes]:
    """(method, host, port, the head to forward for plain HTTP); ValueError when malformed."""
    lines = head.decode("latin-1").split("\r\n")
    if _CONTROL.search(lines[0]) or "\t" in lines[0] or any(_CONTROL.search(line) for line in lines[1:]):
        raise ValueError("a control character in the request")
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
    """The checked name (policy.host_name): ValueError, so a 400, for anything else."""
    return host_name(name)


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
