"""SSRF guard for webhook deliveries, with an injected resolver and a transport that must never run.

No packet leaves this machine: names resolve through a fake resolver, and the only "public"
addresses are strings that fake resolver returns, sent to an `httpx.MockTransport`.
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import timedelta
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from sandboxd.errors import Forbidden, InvalidRequest
from sandboxd.service.url_guard import Target, UrlGuard, is_public
from sandboxd.service.webhooks import WebhookService
from sandboxd.store import WebhookDelivery, utcnow

PUBLIC_V4 = "1.2.3.4"  # only ever a string from the fake resolver, never connected to
PUBLIC_V6 = "2a00:1450:4001::1"

NON_PUBLIC = [
    "127.0.0.1",
    "127.1.2.3",
    "0.0.0.0",
    "10.0.0.1",
    "172.16.5.4",
    "192.168.1.10",
    "169.254.1.1",
    "169.254.169.254",  # AWS/GCP/Azure IMDS
    "168.63.129.16",  # Azure wire server (global per ipaddress)
    "100.100.100.200",  # Alibaba metadata
    "192.0.0.192",  # Oracle metadata
    "100.64.0.1",  # shared address space (CGNAT)
    "224.0.0.1",
    "240.0.0.1",
    "255.255.255.255",
    "::1",
    "::",
    "fe80::1",
    "fc00::1",
    "fd00:ec2::254",  # AWS IMDS over IPv6
    "::ffff:10.0.0.1",  # v4-mapped private
    "::ffff:127.0.0.1",
    "::ffff:169.254.169.254",
    "ff02::1",
]
METADATA = ["169.254.169.254", "168.63.129.16", "100.100.100.200", "192.0.0.192", "fd00:ec2::254"]


class FakeResolver:
    """name -> addresses; IP literals resolve to themselves, as getaddrinfo does."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = table or {}
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host in self.table:
            return list(self.table[host])
        try:
            import ipaddress

            return [str(ipaddress.ip_address(host))]
        except ValueError:
            raise OSError(f"[Errno -2] Name or service not known: {host}") from None


async def failing_resolver(host: str, port: int) -> list[str]:
    pytest.fail(f"the resolver must not be called here (asked for {host}:{port})")


def forbidden_transport() -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        pytest.fail(f"a request was sent although it should have been refused: {request.url}")

    return httpx.MockTransport(handler)


def literal_url(ip: str, scheme: str = "https", port: int | None = None) -> str:
    host = f"[{ip}]" if ":" in ip else ip
    return f"{scheme}://{host}{f':{port}' if port else ''}/hook"


# --- static checks (submit time) -----------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://hooks.example.com/x",
        "HTTP://hooks.example.com/x",
        "ftp://hooks.example.com/x",
        "file:///etc/passwd",
        "gopher://hooks.example.com/",
        "hooks.example.com/x",
        "https://",
        "https:///path-only",
        "https://user:pass@hooks.example.com/x",
        "https://user@hooks.example.com/x",
        "https://hooks.example.com:99999/x",
        "https://hooks.example.com:port/x",
    ],
)
def test_check_url_refuses_bad_urls(url: str) -> None:
    guard = UrlGuard(allow_insecure=False, resolver=failing_resolver)
    with pytest.raises(InvalidRequest) as info:
        guard.check_url(url)
    assert "webhook_url" in info.value.message


@pytest.mark.parametrize("ip", NON_PUBLIC)
def test_check_url_refuses_non_public_literals(ip: str) -> None:
    guard = UrlGuard(allow_insecure=False, resolver=failing_resolver)
    with pytest.raises(Forbidden) as info:
        guard.check_url(literal_url(ip))
    assert "non-public" in info.value.message


def test_check_url_accepts_https_names_and_public_literals_without_resolving() -> None:
    guard = UrlGuard(allow_insecure=False, resolver=failing_resolver)
    guard.check_url("https://hooks.example.com/x?y=1")
    guard.check_url("https://localhost:8443/x")  # a name: only checked when resolved, at delivery
    guard.check_url(literal_url(PUBLIC_V4))
    guard.check_url(literal_url(PUBLIC_V6, port=8443))


