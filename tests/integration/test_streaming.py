"""Delivery-mode selection, NDJSON streaming and the replayable event log, on a real server.

Raw httpx streams measure arrival times and check every line; the official SDK (0.5.1) checks
that `execute_stream` and `reconnect_stream` work against the same server.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import baponi
import httpx
import pytest

EXECUTE = "/v1/sandbox/execute"
NDJSON = "application/x-ndjson"
TRACE_ID = re.compile(r"^trc_[A-Za-z0-9_-]{1,20}$")
EVENT_TYPES = {"status", "output", "keepalive", "result"}
REQUIRED = {
    "status": {"type", "seq", "trace_id", "status"},
    "output": {"type", "seq", "stream", "data"},
    "keepalive": {"type", "seq"},
    "result": {"type", "seq", "trace_id", "status", "result", "output_truncated"},
}
RESULT_FIELDS = {"success", "stdout", "stderr", "exit_code", "error"}

# bash: one line a second for about `n` seconds
def ticker(n: int) -> str:
    return f'for i in $(seq 1 {n}); do echo "tick $i"; sleep 1; done'


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Received:
    events: list[dict[str, Any]] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    headers: httpx.Headers | None = None

    @property
    def result(self) -> dict[str, Any]:
        assert self.events and self.events[-1]["type"] == "result", self.events[-3:]
        return self.events[-1]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def text(self, stream: str = "stdout") -> str:
        return "".join(e["data"] for e in self.of("output") if e["stream"] == stream)


class Reader:
    """Reads one NDJSON response in parts: every line a complete JSON object, with its arrival time."""

    def __init__(self, response: httpx.Response) -> None:
        assert response.status_code == 200, response.status_code
        assert response.headers["content-type"].startswith(NDJSON), response.headers
        self.response = response
        self._chunks = response.aiter_bytes()
        self._buffer = b""

    async def read(self, until: Callable[[dict[str, Any]], bool] | None = None) -> Received:
        got = Received(headers=self.response.headers)
        now = time.monotonic()
        while True:
            while b"\n" in self._buffer:
                line, self._buffer = self._buffer.split(b"\n", 1)
                assert line.strip(), "blank line in the stream"
                event = json.loads(line)
                assert isinstance(event, dict), line
                got.events.append(event)
                got.times.append(now)
                if until is not None and until(event):
                    return got
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                assert self._buffer == b"", f"the stream ended inside a line: {self._buffer[:200]!r}"
                return got
            now = time.monotonic()
            self._buffer += chunk


async def read_ndjson(
    response: httpx.Response, until: Callable[[dict[str, Any]], bool] | None = None
) -> Received:
    if response.status_code != 200:
        await response.aread()
        pytest.fail(f"expected an NDJSON stream, got {response.status_code}: {response.text}")
    return await Reader(response).read(until)


def check_events(events: list[dict[str, Any]], *, first_seq: int = 1, complete: bool = True) -> None:
    """The §3.5 contract: four types, integer seq +1 without gaps, status first, result last."""
    assert events, "no events"
    seqs = [e.get("seq") for e in events]
    assert all(type(s) is int for s in seqs), seqs
    assert seqs == list(range(first_seq, first_seq + len(events))), seqs
    trace_ids = set()
    for e in events:
        assert e["type"] in EVENT_TYPES, e
        assert REQUIRED[e["type"]] <= set(e), e
        if e["type"] == "output":
            assert e["stream"] in ("stdout", "stderr") and isinstance(e["data"], str) and e["data"], e
        if e["type"] == "result":
            assert set(e["result"]) >= RESULT_FIELDS, e
            assert isinstance(e["output_truncated"], bool)
            assert isinstance(e["result"]["stdout"], str) and isinstance(e["result"]["stderr"], str)
            assert isinstance(e["result"]["exit_code"], int) and isinstance(e["result"]["success"], bool)
        if "trace_id" in e:
            trace_ids.add(e["trace_id"])
    assert len(trace_ids) <= 1, trace_ids
    if first_seq == 1:
        assert events[0]["type"] == "status" and TRACE_ID.match(events[0]["trace_id"]), events[0]
    results = [i for i, e in enumerate(events) if e["type"] == "result"]
    if complete:
        assert results == [len(events) - 1], [e["type"] for e in events]
    else:
        assert results == []


def stream_request(client: httpx.AsyncClient, code: str, **fields: Any) -> Any:
    return client.stream(
        "POST", EXECUTE, json={"code": code, **fields}, headers={"Accept": NDJSON},
        timeout=httpx.Timeout(120, connect=10),
    )


async def run_stream(client: httpx.AsyncClient, code: str, **fields: Any) -> Received:
    async with stream_request(client, code, **fields) as response:
        got = await read_ndjson(response)
    check_events(got.events)
    return got


async def output_stream(client: httpx.AsyncClient, trace_id: str, after_seq: int | None = None,
                        until: Callable[[dict[str, Any]], bool] | None = None) -> Received:
    params = {} if after_seq is None else {"after_seq": after_seq}
    async with client.stream("GET", f"/v1/executions/{trace_id}/output", params=params,
                             headers={"Accept": NDJSON}) as response:
        return await read_ndjson(response, until)


@pytest.fixture(scope="module")
async def other_key(server) -> str:
    return await server.create_key(org="streaming-other")


@pytest.fixture(scope="module")
def tuned(server_factory) -> Any:
    """Short keepalives, one execution at a time, a small output cap."""
    return server_factory(
        keepalive_interval_s=0.5, max_concurrent=1, output_limit_bytes=1024, admission_wait_s=0
    )


@pytest.fixture(scope="module")
async def tuned_key(tuned) -> str:
    return await tuned.create_key()


@pytest.fixture
async def tuned_client(tuned, tuned_key: str) -> Any:
    async with httpx.AsyncClient(base_url=tuned.url, headers=auth(tuned_key), timeout=120) as c:
        yield c


# --- mode selection ---------------------------------------------------------------------------


@pytest.mark.parametrize("accept", [None, "*/*", "application/json", "text/html", "application/*"])
async def test_inline_without_ndjson_accept(client, accept: str | None) -> None:
    request = client.build_request("POST", EXECUTE, json={"code": "print('inline')"})
    if accept is None:
        del request.headers["accept"]
    else:
        request.headers["accept"] = accept
    assert ("accept" in request.headers) is (accept is not None)
    r = await client.send(request)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["stdout"] == "inline\n" and body["success"] is True
    status = (await client.get(f"/v1/executions/{body['trace_id']}")).json()
    assert status["delivery_mode"] == "inline"


@pytest.mark.parametrize(
    "accept", [NDJSON, "application/json, application/x-ndjson;q=0.9", "APPLICATION/X-NDJSON", "*/*, application/x-ndjson"]
)
async def test_streaming_when_accept_names_ndjson(client, accept: str) -> None:
    async with client.stream("POST", EXECUTE, json={"code": "print('streamed')"}, headers={"Accept": accept}) as r:
        got = await read_ndjson(r)
    check_events(got.events)
    assert got.text() == "streamed\n"
    trace_id = got.events[0]["trace_id"]
    status = (await client.get(f"/v1/executions/{trace_id}")).json()
    assert status["delivery_mode"] == "streaming"
    assert status["status"] == "success"


@pytest.mark.parametrize(
    "headers",
    [
        {"Prefer": "respond-async"},
        {"Prefer": "respond-async", "Accept": NDJSON},  # Prefer wins
        {"Prefer": "wait=10, respond-async"},
        {"Prefer": "Respond-Async"},
    ],
)
async def test_webhook_mode_when_prefer_respond_async(client, headers: dict[str, str]) -> None:
    r = await client.post(EXECUTE, json={"code": "print('later')"}, headers=headers)
    assert r.status_code == 202, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) >= {"trace_id", "status"} and TRACE_ID.match(body["trace_id"])
    assert isinstance(body["status"], str)
    status = await wait_terminal(client, body["trace_id"])
    assert status["delivery_mode"] == "webhook"
    assert status["stdout"] == "later\n"


async def test_prefer_without_respond_async_is_inline(client) -> None:
    r = await client.post(EXECUTE, json={"code": "print(1)"}, headers={"Prefer": "return=minimal"})
    assert r.status_code == 200 and r.json()["stdout"] == "1\n"


async def wait_terminal(client: httpx.AsyncClient, trace_id: str, timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        status = (await client.get(f"/v1/executions/{trace_id}")).json()
        if status["status"] in {"success", "failed", "timeout", "cancelled", "blocked", "oom"}:
            return status  # type: ignore[no-any-return]
        assert time.monotonic() < deadline, status
        await asyncio.sleep(0.1)


# --- errors are ordinary HTTP errors, before any stream --------------------------------------


INVALID = [
    ({"code": ""}, "code"),
    ({"code": "print(1)", "timeout": 0}, "timeout"),
    ({"code": "print(1)", "language": "cobol"}, "language"),
    ({"code": "print(1)", "env_vars": {"PATH": "/x"}}, "env"),
]


@pytest.mark.parametrize(
    ("mode", "body", "fragment"),
    [("streaming", b, f) for b, f in INVALID]
    + [("webhook", b, f) for b, f in INVALID]
    + [("streaming", {"code": "print(1)", "webhook_url": "https://example.invalid/hook"}, "webhook_url")],
)
async def test_validation_error_is_plain_json(client, mode: str, body: dict[str, Any], fragment: str) -> None:
    headers = {"Accept": NDJSON} if mode == "streaming" else {"Prefer": "respond-async"}
    r = await client.post(EXECUTE, json=body, headers=headers)
    assert r.status_code == 400, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json()["error"] == "validation_error"
    assert fragment in r.json()["message"]


@pytest.mark.parametrize("headers", [{"Accept": NDJSON}, {"Prefer": "respond-async"}])
async def test_unauthorized_is_plain_json(server, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as anon:
        for extra in ({}, auth("sk-local-" + "x" * 40)):
            r = await anon.post(EXECUTE, json={"code": "print(1)"}, headers={**headers, **extra})
            assert r.status_code == 401, r.text
            assert r.headers["content-type"].startswith("application/json")
            assert r.json()["error"] == "unauthorized"


async def test_rate_limited_is_plain_json_before_the_stream(tuned_client) -> None:
    async with stream_request(tuned_client, "sleep 4; echo done", language="bash") as first:
        reader = Reader(first)
        got = await reader.read(until=lambda e: e.get("status") == "running")
        for headers in ({"Accept": NDJSON}, {"Prefer": "respond-async"}, {}):
            r = await tuned_client.post(EXECUTE, json={"code": "print(1)"}, headers=headers)
            assert r.status_code == 429, r.text
            assert r.headers["content-type"].startswith("application/json")
            assert r.json()["error"] == "rate_limited"
            assert float(r.headers["Retry-After"]) > 0
        rest = await reader.read()
    check_events(got.events + rest.events)
    assert (got.events + rest.events)[-1]["result"]["stdout"] == "done\n"


# --- the stream itself ------------------------------------------------------------------------


async def test_stream_event_contract(client) -> None:
    code = "import sys\nprint('one', flush=True)\nprint('warn', file=sys.stderr, flush=True)\nprint('two')\nsys.exit(4)\n"
    got = await run_stream(client, code, metadata={"case": "contract"})
    trace_id = got.events[0]["trace_id"]
    statuses = [e["status"] for e in got.of("status")]
    assert statuses[-1] == "running" and set(statuses) <= {"queued", "running"}, statuses
    result = got.result
    assert result["trace_id"] == trace_id
    assert result["status"] == "failed"
    assert result["output_truncated"] is False
    assert result["result"] == {
        "success": False, "stdout": "one\ntwo\n", "stderr": "warn\n", "exit_code": 4, "error": None,
        "error_message": None, "session": None, "outputs": [], "artifacts": [], "notes": [],
    }
    assert got.text("stdout") == "one\ntwo\n"
    assert got.text("stderr") == "warn\n"
    assert got.headers is not None and "no-store" in got.headers.get("cache-control", "")
    status = (await client.get(f"/v1/executions/{trace_id}")).json()
    assert status["status"] == "failed" and status["exit_code"] == 4
    assert status["stdout"] == "one\ntwo\n" and status["stderr"] == "warn\n"


async def test_output_arrives_incrementally(client) -> None:
    got = await run_stream(client, ticker(4), language="bash")
    outputs = [(t, e) for t, e in zip(got.times, got.events) if e["type"] == "output"]
    assert got.text() == "".join(f"tick {i}\n" for i in range(1, 5))
    assert len(outputs) >= 3, "the lines must not arrive as one chunk at the end"
    first_output_at = outputs[0][0]
    result_at = got.times[-1]
    # The program prints its first line at once and ends ~4 s later.
    assert result_at - first_output_at > 1.5, (first_output_at, result_at)
    assert outputs[-1][0] - outputs[0][0] > 1.0


async def test_keepalives_while_the_program_is_silent(tuned_client) -> None:
    got = await run_stream(tuned_client, "sleep 3; echo done", language="bash")
    keepalives = got.of("keepalive")
    assert len(keepalives) >= 2, [e["type"] for e in got.events]
    for e in keepalives:
        assert set(e) == {"type", "seq"}
    running = next(i for i, e in enumerate(got.events) if e.get("status") == "running")
    first_output = next(i for i, e in enumerate(got.events) if e["type"] == "output")
    assert any(running < got.events.index(k) < first_output for k in keepalives)
    assert got.result["result"]["stdout"] == "done\n"


async def test_no_keepalive_needed_on_a_short_run(client) -> None:
    got = await run_stream(client, "print('quick')")
    assert got.of("keepalive") == []  # default interval is 15 s


async def test_output_truncated_in_result_event(tuned_client) -> None:
    got = await run_stream(tuned_client, "print('x' * 5000)\nprint('y' * 5000)")
    assert got.result["output_truncated"] is True
    streamed = got.text()
    assert 0 < len(streamed) <= 1024
    assert got.result["result"]["stdout"] == streamed
    trace_id = got.events[0]["trace_id"]
    status = (await tuned_client.get(f"/v1/executions/{trace_id}")).json()
    assert status["output_truncated"] is True


# --- the event log: replay, follow, reconnect -------------------------------------------------


async def test_disconnect_then_reconnect_without_gap_or_duplicate(client) -> None:
    async with stream_request(client, ticker(5), language="bash") as response:
        first = await read_ndjson(response, until=lambda e: e["type"] == "output")
    check_events(first.events, complete=False)
    trace_id = first.events[0]["trace_id"]
    last_seen = first.events[-1]["seq"]
    await asyncio.sleep(1.5)  # events happen while nobody listens
    status = (await client.get(f"/v1/executions/{trace_id}")).json()
    assert status["status"] == "running", "the disconnect must not stop the execution"
    rest = await output_stream(client, trace_id, after_seq=last_seen)
    check_events(rest.events, first_seq=last_seen + 1)
    whole = first.events + rest.events
    check_events(whole)
    text = "".join(e["data"] for e in whole if e["type"] == "output")
    assert text == "".join(f"tick {i}\n" for i in range(1, 6))
    assert rest.result["status"] == "success"
    final = (await client.get(f"/v1/executions/{trace_id}")).json()
    assert final["status"] == "success"
    assert final["stdout"] == text
    assert final["completed_at"]


async def test_second_follower_mid_run_sees_the_same_events(client) -> None:
    async with stream_request(client, ticker(3), language="bash") as response:
        reader = Reader(response)
        head = await reader.read(until=lambda e: e["type"] == "output")
        trace_id = head.events[0]["trace_id"]
        follower = asyncio.create_task(output_stream(client, trace_id))
        tail = await reader.read()
    live = head.events + tail.events
    check_events(live)
    replayed = (await asyncio.wait_for(follower, 60)).events
    assert replayed == live


async def test_replay_after_the_end(client) -> None:
    live = (await run_stream(client, "print('a', flush=True)\nimport time; time.sleep(0.3)\nprint('b')")).events
    trace_id = live[0]["trace_id"]
    assert (await output_stream(client, trace_id)).events == live
    assert (await output_stream(client, trace_id, after_seq=0)).events == live
    for k in range(1, len(live)):
        tail = (await output_stream(client, trace_id, after_seq=k)).events
        assert tail == live[k:]
    for beyond in (len(live), len(live) + 100):
        assert (await output_stream(client, trace_id, after_seq=beyond)).events == []


async def test_output_of_a_running_execution_from_the_start(client) -> None:
    r = await client.post(EXECUTE, json={"code": ticker(3), "language": "bash"}, headers={"Prefer": "respond-async"})
    assert r.status_code == 202
    trace_id = r.json()["trace_id"]
    got = await output_stream(client, trace_id)
    check_events(got.events)
    assert got.events[0]["trace_id"] == trace_id
    assert got.text() == "tick 1\ntick 2\ntick 3\n"
    assert got.result["status"] == "success"


async def test_output_after_seq_beyond_a_running_log_ends_with_the_execution(client) -> None:
    r = await client.post(EXECUTE, json={"code": "sleep 1", "language": "bash"}, headers={"Prefer": "respond-async"})
    trace_id = r.json()["trace_id"]
    async with client.stream("GET", f"/v1/executions/{trace_id}/output", params={"after_seq": 1000},
                             timeout=httpx.Timeout(20, connect=10)) as response:
        got = await read_ndjson(response)
    assert got.events == []
    assert (await client.get(f"/v1/executions/{trace_id}")).json()["status"] == "success"


async def test_output_errors(client, other_key: str, server) -> None:
    trace_id = (await client.post(EXECUTE, json={"code": "print(1)"})).json()["trace_id"]
    for after_seq in ("-1", "abc", "1.5"):
        r = await client.get(f"/v1/executions/{trace_id}/output", params={"after_seq": after_seq})
        assert r.status_code == 400, (after_seq, r.text)
        assert r.json()["error"] == "validation_error"
        assert "after_seq" in r.json()["message"]
    for missing in ("trc_doesnotexist0001", "not-a-trace-id"):
        r = await client.get(f"/v1/executions/{missing}/output")
        assert r.status_code == 404 and r.json()["error"] == "not_found"
    async with httpx.AsyncClient(base_url=server.url, headers=auth(other_key), timeout=30) as other:
        for path in (f"/v1/executions/{trace_id}/output", f"/v1/executions/{trace_id}"):
            r = await other.get(path)
            assert r.status_code == 404, r.text
            assert r.json()["error"] == "not_found"
        r = await other.get(f"/v1/executions/{trace_id}/output", params={"after_seq": 1})
        assert r.status_code == 404
    assert (await client.get(f"/v1/executions/{trace_id}/output")).status_code == 200


# --- the official SDK -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sdk(server, api_key: str) -> Iterator[baponi.Baponi]:
    with baponi.Baponi(api_key=api_key, base_url=server.url) as client:
        yield client


def test_sdk_execute_stream(sdk: baponi.Baponi) -> None:
    with sdk.execute_stream("import sys\nprint('hello')\nprint('oops', file=sys.stderr)") as stream:
        events = list(stream)
        result = stream.get_final_result()
    assert isinstance(events[0], baponi.StatusEvent)
    assert isinstance(events[-1], baponi.ResultEvent)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert stream.trace_id and TRACE_ID.match(stream.trace_id)
    assert stream.last_seq == events[-1].seq
    outputs = [e for e in events if isinstance(e, baponi.OutputEvent)]
    assert "".join(e.data for e in outputs if e.stream == "stdout") == "hello\n"
    assert "".join(e.data for e in outputs if e.stream == "stderr") == "oops\n"
    assert isinstance(result, baponi.SandboxResult)
    assert result.success is True and result.stdout == "hello\n" and result.stderr == "oops\n"
    assert events[-1].output_truncated is False
    assert sdk.get_execution(stream.trace_id).delivery_mode == "streaming"


def test_sdk_until_done(sdk: baponi.Baponi) -> None:
    with sdk.execute_stream(ticker(2), language="bash") as stream:
        result = stream.until_done()
    assert result.stdout == "tick 1\ntick 2\n"
    assert result.exit_code == 0
    assert stream.get_final_result() == result


def test_sdk_reconnect_mid_run_and_after_the_end(sdk: baponi.Baponi) -> None:
    marker = uuid.uuid4().hex[:8]
    code = f'for i in 1 2 3 4; do echo "{marker} $i"; sleep 1; done'
    with sdk.execute_stream(code, language="bash") as stream:
        seen = []
        for event in stream:
            seen.append(event)
            if isinstance(event, baponi.OutputEvent):
                break
        trace_id = stream.trace_id
        last = stream.last_seq
    assert trace_id is not None and last == seen[-1].seq
    with sdk.reconnect_stream(trace_id, after_seq=last) as again:
        rest = list(again)
        result = again.get_final_result()
    assert rest[0].seq == last + 1
    assert [e.seq for e in seen + rest] == list(range(1, len(seen) + len(rest) + 1))
    assert result.stdout == "".join(f"{marker} {i}\n" for i in range(1, 5))
    text = "".join(e.data for e in seen + rest if isinstance(e, baponi.OutputEvent))
    assert text == result.stdout
    status = sdk.get_execution(trace_id)
    assert status.status == "success" and status.stdout == result.stdout
    # after the end: from the start, and from where the first stream stopped
    with sdk.reconnect_stream(trace_id) as replay:
        everything = list(replay)
        assert replay.get_final_result() == result
    assert [e.seq for e in everything] == [e.seq for e in seen + rest]
    assert everything == seen + rest
    with sdk.reconnect_stream(trace_id, after_seq=last) as tail:
        assert list(tail) == rest
