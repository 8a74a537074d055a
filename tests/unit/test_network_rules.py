"""Network policy pieces on their own: allowlist rules, the refused-address table, the proxy's
request parsing and refusals (on a loopback listener, with names resolved by a test table)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket

import pytest

from sandboxd.runtime.network import NetworkPolicy, egress_refusal, parse_rule
from sandboxd.runtime.network.policy import host_name
from sandboxd.runtime.network.proxy import EgressProxy, _parse_head
from sandboxd.runtime.network.usernet import rules


@pytest.mark.parametrize(
    ("entry", "host", "port", "expected"),
    [
        ("pypi.org", "pypi.org", 443, True),
        ("pypi.org", "pypi.org", 80, True),
        ("pypi.org", "pypi.org", 8080, False),
        ("pypi.org", "files.pypi.org", 443, False),
        ("PyPI.org.", "pypi.org", 443, True),
        ("*.example.com", "a.example.com", 443, True),
        ("*.example.com", "a.b.example.com", 443, True),
        ("*.example.com", "example.com", 443, False),
        ("*.example.com", "evilexample.com", 443, False),
        ("*.example.com", "example.com.evil.org", 443, False),
        ("files.example.com:8443", "files.example.com", 8443, True),
        ("files.example.com:8443", "files.example.com", 443, False),
        ("bücher.de", "xn--bcher-kva.de", 443, True),
    ],
)
def test_allow_rules_match_names_and_ports(entry: str, host: str, port: int, expected: bool) -> None:
    assert parse_rule(entry).matches(host, port) is expected


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("1.2.3.4", "IP addresses are not allowed"),
        ("::1", "port must be"),
        ("localhost", "must be a domain"),
        ("*", "must be a domain"),
        ("*.com", "must be a domain"),
        ("a.*.example.com", "must be a domain"),
        ("exa mple.com", "must be a domain"),
        ("-bad.example.com", "must be a domain"),
        ("example.com:0", "port must be 1-65535"),
        ("example.com:99999", "port must be 1-65535"),
        ("example.com:http", "port must be 1-65535"),
        ("http://example.com", "port must be"),
        ("", "must be a domain"),
    ],
)
def test_bad_allow_entries_are_refused_with_the_reason(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_rule(entry)


def test_policy_modes() -> None:
    assert NetworkPolicy.parse("none").mode == "none"
    with pytest.raises(ValueError, match="must be one of"):
        NetworkPolicy.parse("host")
    with pytest.raises(ValueError, match="need network policy 'allowlist'"):
        NetworkPolicy.parse("full", ["pypi.org"])
    policy = NetworkPolicy.parse("allowlist", ["pypi.org", "*.npmjs.org"])
    assert policy.permits("registry.npmjs.org", 443) and not policy.permits("npmjs.org", 443)


@pytest.mark.parametrize(
    ("address", "refused"),
    [
        ("127.0.0.1", True),
        ("10.1.2.3", True),
        ("172.16.0.1", True),
        ("192.168.1.1", True),
        ("169.254.169.254", True),
        ("100.100.100.200", True),
        ("168.63.129.16", True),
        ("192.0.0.192", True),
        ("0.0.0.0", True),
        ("224.0.0.1", True),
        ("255.255.255.255", True),
        ("::1", True),
        ("::", True),
        ("fd00:ec2::254", True),
        ("fe80::1", True),
        ("::ffff:127.0.0.1", True),
        ("::ffff:10.0.0.1", True),
        ("64:ff9b::a9fe:a9fe", True),  # NAT64 of 169.254.169.254
        ("2002:a00:1::", True),  # 6to4 of 10.0.0.1
        ("8.8.8.8", False),
        ("203.0.113.10", False),  # documentation range: stands in for the internet in tests
        ("2606:4700::1111", False),
    ],
)
def test_refused_addresses(address: str, refused: bool) -> None:
    assert (egress_refusal(ipaddress.ip_address(address)) is not None) is refused


def test_the_hosts_own_addresses_are_refused() -> None:
    own = ipaddress.ip_address("198.51.100.7")
    assert egress_refusal(own) is None
    assert egress_refusal(own, frozenset({own})) == "an address of this host"


def test_full_mode_rules_cover_the_same_table_and_the_host() -> None:
    text = rules(frozenset({ipaddress.ip_address("198.51.100.7"), ipaddress.ip_address("127.0.0.1")}))
    for net in ("10.0.0.0/8", "169.254.0.0/16", "100.64.0.0/10", "127.0.0.0/8", "198.51.100.7"):
        assert net in text
    assert "meta nfproto ipv6 reject" in text
    assert "10.0.2.3 meta l4proto { tcp, udp } th dport 53 accept" in text


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"CONNECT pypi.org:443 HTTP/1.1\r\nHost: pypi.org:443\r\n\r\n", ("CONNECT", "pypi.org", 443)),
        (b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\n\r\n", ("CONNECT", "2001:db8::1", 443)),
        (b"GET http://Example.COM./a?b=1 HTTP/1.1\r\nHost: example.com\r\n\r\n", ("GET", "example.com", 80)),
        (b"POST http://example.com:8080/ HTTP/1.0\r\n\r\n", ("POST", "example.com", 8080)),
    ],
)
def test_proxy_reads_the_destination_from_the_request(head: bytes, expected: tuple[str, str, int]) -> None:
    assert _parse_head(head)[:3] == expected


def test_plain_http_is_forwarded_in_origin_form_without_proxy_headers() -> None:
    head = b"GET http://example.com/x?y=1 HTTP/1.1\r\nHost: example.com\r\nProxy-Authorization: s\r\nProxy-Connection: keep-alive\r\nAccept: */*\r\n\r\n"
    forward = _parse_head(head)[3].decode()
    assert forward.startswith("GET /x?y=1 HTTP/1.1\r\n")
    assert "Proxy-" not in forward and "Accept: */*" in forward and "Connection: close" in forward


@pytest.mark.parametrize(
    "head",
    [b"GET / HTTP/1.1\r\n\r\n", b"GET https://example.com/ HTTP/1.1\r\n\r\n", b"CONNECT example.com HTTP/1.1\r\n\r\n", b"NONSENSE\r\n\r\n"],
)
def test_proxy_refuses_malformed_requests(head: bytes) -> None:
    with pytest.raises(Exception):
        _parse_head(head)


class _Proxy:
    """An EgressProxy on a loopback listener, names resolved from a table."""

    def __init__(self, allow: list[str], names: dict[str, list[str]]) -> None:
        async def resolve(host: str, port: int) -> list[str]:
            if host not in names:
                raise socket.gaierror("no such name")
            return names[host]

        async def connect(host: str, port: int):  # type: ignore[no-untyped-def]
            # Every case here must be refused before connecting; a guard that failed would
            # otherwise send a packet off this host, so it fails the test instead.
            raise AssertionError(f"the proxy tried to connect to {host}:{port}")

        self.proxy = EgressProxy(
            NetworkPolicy.parse("allowlist", allow), resolver=resolve, connect=connect
        )
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.sock.setblocking(False)

    async def ask(self, head: bytes) -> bytes:
        reader, writer = await asyncio.open_connection(*self.sock.getsockname())
        writer.write(head)
        answer = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return answer


@pytest.mark.parametrize(
    ("head", "status", "reason"),
    [
        (b"CONNECT denied.test:443 HTTP/1.1\r\n\r\n", b"403", "not in this sandbox's allowlist"),
        (b"CONNECT allowed.test:22 HTTP/1.1\r\n\r\n", b"403", "not in this sandbox's allowlist"),
        (b"CONNECT 203.0.113.10:443 HTTP/1.1\r\n\r\n", b"403", "raw IP destinations are refused"),
        (b"CONNECT rebind.test:443 HTTP/1.1\r\n\r\n", b"403", "resolves to a non-public address (127.0.0.0/8)"),
        (b"CONNECT mixed.test:443 HTTP/1.1\r\n\r\n", b"403", "resolves to a non-public address (169.254.0.0/16)"),
        (b"GET http://gone.test/ HTTP/1.1\r\n\r\n", b"502", "does not resolve"),
        (b"GET / HTTP/1.1\r\n\r\n", b"400", None),
    ],
)
async def test_proxy_refusals_are_answered_and_recorded(head: bytes, status: bytes, reason: str | None) -> None:
    rig = _Proxy(
        ["allowed.test", "rebind.test", "mixed.test", "gone.test"],
        {"rebind.test": ["127.0.0.1"], "mixed.test": ["203.0.113.5", "169.254.169.254"], "allowed.test": ["203.0.113.5"]},
    )
    await rig.proxy.start(rig.sock)
    try:
        answer = await rig.ask(head)
    finally:
        await rig.proxy.close()
    assert answer.split(b" ")[1] == status
    if reason is None:
        assert rig.proxy.decisions == ()
    else:
        [decision] = rig.proxy.decisions
        assert reason in decision.reason
        assert decision.allowed is (status == b"502")
        assert rig.proxy.refused_any is (status == b"403")


async def test_proxy_counts_repeated_decisions_once_each() -> None:
    rig = _Proxy(["allowed.test"], {})
    await rig.proxy.start(rig.sock)
    try:
        for _ in range(3):
            await rig.ask(b"CONNECT denied.test:443 HTTP/1.1\r\n\r\n")
    finally:
        await rig.proxy.close()
    [decision] = rig.proxy.decisions
    assert (decision.host, decision.count) == ("denied.test", 3)


# --- host names a sandbox may ask for (review finding 1) -------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Example.COM.", "example.com"),
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("203.0.113.10", "203.0.113.10"),
        ("2001:db8::1", "2001:db8::1"),
    ],
)
def test_host_names_are_normalised(name: str, expected: str) -> None:
    assert host_name(name) == expected


@pytest.mark.parametrize(
    "name",
    [
        "", "evil.test\x00.pypi.org", "evil.test\n.pypi.org", "a b.pypi.org", "a..pypi.org", "pypi.org..",
        ".pypi.org", "x" * 64 + ".org", ".".join(["abcdefg"] * 32) + ".org", "a/b.pypi.org", "a@b.pypi.org",
        "a%00.pypi.org", "a\\.pypi.org",
    ],
)
def test_host_names_outside_the_name_alphabet_are_refused(name: str) -> None:
    with pytest.raises(ValueError):
        host_name(name)
    assert not parse_rule("*.pypi.org").matches(name, 443)


@pytest.mark.parametrize(
    "head",
    [
        b"CONNECT evil.test\x00.pypi.org:443 HTTP/1.1\r\n\r\n",
        b"GET http://evil.test\x00.pypi.org/ HTTP/1.1\r\nHost: evil.test\r\n\r\n",
        b"GET http://a.pypi.org/\x01 HTTP/1.1\r\n\r\n",
        b"GET http://a.pypi.org/\tx HTTP/1.1\r\n\r\n",
        b"GET http://a.pypi.org/ HTTP/1.1\r\nX-A: b\x00c\r\n\r\n",
        b"CONNECT a.pypi.org:443\x7f HTTP/1.1\r\n\r\n",
    ],
)
def test_control_characters_in_a_request_head_are_refused(head: bytes) -> None:
    with pytest.raises(ValueError):
        _parse_head(head)


@pytest.mark.parametrize(
    "head",
    [
        b"CONNECT evil.test\x00.pypi.org:443 HTTP/1.1\r\n\r\n",
        b"CONNECT other.test\x00.pypi.org:80 HTTP/1.1\r\n\r\n",
        b"GET http://evil.test\x00.pypi.org/exfil HTTP/1.1\r\nHost: evil.test\r\n\r\n",
    ],
)
async def test_a_nul_name_under_a_wildcard_is_a_400_and_never_resolved(head: bytes) -> None:
    asked: list[str] = []
    rig = _Proxy(["*.pypi.org"], {})
    inner = rig.proxy._resolve

    async def resolve(host: str, port: int) -> list[str]:
        asked.append(host)
        return await inner(host, port)

    rig.proxy._resolve = resolve
    await rig.proxy.start(rig.sock)
    try:
        answer = await rig.ask(head)
    finally:
        await rig.proxy.close()
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    assert asked == [] and rig.proxy.decisions == ()