@pytest.mark.parametrize("ip", ["::ffff:10.0.0.1", "::ffff:192.168.0.1", "::ffff:169.254.169.254"])
def test_v4_mapped_addresses_are_judged_as_their_v4_address(ip: str) -> None:
    import ipaddress

    assert not is_public(ipaddress.ip_address(ip))
    assert is_public(ipaddress.ip_address(f"::ffff:{PUBLIC_V4}"))


# --- resolve (delivery time) ---------------------------------------------------------------


@pytest.mark.parametrize("ip", NON_PUBLIC)
async def test_resolve_refuses_non_public_literals(ip: str) -> None:
    guard = UrlGuard(allow_insecure=False, resolver=FakeResolver())
    with pytest.raises(Forbidden):
        await guard.resolve(literal_url(ip))


@pytest.mark.parametrize("ip", NON_PUBLIC)
async def test_resolve_refuses_names_resolving_to_non_public_addresses(ip: str) -> None:
    resolver = FakeResolver({"hooks.example.com": [ip]})
    guard = UrlGuard(allow_insecure=False, resolver=resolver)
    with pytest.raises(Forbidden) as info:
        await guard.resolve("https://hooks.example.com/x")
    assert "non-public" in info.value.message
    assert resolver.calls == [("hooks.example.com", 443)]


@pytest.mark.parametrize(
    "addresses",
    [
        [PUBLIC_V4, "10.0.0.1"],
        ["10.0.0.1", PUBLIC_V4],
        [PUBLIC_V4, "127.0.0.1"],
        [PUBLIC_V6, "::1"],
        [PUBLIC_V4, PUBLIC_V6, "169.254.169.254"],
        [PUBLIC_V6, "fd00:ec2::254"],
    ],
)
async def test_a_name_with_any_non_public_address_is_refused(addresses: list[str]) -> None:
    guard = UrlGuard(allow_insecure=False, resolver=FakeResolver({"rebind.example.com": addresses}))
    with pytest.raises(Forbidden):
        await guard.resolve("https://rebind.example.com/x")


async def test_a_name_that_does_not_resolve_is_refused() -> None:
    async def empty(host: str, port: int) -> list[str]:
        return []

    with pytest.raises(Forbidden):
        await UrlGuard(resolver=FakeResolver()).resolve("https://nowhere.invalid/x")
    with pytest.raises(Forbidden):
        await UrlGuard(resolver=empty).resolve("https://empty.example.com/x")


async def test_resolve_applies_the_static_checks_too() -> None:
    guard = UrlGuard(allow_insecure=False, resolver=failing_resolver)
    with pytest.raises(InvalidRequest):
        await guard.resolve("http://hooks.example.com/x")


async def test_public_name_is_pinned_to_the_checked_address() -> None:
    resolver = FakeResolver({"hooks.example.com": [PUBLIC_V4]})
    guard = UrlGuard(allow_insecure=False, resolver=resolver)
    target = await guard.resolve("https://hooks.example.com/a/b?c=1&d=2")
    assert isinstance(target, Target)
    assert target.address == PUBLIC_V4
    assert target.host == "hooks.example.com"
    assert target.port == 443
    assert target.pinned_url == f"https://{PUBLIC_V4}:443/a/b?c=1&d=2"
    assert target.host_header == "hooks.example.com"
    assert resolver.calls == [("hooks.example.com", 443)]


async def test_pinned_v6_address_and_host_header_with_port() -> None:
    resolver = FakeResolver({"hooks.example.com": [PUBLIC_V6]})
    target = await UrlGuard(resolver=resolver).resolve("https://hooks.example.com:8443")
    assert target.pinned_url == f"https://[{PUBLIC_V6}]:8443/"
    assert target.host_header == "hooks.example.com:8443"
    assert resolver.calls == [("hooks.example.com", 8443)]


# --- allow_insecure (development) ----------------------------------------------------------


