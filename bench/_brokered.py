"""Section 9 of the suite: one HTTPS request through the brokering proxy vs through the plain
allowlist proxy (a CONNECT tunnel), to the same TLS upstream on loopback, in-process.

Both proxies are `EgressProxy` on a loopback listener with an injected resolver and connect
(a documentation address, redirected to the upstream's 127.0.0.1 port), so the policy runs as
in a sandbox's namespace. Each sample is what a client does for one call: connect to the
proxy, CONNECT, TLS handshake (with the upstream itself when tunnelled, with the server's
leaf when brokered: the broker then makes its own TLS connection upstream), one GET, the
whole response, close. Measured interleaved; the added latency is the difference of medians.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import h11
from _common import Series

from sandboxd.runtime.network import AllowRule, Brokered, CertificateAuthority, Egress, NetworkPolicy
from sandboxd.runtime.network.proxy import EgressProxy

_ADDRESS = "203.0.113.30"
_HOST = "api.bench.test"
_BODY = b'{"ok": true, "items": [1, 2, 3]}' * 8


@dataclass
class BrokerFigures:
    tunnel: Series
    brokered: Series

    @property
    def added_ms(self) -> float:
        return self.brokered.median() - self.tunnel.median()


def measure(n: int, warmup: int) -> BrokerFigures:
    return asyncio.run(_measure(n, warmup))


async def _measure(n: int, warmup: int) -> BrokerFigures:
    with tempfile.TemporaryDirectory(prefix="sandboxd-bench-broker-") as tmp:
        upstream_ca = CertificateAuthority.load_or_create(Path(tmp, "upstream-ca"))
        ca = CertificateAuthority.load_or_create(Path(tmp, "ca"))
        upstream = await asyncio.start_server(_answer, "127.0.0.1", 0, ssl=upstream_ca.server_context(_HOST))
        up_port = upstream.sockets[0].getsockname()[1]

        async def resolve(host: str, port: int) -> list[str]:
            return [_ADDRESS]

        async def connect(address: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
            return await asyncio.open_connection("127.0.0.1", up_port)

        upstream_tls = ssl.create_default_context(cadata=upstream_ca.cert_pem.decode())
        rule = Brokered("bench", (AllowRule(_HOST),), "Authorization", "Bearer {secret}", "ph-0123456789", "s3cr3t-bench")
        plain = EgressProxy(NetworkPolicy("allowlist", (AllowRule(_HOST),)), resolver=resolve, connect=connect)
        broker = EgressProxy(
            NetworkPolicy("allowlist"), resolver=resolve, connect=connect,
            egress=Egress(brokered=(rule,)), ca=ca, upstream_tls=upstream_tls,
        )
        ports = []
        for proxy in (plain, broker):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sock.bind(("127.0.0.1", 0))
            sock.listen(64)
            sock.setblocking(False)
            await proxy.start(sock)
            ports.append(sock.getsockname()[1])
        client_for = {
            "tunnel": (ports[0], upstream_tls),
            "brokered": (ports[1], ssl.create_default_context(cadata=ca.cert_pem.decode())),
        }
        got = {"tunnel": Series("CONNECT tunnel (allowlist proxy)"), "brokered": Series("brokered (CONNECT + broker)")}
        try:
            for i in range(warmup + n):
                for name, (port, ctx) in client_for.items():
                    start = time.perf_counter()
                    await _one_call(port, ctx)
                    if i >= warmup:
                        got[name].samples_ms.append((time.perf_counter() - start) * 1000)
        finally:
            for proxy in (plain, broker):
                await proxy.close()
            upstream.close()
        return BrokerFigures(got["tunnel"], got["brokered"])


async def _one_call(proxy_port: int, ctx: ssl.SSLContext) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", proxy_port)
    try:
        w.write(f"CONNECT {_HOST}:443 HTTP/1.1\r\nHost: {_HOST}:443\r\n\r\n".encode())
        if not (await r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200"):
            raise RuntimeError("the proxy refused the bench's CONNECT")
        await w.start_tls(ctx, server_hostname=_HOST)
        conn = h11.Connection(h11.CLIENT)
        w.write(conn.send(h11.Request(method="GET", target="/v1/items", headers=[("Host", _HOST)])))
        w.write(conn.send(h11.EndOfMessage()))
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await r.read(65536))
            elif isinstance(event, h11.Response) and event.status_code != 200:
                raise RuntimeError(f"the bench's call got {event.status_code}")
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                break
    finally:
        w.close()


async def _answer(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await r.read(65536))
            elif isinstance(event, h11.EndOfMessage):
                w.write(conn.send(h11.Response(status_code=200, headers=[("Content-Length", str(len(_BODY)))])))
                w.write(conn.send(h11.Data(data=_BODY)) + conn.send(h11.EndOfMessage()))
                await w.drain()
                conn.start_next_cycle()
            elif isinstance(event, h11.ConnectionClosed):
                break
    except (h11.ProtocolError, ConnectionError, ssl.SSLError):
        pass
    finally:
        w.close()
