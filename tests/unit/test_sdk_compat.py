"""The official `baponi` SDK 0.5.1 parses results that carry sandboxd's extras (session,
outputs, artifacts, notes), in every shape, as the server writes them: the inline body from
`SandboxResult.of`, the NDJSON stream from the job's events, GET /v1/executions/{id} from
`execution_document`. The SDK talks to an httpx MockTransport serving those bodies (the server
cannot produce rich outputs without a persistent session; tests/integration/test_notes.py
runs the notes end to end)."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from typing import Any

import baponi
import httpx
import pytest

from sandboxd.api.schemas import ExecutionStatus, SandboxResult
from sandboxd.bus import Event
from sandboxd.service.documents import execution_document
from sandboxd.service.job import Outcome
from sandboxd.store import Execution

TRACE = "trc_" + "a" * 20
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGP4z8DwHwAFAAH/iZk9HQAAAABJRU5ErkJggg=="
OUTCOME = Outcome(
    trace_id=TRACE, status="success", exit_code=0, stdout="42\n", stderr="", error=None, duration_ms=12,
    output_truncated=False,
    session={"state": "reset", "reason": "idle"},
    outputs=(
        {"type": "image/png", "data": PNG},
        {"type": "text/html", "data": "<table></table>"},
        {"type": "image/png", "data": "", "truncated": True, "size": 9_000_000},
    ),
    artifacts=({"path": "out.csv", "size": 4, "url": "http://127.0.0.1:9/v1/artifacts/x", "expires_at": "2026-12-08T00:00:00Z"},),
    notes=("timeout lowered from 120 s to this key's cap of 60 s",),
)


def _inline() -> dict[str, Any]:
    return SandboxResult.of(OUTCOME).model_dump(mode="json")


def _stream() -> bytes:
    events = [
        Event(1, "status", {"trace_id": TRACE, "status": "queued"}),
        Event(2, "status", {"trace_id": TRACE, "status": "running"}),
        Event(3, "output", {"stream": "stdout", "data": "42\n"}),
        Event(4, "result", {"trace_id": TRACE, "status": "success", "result": OUTCOME.result(),
                            "output_truncated": False}),
    ]
    return b"".join(json.dumps(e.to_json()).encode() + b"\n" for e in events)


def _status() -> dict[str, Any]:
    execution = Execution(
        trace_id=TRACE, org_id="org_1", key_id="key_1", language="python", status="success", timeout_s=60,
        delivery_mode="inline", created_at=datetime(2026, 12, 7, tzinfo=timezone.utc), exit_code=0,
        stdout="42\n", stderr="", completed_at=datetime(2026, 12, 7, tzinfo=timezone.utc), duration_ms=12,
        extras=OUTCOME.extras(),
    )
    return ExecutionStatus(**execution_document(execution)).model_dump(mode="json")


def _serve(request: httpx.Request) -> httpx.Response:
    if request.method == "POST" and request.url.path == "/v1/sandbox/execute":
        if "application/x-ndjson" in request.headers.get("accept", ""):
            return httpx.Response(200, content=_stream(), headers={"Content-Type": "application/x-ndjson"})
        return httpx.Response(200, json=_inline())
    if request.method == "GET" and request.url.path == f"/v1/executions/{TRACE}":
        return httpx.Response(200, json=_status())
    return httpx.Response(404, json={"error": "not_found", "message": "no route"})


@pytest.fixture
def sdk() -> baponi.Baponi:
    http = httpx.Client(transport=httpx.MockTransport(_serve))
    return baponi.Baponi(api_key="sk-test", base_url="https://sandboxd.test", http_client=http)


def test_the_bodies_carry_the_extras() -> None:
    assert _inline()["outputs"][0] == {"type": "image/png", "data": PNG, "truncated": False, "size": None}
    assert _inline()["session"] == {"state": "reset", "reason": "idle"}
    assert _status()["artifacts"][0]["path"] == "out.csv" and _status()["notes"] == list(OUTCOME.notes)


def test_execute_parses_a_result_with_extras(sdk: baponi.Baponi) -> None:
    result = sdk.execute("print(42)")
    assert isinstance(result, baponi.SandboxResult)
    assert (result.success, result.stdout, result.exit_code, result.error) == (True, "42\n", 0, None)


def test_execute_stream_parses_a_result_event_with_extras(sdk: baponi.Baponi) -> None:
    with sdk.execute_stream("print(42)") as stream:
        events = list(stream)
        result = stream.get_final_result()
    assert isinstance(events[-1], baponi.ResultEvent)
    assert result.stdout == "42\n" and result.success is True


def test_get_execution_parses_a_status_with_extras(sdk: baponi.Baponi) -> None:
    status = sdk.get_execution(TRACE)
    assert status.trace_id == TRACE and status.status == "success"


def test_async_execute_parses_a_result_with_extras() -> None:
    async def run() -> baponi.SandboxResult:
        http = httpx.AsyncClient(transport=httpx.MockTransport(_serve))
        async with baponi.AsyncBaponi(api_key="sk-test", base_url="https://sandboxd.test", http_client=http) as c:
            return await c.execute("print(42)")

    assert asyncio.run(run()).stdout == "42\n"


def test_langchain_tool_text_with_extras(sdk: baponi.Baponi) -> None:
    pytest.importorskip("langchain_core")
    from baponi import langchain as baponi_langchain
    from baponi._base import result_to_llm_text

    tool = baponi_langchain.create_code_sandbox(api_key="sk-test", base_url="https://sandboxd.test")
    tool._sync_client = sdk  # the tool's own client, over the mock transport
    assert tool.invoke({"code": "print(42)"}) == result_to_llm_text(sdk.execute("print(42)")) == "42\n"