async def test_allow_insecure_permits_http_and_loopback_but_never_metadata() -> None:
    resolver = FakeResolver({"dev.local": ["127.0.0.1"], "meta.local": ["169.254.169.254"],
                             "meta6.local": ["fd00:ec2::254"]})
    guard = UrlGuard(allow_insecure=True, resolver=resolver)
    guard.check_url("http://127.0.0.1:8080/x")
    target = await guard.resolve("http://dev.local:8080/x")
    assert target.pinned_url == "http://127.0.0.1:8080/x"
    assert target.host_header == "dev.local:8080"
    for ip in METADATA:
        with pytest.raises(Forbidden):
            guard.check_url(literal_url(ip, "http"))
        with pytest.raises(Forbidden):
            await guard.resolve(literal_url(ip, "http"))
    for name in ("meta.local", "meta6.local"):
        with pytest.raises(Forbidden):
            await guard.resolve(f"http://{name}/x")
    with pytest.raises(InvalidRequest):
        guard.check_url("ftp://dev.local/x")


@pytest.mark.parametrize("ip", ["::ffff:169.254.169.254", "::ffff:168.63.129.16", "::ffff:a9fe:a9fe"])
async def test_allow_insecure_refuses_v4_mapped_metadata_addresses(ip: str) -> None:
    guard = UrlGuard(allow_insecure=True, resolver=FakeResolver({"meta.local": [ip]}))
    with pytest.raises(Forbidden):
        guard.check_url(literal_url(ip, "http"))
    with pytest.raises(Forbidden):
        await guard.resolve("http://meta.local/x")


@pytest.mark.parametrize("ip", ["64:ff9b::a9fe:a9fe", "64:ff9b::a00:1", "2002:a9fe:a9fe::1", "2002:7f00:1::1"])
async def test_ipv6_forms_embedding_a_non_public_ipv4_are_refused(ip: str) -> None:
    guard = UrlGuard(allow_insecure=False, resolver=FakeResolver({"embedded.example.com": [ip]}))
    with pytest.raises(Forbidden):
        await guard.resolve("https://embedded.example.com/x")


# --- the delivery path: WebhookService._send ----------------------------------------------


class FakeWebhookRepo:
    def __init__(self) -> None:
        self.ciphertexts: dict[str, str] = {}

    async def secret(self, org_id: str) -> str | None:
        return self.ciphertexts.get(org_id)

    async def set_secret(self, org_id: str, ciphertext: str) -> None:
        self.ciphertexts[org_id] = ciphertext


class FakeStore:
    def __init__(self) -> None:
        self.webhooks = FakeWebhookRepo()


def delivery(url: str, *, attempts: int = 0) -> WebhookDelivery:
    now = utcnow()
    return WebhookDelivery(
        id="msg_test123", trace_id="trc_test123", org_id="org_1", url=url, status="pending",
        attempts=attempts, next_attempt_at=now, last_error=None, created_at=now - timedelta(seconds=1),
    )


DOCUMENT: dict[str, Any] = {"trace_id": "trc_test123", "status": "success", "stdout": "hi\n"}


async def service(resolver: Any, transport: httpx.MockTransport, *, allow_insecure: bool = False,
                  secret: bool = True) -> tuple[WebhookService, str | None]:
    svc = WebhookService(
        FakeStore(), b"pepper-for-tests", UrlGuard(allow_insecure=allow_insecure, resolver=resolver),
        transport=transport, timeout_s=5,
    )
    created = await svc.create_secret("org_1") if secret else None
    return svc, created


@pytest.mark.parametrize(
    ("url", "table"),
    [
        ("https://127.0.0.1/x", {}),
        ("https://[::1]/x", {}),
        ("https://[::ffff:10.0.0.1]/x", {}),
        ("https://169.254.169.254/latest/meta-data/", {}),
        ("https://[fd00:ec2::254]/x", {}),
        ("https://100.64.0.1/x", {}),
        ("https://168.63.129.16/x", {}),
        ("https://internal.example.com/x", {"internal.example.com": ["10.1.2.3"]}),
        ("https://mixed.example.com/x", {"mixed.example.com": [PUBLIC_V4, "192.168.0.7"]}),
        ("https://meta.example.com/x", {"meta.example.com": ["169.254.169.254"]}),
        ("https://nxdomain.example.com/x", {}),
        ("http://hooks.example.com/x", {"hooks.example.com": [PUBLIC_V4]}),
    ],
)
async def test_send_refuses_without_any_request(url: str, table: dict[str, list[str]]) -> None:
    svc, _ = await service(FakeResolver(table), forbidden_transport())
    error = await svc._send(delivery(url), DOCUMENT)
    assert error is not None and error.startswith("refused"), error


