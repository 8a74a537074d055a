"""Result notes against the real server (service/notes.py): in the inline JSON, the stream's
result event and GET /v1/executions/{id}; the official SDK still parses every result shape."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import baponi
import httpx
import pytest

from sandboxd.service import notes

EXECUTE = "/v1/sandbox/execute"
NDJSON = "application/x-ndjson"
LOWERED = "timeout lowered from 120 s to this key's cap of 60 s"


@pytest.fixture(scope="module")
def sdk(server: Any, api_key: str) -> Iterator[baponi.Baponi]:
    with baponi.Baponi(api_key=api_key, base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture
def http(server: Any, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=120) as c:
        yield c


def streamed(http: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    with http.stream("POST", EXECUTE, json=body, headers={"Accept": NDJSON}) as r:
        assert r.status_code == 200
        return [json.loads(line) for line in r.iter_lines() if line.strip()]


def test_timeout_lowered_in_every_result_shape(sdk: baponi.Baponi, http: httpx.Client) -> None:
    body = {"code": "print('hi')", "timeout": 120}
    inline = http.post(EXECUTE, json=body).json()
    assert inline["success"] is True and inline["notes"] == [LOWERED]
    assert (inline["session"], inline["outputs"], inline["artifacts"]) == (None, [], [])
    events = streamed(http, body)
    assert events[-1]["type"] == "result" and events[-1]["result"]["notes"] == [LOWERED]
    for trace_id in (inline["trace_id"], events[-1]["trace_id"]):
        status = http.get(f"/v1/executions/{trace_id}").json()
        assert status["notes"] == [LOWERED] and status["outputs"] == [] and status["session"] is None
    # the official SDK parses the results that carry notes, and a run within the cap has none
    result = sdk.execute("print('hi')", timeout=120)
    assert isinstance(result, baponi.SandboxResult) and result.stdout == "hi\n"
    with sdk.execute_stream("print('hi')", timeout=120) as stream:
        assert stream.until_done().stdout == "hi\n"
    assert http.post(EXECUTE, json={"code": "print(1)", "timeout": 60}).json()["notes"] == []


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=5)"),
        ("node", "fetch('http://example.com').then(r => console.log(r.status))"),
    ],
)
def test_no_network_note(http: httpx.Client, language: str, code: str) -> None:
    result = http.post(EXECUTE, json={"code": code, "language": language}).json()
    assert result["success"] is False, result
    assert result["notes"] == [notes.NO_NETWORK], result["stderr"]


def test_an_ordinary_failure_has_no_network_note(http: httpx.Client) -> None:
    result = http.post(EXECUTE, json={"code": "1/0"}).json()
    assert result["success"] is False and result["notes"] == []


def test_output_truncated_note(server: Any, http: httpx.Client) -> None:
    cap = server.settings.output_limit_bytes
    code = f"import sys\nsys.stdout.write('x' * {cap + 10})\nsys.stderr.write('e' * {cap + 10})"
    result = http.post(EXECUTE, json={"code": code}).json()
    assert result["output_truncated"] is True
    assert result["notes"] == [
        f"output truncated: stdout and stderr were each cut at the cap of {cap} bytes; "
        "write large output to a file instead"
    ]


async def test_persistent_config_without_thread_note(server: Any) -> None:
    key = await server.create_key(sandbox="notes-kept", session="persistent")
    with baponi.Baponi(api_key=key, base_url=server.url, timeout=120) as kept:
        assert kept.execute("print(2)").stdout == "2\n"  # the SDK is unaffected
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
        assert http.post(EXECUTE, json={"code": "print(2)"}).json()["notes"] == [notes.NO_THREAD]
