"""Metrics and logs of a real server: /metrics moves with the traffic, every log line is JSON with
its request_id/trace_id, and no key, secret, env value, code or output ever reaches the log.

Webhook receivers are plain HTTP servers on 127.0.0.1; nothing else is contacted.
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import Server, free_port

EXECUTE = "/v1/sandbox/execute"
ASYNC = {"Prefer": "respond-async"}
NDJSON = {"Accept": "application/x-ndjson"}


class Receiver:
    """A webhook receiver on loopback answering every POST with `status`."""

    def __init__(self, status: int) -> None:
        self.bodies: list[bytes] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                owner.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        self._thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(10)


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, Receiver]]:
    ok, failing = Receiver(200), Receiver(500)
    yield ok, failing
    ok.close()
    failing.close()


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a /metrics answer, parsed by prometheus-client's own parser."""
    r = httpx.get(f"{url}/metrics", timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def wait_terminal(c: httpx.AsyncClient, trace_id: str, field: str = "status", timeout: float = 60) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        doc = (await c.get(f"/v1/executions/{trace_id}")).json()
        if doc[field] not in ("queued", "running", "cancelling", "pending", None):
            return doc  # type: ignore[no-any-return]
        assert loop.time() < deadline, doc
        await asyncio.sleep(0.1)


async def test_metrics_move_with_executions(server_factory, receivers) -> None:
    ok_hook, failing_hook = receivers
    server: Server = server_factory(
        max_concurrent=1, webhook_allow_insecure=True, webhook_max_attempts=2, webhook_backoff_s=0.1,
        max_concurrent_per_org=2, admission_wait_s=0,  # a second run is refused by the global cap, at once
    )
    key = await server.create_key()
    assert server.cli("webhooks", "secret").returncode == 0
    before = scrape(server.url)
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as c:
        for code in ("print(1)", "print(2)"):
            assert (await c.post(EXECUTE, json={"code": code})).json()["success"] is True
        r = await c.post(EXECUTE, json={"code": "exit 3", "language": "bash"})
        assert r.json()["exit_code"] == 3
        r = await c.post(EXECUTE, json={"code": "sleep 30", "language": "bash", "timeout": 1})
        assert r.json()["error"] == "timeout"
        r = await c.post(EXECUTE, json={"code": "echo kept > ~/f", "language": "bash", "thread_id": f"t-{uuid.uuid4().hex[:8]}"})
        assert r.json()["success"] is True, r.text

        # one long run holds the only slot: the gauge shows it, and the next request is refused
        r = await c.post(EXECUTE, json={"code": "echo up; sleep 30", "language": "bash"}, headers=ASYNC)
        long_id = r.json()["trace_id"]
        async with c.stream("GET", f"/v1/executions/{long_id}/output", headers=NDJSON) as stream:
            async for line in stream.aiter_lines():
                if line and json.loads(line)["type"] == "output":
                    break
        during = scrape(server.url)
        assert value(during, "sandboxd_active_sandboxes") == 1
        refused = await c.post(EXECUTE, json={"code": "print(0)"})
        assert refused.status_code == 429
        assert (await c.post(f"/v1/executions/{long_id}/cancel")).json()["status"] == "cancelling"
        await wait_terminal(c, long_id)

        # one webhook delivered, one given up after its two attempts (one run at a time: one slot)
        for hook in (ok_hook, failing_hook):
            r = await c.post(EXECUTE, json={"code": "print(3)", "webhook_url": hook.url}, headers=ASYNC)
            assert r.status_code == 202, r.text
            await wait_terminal(c, r.json()["trace_id"])
            await wait_terminal(c, r.json()["trace_id"], field="webhook_delivery_status")
        assert (await c.get("/no/such/endpoint")).status_code == 404
        assert (await c.get(f"/v1/executions/trc_{uuid.uuid4().hex[:12]}")).status_code == 404

    after = scrape(server.url)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("sandboxd_executions_total", language="python", status="success") == 4
    assert moved("sandboxd_executions_total", language="bash", status="failed") == 1
    assert moved("sandboxd_executions_total", language="bash", status="timeout") == 1
    assert moved("sandboxd_executions_total", language="bash", status="success") == 1
    assert moved("sandboxd_executions_total", language="bash", status="cancelled") == 1
    assert moved("sandboxd_execution_duration_seconds_count", language="python") == 4
    assert moved("sandboxd_execution_overhead_seconds_count", language="bash") == 4
    assert moved("sandboxd_execution_duration_seconds_sum", language="bash") >= 1.0  # the timeout run
    assert 0 < moved("sandboxd_execution_overhead_seconds_sum", language="python") < 30
    assert moved("sandboxd_admission_rejections_total", reason="global_concurrency") == 1
    assert value(after, "sandboxd_active_sandboxes") == 0
    assert value(after, "sandboxd_threads") == 1
    assert moved("sandboxd_webhook_deliveries_total", outcome="delivered") == 1
    assert moved("sandboxd_webhook_deliveries_total", outcome="retrying") == 1
    assert moved("sandboxd_webhook_deliveries_total", outcome="failed") == 1
    assert len(ok_hook.bodies) == 1 and len(failing_hook.bodies) == 2
    route = "/v1/sandbox/execute"
    assert moved("sandboxd_http_requests_total", method="POST", route=route, status="200") == 5
    assert moved("sandboxd_http_requests_total", method="POST", route=route, status="202") == 3
    assert moved("sandboxd_http_requests_total", method="POST", route=route, status="429") == 1
    assert moved("sandboxd_http_requests_total", method="GET", route="unmatched", status="404") == 1
    assert moved("sandboxd_http_requests_total", method="GET", route="/v1/executions/{trace_id}", status="404") == 1
    assert moved("sandboxd_http_request_duration_seconds_count", method="POST", route=route) == 9
    assert value(after, "process_resident_memory_bytes") > 0
    # 4 python + 3 bash stateless runs and the thread's run went through the pool; the first
    # of each language and the thread's first run are misses, which fill it.
    served = moved("sandboxd_pool_requests_total", result="hit") + moved("sandboxd_pool_requests_total", result="miss")
    assert served == 8 and moved("sandboxd_pool_requests_total", result="miss") >= 3
    assert value(after, "sandboxd_pool_sandboxes", language="python") >= 1


def test_metrics_on_their_own_port(server_factory) -> None:
    port = free_port()
    server: Server = server_factory(metrics_port=port)
    assert httpx.get(f"{server.url}/metrics").status_code == 404
    r = httpx.get(f"http://127.0.0.1:{port}/metrics")
    assert r.status_code == 200
    assert "sandboxd_executions_total" in r.text
    assert httpx.get(f"http://127.0.0.1:{port}/v1/sandbox/execute").status_code == 404


def test_metrics_can_be_off(server_factory) -> None:
    server: Server = server_factory(metrics_enabled="false")
    r = httpx.get(f"{server.url}/metrics")
    assert r.status_code == 404 and r.json()["error"] == "not_found"


async def test_logs_are_json_with_ids_and_never_hold_secrets(server_factory, receivers) -> None:
    ok_hook, _ = receivers
    server: Server = server_factory(webhook_allow_insecure=True)
    key = await server.create_key()
    secret_cli = server.cli("webhooks", "secret")
    webhook_secret = secret_cli.stdout.strip()
    assert webhook_secret.startswith("whsec_")
    marker = uuid.uuid4().hex
    env_value = f"envvalue-{marker}"
    code_marker = f"codebody-{marker}"
    bad_key = f"sk-local-{marker}{marker}"
    request_id = f"req-{marker[:8]}"
    traces: list[str] = []
    env = {"MARKER_SECRET": env_value, "API_TOKEN": f"token-{marker}"}
    auth = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=server.url, headers=auth, timeout=60) as c:
        r = await c.post(
            EXECUTE, headers={**auth, "X-Request-Id": request_id},
            json={"code": f"import os; print('{code_marker}', os.environ['MARKER_SECRET'])", "env_vars": env},
        )
        assert r.headers["x-request-id"] == request_id
        assert env_value in r.json()["stdout"]
        traces.append(r.json()["trace_id"])
        r = await c.post(
            EXECUTE, headers={**auth, "X-Request-Id": "bad id with spaces"},
            json={"code": f"raise SystemExit('{code_marker}: ' + __import__('os').environ['API_TOKEN'])", "env_vars": env},
        )
        assert r.json()["success"] is False and code_marker in r.json()["stderr"]
        assert r.headers["x-request-id"] != "bad id with spaces" and len(r.headers["x-request-id"]) == 32
        traces.append(r.json()["trace_id"])
        async with c.stream(
            "POST", EXECUTE, headers={**auth, **NDJSON},
            json={"code": f"echo {code_marker} $MARKER_SECRET", "language": "bash", "env_vars": env},
        ) as stream:
            events = [json.loads(line) async for line in stream.aiter_lines() if line]
        traces.append(events[0]["trace_id"])
        r = await c.post(
            EXECUTE, headers={**auth, **ASYNC},
            json={"code": f"console.log('{code_marker}')", "language": "node", "env_vars": env, "webhook_url": ok_hook.url},
        )
        traces.append(r.json()["trace_id"])
        await wait_terminal(c, traces[-1], field="webhook_delivery_status")
        # refusals carry no secret either: a wrong key, and env_vars that fail validation
        assert (await c.post(EXECUTE, headers={"Authorization": f"Bearer {bad_key}"}, json={"code": "1"})).status_code == 401
        r = await c.post(EXECUTE, headers=auth, json={"code": code_marker, "env_vars": {"PATH": env_value}})
        assert r.status_code == 400
    assert len(ok_hook.bodies) == 1
    server.stop()  # every line written and flushed

    text = server.log_path.read_text()
    for needle in (key, key[-24:], bad_key, marker, env_value, code_marker, webhook_secret,
                   webhook_secret.removeprefix("whsec_")):
        assert needle not in text, f"{needle[:12]}... appears in the server log"
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    assert all({"timestamp", "level", "event", "logger"} <= set(line) for line in lines)
    access = [line for line in lines if line["logger"] == "sandboxd.access"]
    assert access and all(line.get("request_id") for line in access)
    assert any(line["request_id"] == request_id for line in access)
    finished = {line["trace_id"]: line for line in lines if line["event"] == "execution finished"}
    assert set(traces) <= set(finished), "each execution logs its end with its trace_id"
    assert all(finished[t].get("request_id") for t in traces)
    executes = [line for line in access if line["route"] == EXECUTE and line["status"] in (200, 202)]
    assert {line["trace_id"] for line in executes} == set(traces)