async def test_send_refuses_metadata_even_when_insecure_is_allowed() -> None:
    resolver = FakeResolver({"meta.example.com": ["169.254.169.254"]})
    svc, _ = await service(resolver, forbidden_transport(), allow_insecure=True)
    for url in ("http://169.254.169.254/x", "http://meta.example.com/x", "http://[fd00:ec2::254]/x"):
        error = await svc._send(delivery(url), DOCUMENT)
        assert error is not None and error.startswith("refused"), (url, error)


async def test_send_without_an_org_secret_is_refused_without_any_request() -> None:
    svc, _ = await service(FakeResolver({"hooks.example.com": [PUBLIC_V4]}), forbidden_transport(), secret=False)
    error = await svc._send(delivery("https://hooks.example.com/x"), DOCUMENT)
    assert error is not None and error.startswith("refused")


async def test_send_connects_to_the_checked_address_with_the_original_name() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(204)

    resolver = FakeResolver({"hooks.example.com": [PUBLIC_V4]})
    svc, secret = await service(resolver, httpx.MockTransport(handler))
    assert secret is not None and secret.startswith("whsec_")
    error = await svc._send(delivery("https://hooks.example.com/in/hook?x=1", attempts=2), DOCUMENT)
    assert error is None
    assert resolver.calls == [("hooks.example.com", 443)]  # resolved once, not again to connect
    assert len(sent) == 1
    request = sent[0]
    assert request.method == "POST"
    assert request.url.scheme == "https"
    assert request.url.host == PUBLIC_V4
    assert request.url.port in (None, 443)
    assert request.url.raw_path == b"/in/hook?x=1"
    assert request.headers["host"] == "hooks.example.com"
    assert request.extensions["sni_hostname"] == "hooks.example.com"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == "msg_test123"
    body = request.content
    payload = Webhook(secret).verify(body, dict(request.headers))
    assert payload["trace_id"] == "trc_test123"
    assert payload["webhook_attempts"] == 3  # this is the third attempt
    assert json.loads(body)["stdout"] == "hi\n"
    other = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    with pytest.raises(WebhookVerificationError):
        Webhook(other).verify(body, dict(request.headers))
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body.replace(b"hi", b"ho"), dict(request.headers))


async def test_send_pins_a_non_default_port_and_reports_http_errors() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(503)

    resolver = FakeResolver({"hooks.example.com": [PUBLIC_V6]})
    svc, _ = await service(resolver, httpx.MockTransport(handler))
    error = await svc._send(delivery("https://hooks.example.com:8443/x"), DOCUMENT)
    assert error == "HTTP 503"
    assert len(sent) == 1
    assert sent[0].url.host == PUBLIC_V6
    assert sent[0].url.port == 8443
    assert sent[0].headers["host"] == "hooks.example.com:8443"
    assert sent[0].extensions["sni_hostname"] == "hooks.example.com"


async def test_insecure_http_target_has_no_sni_and_uses_the_pinned_address() -> None:
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(200)

    resolver = FakeResolver({"dev.internal": ["10.9.8.7"]})
    svc, _ = await service(resolver, httpx.MockTransport(handler), allow_insecure=True)
    assert await svc._send(delivery("http://dev.internal:8080/x"), DOCUMENT) is None
    assert sent[0].url.host == "10.9.8.7"
    assert sent[0].headers["host"] == "dev.internal:8080"
    assert "sni_hostname" not in sent[0].extensions


async def test_create_secret_refuses_to_replace_unless_rotating() -> None:
    svc, first = await service(FakeResolver(), forbidden_transport())
    with pytest.raises(InvalidRequest):
        await svc.create_secret("org_1")
    second = await svc.create_secret("org_1", rotate=True)
    assert second != first and second.startswith("whsec_")
    assert len(base64.b64decode(second.removeprefix("whsec_"))) == 32
