"""Webhook mode on a real server: 202 at once, signed deliveries (Standard Webhooks), retries,
restart safety, secrets from the CLI, and the SSRF guard at submit and at delivery.

Receivers are plain HTTP servers on 127.0.0.1 in a thread; nothing else is ever contacted.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import baponi
import httpx
import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from conftest import free_port, start_server

EXECUTE = "/v1/sandbox/execute"
ASYNC = {"Prefer": "respond-async"}
TERMINAL = {"success", "failed", "timeout", "cancelled", "blocked", "oom", "seccomp", "deepguard"}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def other_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# --- a receiver -----------------------------------------------------------------------------------


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float

    def verify(self, secret: str) -> dict[str, Any]:
        return Webhook(secret).verify(self.body, self.headers)  # type: ignore[no-any-return]

    def json(self) -> dict[str, Any]:
        return json.loads(self.body)  # type: ignore[no-any-return]


class Receiver:
    """Answers POSTs with the scripted statuses (then `default`); counts every connection."""

    def __init__(self, port: int = 0, statuses: list[int] | None = None, default: int = 200) -> None:
        self.deliveries: list[Delivery] = []
        self.connections = 0
        self._statuses = list(statuses or [])
        self._default = default
        self._lock = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.deliveries.append(Delivery(
                        self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()
                    ))
                    status = receiver._statuses.pop(0) if receiver._statuses else receiver._default
                    receiver._lock.notify_all()
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def process_request(self, request: Any, client_address: Any) -> None:
                with receiver._lock:
                    receiver.connections += 1
                super().process_request(request, client_address)

        self.httpd = Server(("127.0.0.1", port), Handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def wait(self, n: int, timeout: float = 60) -> list[Delivery]:
        with self._lock:
            assert self._lock.wait_for(lambda: len(self.deliveries) >= n, timeout), (
                f"expected {n} deliveries, got {len(self.deliveries)}"
            )
            return list(self.deliveries)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)

    def __enter__(self) -> Receiver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- fixtures ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wh(server_factory) -> Any:
    return server_factory(webhook_allow_insecure=True, webhook_backoff_s=0.2, webhook_max_attempts=3)


@pytest.fixture(scope="module")
async def wh_key(wh) -> str:
    return await wh.create_key()


@pytest.fixture(scope="module")
def wh_secret(wh, wh_key: str) -> str:
    r = wh.cli("webhooks", "secret")
    assert r.returncode == 0, r.stderr
    secret = r.stdout.strip()
    assert secret.startswith("whsec_") and "\n" not in secret
    assert len(base64.b64decode(secret.removeprefix("whsec_"))) >= 24
    return secret


@pytest.fixture
async def http(wh, wh_key: str, wh_secret: str) -> Any:
    async with httpx.AsyncClient(base_url=wh.url, headers=auth(wh_key), timeout=httpx.Timeout(120, connect=10)) as c:
        yield c


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


async def submit(client: httpx.AsyncClient, code: str, webhook_url: str | None = None, **fields: Any) -> str:
    body: dict[str, Any] = {"code": code, **fields}
    if webhook_url is not None:
        body["webhook_url"] = webhook_url
    r = await client.post(EXECUTE, json=body, headers=ASYNC)
    assert r.status_code == 202, r.text
    assert set(r.json()) >= {"trace_id", "status"}
    return r.json()["trace_id"]  # type: ignore[no-any-return]


async def get(client: httpx.AsyncClient, trace_id: str) -> dict[str, Any]:
    r = await client.get(f"/v1/executions/{trace_id}")
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


async def wait_for(client: httpx.AsyncClient, trace_id: str, predicate: Any, timeout: float = 90) -> dict[str, Any]:
    import asyncio

    deadline = time.monotonic() + timeout
    while not predicate(status := await get(client, trace_id)):
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.1)
    return status


def delivered(status: dict[str, Any]) -> bool:
    return status["webhook_delivery_status"] in ("delivered", "failed")


# --- delivery -----------------------------------------------------------------------------------------


async def test_202_at_once_then_a_signed_delivery(http, receiver: Receiver, wh_secret: str) -> None:
    url = f"{receiver.url}/hooks/sandboxd?tenant=a"
    trace_id = await submit(http, "import time; time.sleep(3); print('done')", url)
    early = await get(http, trace_id)
    assert early["status"] in ("queued", "running"), "webhook mode must answer before the run ends"
    assert early["webhook_url"] == url
    assert early["webhook_delivery_status"] == "pending"
    assert receiver.deliveries == []

    [d] = receiver.wait(1)
    assert d.path == "/hooks/sandboxd?tenant=a"
    assert d.headers["content-type"] == "application/json"
    assert d.headers["host"] == f"127.0.0.1:{receiver.port}"
    assert d.headers["webhook-id"].startswith("msg_")
    assert abs(int(d.headers["webhook-timestamp"]) - time.time()) < 300
    assert d.headers["webhook-signature"].startswith("v1,")
    payload = d.verify(wh_secret)
    assert payload == d.json()
    assert payload["trace_id"] == trace_id
    assert payload["status"] == "success"
    assert payload["stdout"] == "done\n" and payload["exit_code"] == 0
    assert payload["delivery_mode"] == "webhook"
    assert payload["webhook_url"] == url
    assert payload["completed_at"]
    # the same execution status document GET answers (§4.1)
    final = await wait_for(http, trace_id, lambda s: s["webhook_delivery_status"] == "delivered")
    assert final["webhook_attempts"] == 1
    for name in ("trace_id", "status", "exit_code", "stdout", "stderr", "error", "duration_ms",
                 "delivery_mode", "created_at", "completed_at", "webhook_url"):
        assert payload[name] == final[name], name
    # a wrong secret, or a changed body, does not verify
    with pytest.raises(WebhookVerificationError):
        d.verify(other_secret())
    with pytest.raises(WebhookVerificationError):
        Webhook(wh_secret).verify(d.body.replace(b"done", b"dune"), d.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(wh_secret).verify(d.body, {**d.headers, "webhook-id": "msg_other"})
    time.sleep(0.5)
    assert len(receiver.deliveries) == 1


async def test_failed_and_cancelled_runs_are_delivered_too(http, receiver: Receiver, wh_secret: str) -> None:
    failed = await submit(http, "import sys; print('x'); sys.exit(5)", receiver.url + "/f")
    cancelled = await submit(http, "sleep 40", receiver.url + "/c", language="bash")
    await wait_for(http, cancelled, lambda s: s["status"] == "running")
    r = await http.post(f"/v1/executions/{cancelled}/cancel", content=b"", headers={"Content-Type": "application/json"})
    assert r.json()["status"] == "cancelling"
    deliveries = receiver.wait(2)
    by_path = {d.path: d.verify(wh_secret) for d in deliveries}
    assert by_path["/f"]["trace_id"] == failed and by_path["/f"]["status"] == "failed"
    assert by_path["/f"]["exit_code"] == 5
    assert by_path["/c"]["trace_id"] == cancelled and by_path["/c"]["status"] == "cancelled"


async def test_retried_until_it_succeeds_with_the_same_webhook_id(http, wh_secret: str) -> None:
    with Receiver(statuses=[500, 500]) as receiver:
        trace_id = await submit(http, "print('retry me')", receiver.url + "/r")
        final = await wait_for(http, trace_id, delivered)
        deliveries = receiver.wait(3)
        time.sleep(1.0)  # and nothing more arrives
        assert len(receiver.deliveries) == 3
    assert final["webhook_delivery_status"] == "delivered"
    assert final["webhook_attempts"] == 3
    assert len({d.headers["webhook-id"] for d in deliveries}) == 1
    payloads = [d.verify(wh_secret) for d in deliveries]
    assert [p["webhook_attempts"] for p in payloads] == [1, 2, 3]
    assert all(p["trace_id"] == trace_id and p["stdout"] == "retry me\n" for p in payloads)
    # backoff: each retry waits at least the configured delay, doubling
    gaps = [b.at - a.at for a, b in zip(deliveries, deliveries[1:])]
    assert gaps[0] >= 0.15 and gaps[1] >= 0.3, gaps


async def test_gives_up_after_max_attempts(http, wh_secret: str) -> None:
    with Receiver(default=500) as receiver:
        trace_id = await submit(http, "print('never accepted')", receiver.url + "/down")
        final = await wait_for(http, trace_id, delivered)
        time.sleep(1.5)  # no fourth attempt
        deliveries = list(receiver.deliveries)
    assert final["webhook_delivery_status"] == "failed"
    assert final["webhook_attempts"] == 3
    assert len(deliveries) == 3
    assert len({d.headers["webhook-id"] for d in deliveries}) == 1
    for d in deliveries:
        d.verify(wh_secret)
    assert (await get(http, trace_id))["webhook_attempts"] == 3


async def test_connection_refused_counts_as_a_failed_attempt(http) -> None:
    port = free_port()  # nothing listens there
    trace_id = await submit(http, "print(1)", f"http://127.0.0.1:{port}/nobody")
    final = await wait_for(http, trace_id, delivered)
    assert final["webhook_delivery_status"] == "failed"
    assert final["webhook_attempts"] == 3
    assert final["status"] == "success"  # the execution itself is unaffected


# --- without webhook_url, with the official SDK --------------------------------------------------


@pytest.fixture(scope="module")
def sdk(wh, wh_key: str) -> Iterator[baponi.Baponi]:
    with baponi.Baponi(api_key=wh_key, base_url=wh.url) as client:
        yield client


def test_sdk_webhook_mode_without_url_is_poll_only(sdk: baponi.Baponi) -> None:
    handle = sdk.execute_webhook("import time; time.sleep(1); print('polled')")
    assert handle.trace_id.startswith("trc_")
    first = handle.poll()
    assert first.status in ("queued", "running")
    status = handle.wait(poll_interval=0.2, timeout=90)
    assert status.status == "success"
    assert status.stdout == "polled\n" and status.exit_code == 0
    assert status.delivery_mode == "webhook"
    assert status.webhook_url is None and status.webhook_delivery_status is None
    assert sdk.get_execution(handle.trace_id) == status


def test_sdk_webhook_cancel(sdk: baponi.Baponi) -> None:
    handle = sdk.execute_webhook("trap '' TERM; sleep 40", language="bash", timeout=50)
    deadline = time.monotonic() + 60
    while handle.poll().status != "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    response = handle.cancel()
    assert response.trace_id == handle.trace_id and response.status == "cancelling"
    started = time.monotonic()
    status = handle.wait(poll_interval=0.2, timeout=60)
    assert status.status == "cancelled"
    assert time.monotonic() - started < 30
    assert handle.cancel().status == "cancelled"


def test_sdk_refuses_http_webhook_urls_client_side(sdk: baponi.Baponi) -> None:
    with pytest.raises(ValueError):
        sdk.execute_webhook("print(1)", webhook_url="http://127.0.0.1:9/x")


# --- refusals at submit ----------------------------------------------------------------------------


async def test_webhook_url_without_an_org_secret_is_400(wh, receiver: Receiver) -> None:
    key = await wh.create_key(org="webhook-nosecret")
    async with httpx.AsyncClient(base_url=wh.url, headers=auth(key), timeout=60) as c:
        r = await c.post(EXECUTE, json={"code": "print(1)", "webhook_url": receiver.url + "/x"}, headers=ASYNC)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == "validation_error"
        assert "webhook_url" in r.json()["message"]
        # without webhook_url the same org can use webhook mode (poll only)
        r = await c.post(EXECUTE, json={"code": "print(1)"}, headers=ASYNC)
        assert r.status_code == 202
    assert receiver.connections == 0


@pytest.mark.parametrize("headers", [{}, {"Accept": "application/x-ndjson"}, {"Accept": "*/*"}])
async def test_webhook_url_outside_webhook_mode_is_400(http, receiver: Receiver, headers: dict[str, str]) -> None:
    r = await http.post(EXECUTE, json={"code": "print(1)", "webhook_url": receiver.url + "/x"}, headers=headers)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"] == "validation_error"
    assert "webhook_url" in r.json()["message"]
    assert receiver.connections == 0


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1/x", "127.0.0.1:8080/x", "https://", "http://user:pw@127.0.0.1/x",
     "https://127.0.0.1:99999/x", "https://example.com/" + "a" * 2048],
)
async def test_malformed_webhook_urls_are_400(http, url: str) -> None:
    r = await http.post(EXECUTE, json={"code": "print(1)", "webhook_url": url}, headers=ASYNC)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "validation_error"
    assert "webhook_url" in r.json()["message"]


async def test_metadata_address_refused_even_when_insecure_is_allowed(http) -> None:
    for url in ("http://169.254.169.254/latest/meta-data/", "http://[fd00:ec2::254]/x"):
        r = await http.post(EXECUTE, json={"code": "print(1)", "webhook_url": url}, headers=ASYNC)
        assert r.status_code in (400, 403), r.text
        assert r.json()["error"] in ("validation_error", "forbidden")


# --- secrets from the CLI -----------------------------------------------------------------------------


def test_secret_cli_second_time_for_the_default_org_fails(wh, wh_secret: str) -> None:
    r = wh.cli("webhooks", "secret")
    assert r.returncode != 0
    assert wh_secret not in r.stdout + r.stderr
    assert r.stdout.strip() == ""
    assert "--rotate" in r.stderr


async def test_secret_cli_refuses_a_second_secret_and_rotates(wh, receiver: Receiver) -> None:
    org = "webhook-rotate"
    key = await wh.create_key(org=org)
    first = wh.cli("webhooks", "secret", "--org", org)
    assert first.returncode == 0, first.stderr
    old = first.stdout.strip()
    assert old.startswith("whsec_")

    again = wh.cli("webhooks", "secret", "--org", org)
    assert again.returncode != 0
    assert again.stdout.strip() == ""
    assert "--rotate" in again.stderr

    async with httpx.AsyncClient(base_url=wh.url, headers=auth(key), timeout=60) as c:
        before = await submit(c, "print('old')", receiver.url + "/old")
        [d_old] = receiver.wait(1)
        assert d_old.verify(old)["trace_id"] == before

        rotated = wh.cli("webhooks", "secret", "--rotate", "--org", org)
        assert rotated.returncode == 0, rotated.stderr
        new = rotated.stdout.strip()
        assert new.startswith("whsec_") and new != old

        after = await submit(c, "print('new')", receiver.url + "/new")
        d_new = receiver.wait(2)[1]
    assert d_new.verify(new)["trace_id"] == after
    with pytest.raises(WebhookVerificationError):
        d_new.verify(old)


def test_secret_cli_for_an_unknown_org_fails(wh) -> None:
    r = wh.cli("webhooks", "secret", "--org", "no-such-org-here")
    assert r.returncode != 0
    assert r.stdout.strip() == ""


# --- restart safety -------------------------------------------------------------------------------


async def test_pending_delivery_survives_a_restart(server_factory) -> None:
    settings = {"webhook_allow_insecure": True, "webhook_backoff_s": 4, "webhook_max_attempts": 6}
    first = server_factory(**settings)
    key = await first.create_key()
    secret = first.cli("webhooks", "secret").stdout.strip()
    port = free_port()  # reserved: nothing listens yet, so the first attempt is refused
    url = f"http://127.0.0.1:{port}/after-restart"
    async with httpx.AsyncClient(base_url=first.url, headers=auth(key), timeout=60) as c:
        trace_id = await submit(c, "print('survives')", url)
        status = await wait_for(c, trace_id, lambda s: s["webhook_attempts"] >= 1)
    assert status["webhook_delivery_status"] == "pending"
    assert status["status"] == "success"
    first.stop()

    second = None
    with Receiver(port=port) as receiver:
        try:
            second = start_server(first.data_dir, **settings)
            [d] = receiver.wait(1, timeout=90)
            async with httpx.AsyncClient(base_url=second.url, headers=auth(key), timeout=60) as c:
                final = await wait_for(c, trace_id, delivered)
        finally:
            if second is not None:
                second.stop()
    payload = d.verify(secret)
    assert payload["trace_id"] == trace_id and payload["stdout"] == "survives\n"
    assert payload["webhook_attempts"] == 2
    assert d.path == "/after-restart"
    assert final["webhook_delivery_status"] == "delivered"
    assert final["webhook_attempts"] == 2
    assert len(receiver.deliveries) == 1


async def test_run_interrupted_by_a_killed_server_is_still_delivered(server_factory, receiver: Receiver) -> None:
    import signal

    settings = {"webhook_allow_insecure": True, "webhook_backoff_s": 0.2}
    first = server_factory(**settings)
    key = await first.create_key()
    secret = first.cli("webhooks", "secret").stdout.strip()
    async with httpx.AsyncClient(base_url=first.url, headers=auth(key), timeout=60) as c:
        trace_id = await submit(c, "echo started; sleep 50", receiver.url + "/interrupted", language="bash")
        await wait_for(c, trace_id, lambda s: s["status"] == "running")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(30)
    assert receiver.deliveries == []
    second = start_server(first.data_dir, **settings)
    try:
        [d] = receiver.wait(1, timeout=90)
        async with httpx.AsyncClient(base_url=second.url, headers=auth(key), timeout=60) as c:
            final = await wait_for(c, trace_id, delivered)
    finally:
        second.stop()
    payload = d.verify(secret)
    assert payload["trace_id"] == trace_id
    assert payload["status"] == "failed" and payload["error"] == "interrupted"
    assert final["webhook_delivery_status"] == "delivered" and final["webhook_attempts"] == 1


# --- the SSRF guard on a server without webhook_allow_insecure ---------------------------------------


@pytest.fixture(scope="module")
def strict(server_factory) -> Any:
    return server_factory(webhook_backoff_s=0.2, webhook_max_attempts=3)


@pytest.fixture(scope="module")
async def strict_key(strict) -> str:
    key = await strict.create_key()
    assert strict.cli("webhooks", "secret").returncode == 0
    return key


@pytest.fixture
async def strict_http(strict, strict_key: str) -> Any:
    async with httpx.AsyncClient(base_url=strict.url, headers=auth(strict_key), timeout=60) as c:
        yield c


async def test_strict_server_refuses_http_and_loopback_literals_at_submit(strict_http, receiver: Receiver) -> None:
    r = await strict_http.post(EXECUTE, json={"code": "print(1)", "webhook_url": receiver.url + "/x"}, headers=ASYNC)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "validation_error"
    assert "webhook_url" in r.json()["message"]
    for url in (f"https://127.0.0.1:{receiver.port}/x", f"https://[::1]:{receiver.port}/x",
                f"https://[::ffff:127.0.0.1]:{receiver.port}/x", "https://169.254.169.254/x",
                "https://10.0.0.1/x"):
        r = await strict_http.post(EXECUTE, json={"code": "print(1)", "webhook_url": url}, headers=ASYNC)
        assert r.status_code in (400, 403), (url, r.text)
        assert r.json()["error"] in ("validation_error", "forbidden")
        assert "webhook_url" in r.json()["message"]
    assert receiver.connections == 0


async def test_strict_server_never_connects_to_a_name_resolving_to_loopback(strict_http, receiver: Receiver) -> None:
    url = f"https://localhost:{receiver.port}/x"  # a name passes submit; the delivery resolves it
    trace_id = await submit(strict_http, "print('secret data')", url)
    final = await wait_for(strict_http, trace_id, delivered)
    assert final["status"] == "success"
    assert final["webhook_delivery_status"] == "failed"
    assert final["webhook_attempts"] == 1  # a refusal is final, not retried
    time.sleep(0.5)
    assert receiver.connections == 0
    assert receiver.deliveries == []
