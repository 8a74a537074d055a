"""The MCP server at /mcp against a real server: the official `mcp` client (Streamable HTTP,
both the initialize handshake of 2025-11-25 and the stateless 2026-07-28 wire), and raw
JSON-RPC over httpx for what a client library would never send."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from jsonschema import Draft202012Validator
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import CallToolResult, Implementation

from sandboxd.api.schemas import SandboxResult
from sandboxd.mcp.tools import ExecuteResult

EXECUTE = "/v1/sandbox/execute"
ACCEPT = "application/json, text/event-stream"
needs_btrfs = pytest.mark.skipif(
    not (Path("/usr/sbin/mkfs.btrfs").exists() or Path("/usr/bin/mkfs.btrfs").exists()),
    reason="threads need btrfs-progs",
)


# --- helpers ------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def mcp_client(
    server: Any, key: str, *, mode: str = "legacy", headers: dict[str, str] | None = None, **kwargs: Any
) -> AsyncIterator[Client]:
    """The official client over Streamable HTTP with the key in a Bearer header."""
    http = httpx2.AsyncClient(
        headers={"Authorization": f"Bearer {key}", **(headers or {})}, timeout=httpx2.Timeout(30, read=300)
    )
    async with http, Client(streamable_http_client(f"{server.url}/mcp", http_client=http), mode=mode, **kwargs) as c:
        yield c


def text_of(result: CallToolResult) -> str:
    assert len(result.content) == 1 and result.content[0].type == "text"
    return result.content[0].text


def db_rows(server: Any, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(f"file:{server.data_dir / 'sandboxd.db'}?mode=ro", uri=True)) as db:
        return db.execute(query, args).fetchall()


def sse_messages(response: httpx.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an SSE response body."""
    assert response.headers["content-type"].startswith("text/event-stream"), response.text
    return [json.loads(line[5:]) for line in response.text.splitlines() if line.startswith("data:") and line[5:].strip()]


def rpc(server: Any, key: str | None, body: Any, *, headers: dict[str, str] | None = None) -> httpx.Response:
    """One raw POST to /mcp (a dict or list is sent as JSON, bytes as they are)."""
    sent = {"Content-Type": "application/json", "Accept": ACCEPT, **(headers or {})}
    if key is not None:
        sent["Authorization"] = f"Bearer {key}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(f"{server.url}/mcp", content=content, headers=sent, timeout=120)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def flat(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in flat(sub)]
    return [exc]


# --- the official client: handshake and tools ---------------------------------------------------


@pytest.mark.parametrize(("mode", "version"), [("legacy", "2025-11-25"), ("auto", "2026-07-28")])
async def test_connect_and_list_tools(server: Any, api_key: str, mode: str, version: str) -> None:
    async with mcp_client(server, api_key, mode=mode) as c:
        assert c.protocol_version == version
        assert c.server_info is not None and c.server_info.name == "sandboxd"
        listed = {t.name: t for t in (await c.list_tools()).tools}
    assert set(listed) == {"sandbox_execute", "files_list", "files_download", "files_upload"}
    for tool in listed.values():
        Draft202012Validator.check_schema(tool.input_schema)
        assert tool.output_schema is not None
        Draft202012Validator.check_schema(tool.output_schema)
        assert tool.input_schema["type"] == "object" and tool.output_schema["type"] == "object"
        assert tool.description and len(tool.description) > 80
    execute = listed["sandbox_execute"]
    assert execute.input_schema["required"] == ["code"]
    assert set(execute.input_schema["properties"]) == {"code", "language", "timeout", "thread_id", "env_vars", "metadata"}
    assert execute.input_schema["properties"]["language"]["enum"] == ["python", "node", "bash"]
    # described for this key: its sandbox's timeout cap and network, where files persist
    assert "timeout at most 60 s" in execute.description
    assert "no network access" in execute.description
    assert "/home/baponi" in execute.description
    assert listed["files_download"].input_schema["required"] == ["id", "path"]
    assert listed["files_download"].annotations is not None and listed["files_download"].annotations.read_only_hint


def test_output_schema_has_the_rest_result_fields() -> None:
    assert set(ExecuteResult.model_fields) == set(SandboxResult.model_fields)


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "import sys; print('out'); print('err', file=sys.stderr)"),
        ("node", "console.log('out'); console.error('err')"),
        ("bash", "echo out; echo err >&2"),
    ],
)
async def test_execute_each_language(server: Any, api_key: str, language: str, code: str) -> None:
    async with mcp_client(server, api_key) as c:
        result = await c.call_tool("sandbox_execute", {"code": code, "language": language})
    assert result.is_error is False
    s = result.structured_content
    assert s["success"] is True and s["exit_code"] == 0 and s["error"] is None
    assert (s["stdout"], s["stderr"]) == ("out\n", "err\n")
    assert s["trace_id"].startswith("trc_") and s["output_truncated"] is False
    text = text_of(result)
    assert text.startswith("out\n\n[stderr]\nerr\n\n[exit code: 0]")
    assert f"[trace_id: {s['trace_id']}]" in text


async def test_execute_on_the_stateless_2026_wire(server: Any, api_key: str) -> None:
    async with mcp_client(server, api_key, mode="auto") as c:
        result = await c.call_tool("sandbox_execute", {"code": "echo $((6 * 7))", "language": "bash"})
    assert result.is_error is False and result.structured_content["stdout"] == "42\n"


async def test_failing_program_is_an_error_result(server: Any, api_key: str) -> None:
    async with mcp_client(server, api_key) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        result = await c.call_tool("sandbox_execute", {"code": "import sys; print('partial'); sys.exit(3)"})
    assert result.is_error is True
    s = result.structured_content
    assert (s["success"], s["exit_code"], s["stdout"], s["error"]) == (False, 3, "partial\n", None)
    Draft202012Validator(tools["sandbox_execute"].output_schema).validate(s)
    assert "[exit code: 3]" in text_of(result)


async def test_timeout(server: Any, api_key: str) -> None:
    async with mcp_client(server, api_key) as c:
        started = time.monotonic()
        result = await c.call_tool("sandbox_execute", {"code": "echo before; sleep 30", "language": "bash", "timeout": 1})
    assert time.monotonic() - started < 20
    assert result.is_error is True
    assert result.structured_content["error"] == "timeout"
    assert result.structured_content["stdout"] == "before\n"
    assert "[error]\ntimeout" in text_of(result)


@pytest.mark.parametrize(
    "arguments",
    [
        {},
        {"code": ""},
        {"code": "print(1)", "timeout": 0},
        {"code": "print(1)", "timeout": "5"},
        {"code": "print(1)", "language": "ruby"},
        {"code": "print(1)", "thread_id": "no spaces allowed"},
        {"code": "print(1)", "env_vars": {"PATH": "/tmp"}},
        {"code": "print(1)", "metadata": {f"k{i}": "v" for i in range(11)}},
    ],
)
async def test_validation_errors_match_rest(server: Any, api_key: str, arguments: dict[str, Any]) -> None:
    """The same ExecuteRequest rules and messages as POST /v1/sandbox/execute, as a tool error."""
    rest = httpx.post(f"{server.url}{EXECUTE}", json=arguments, headers={"Authorization": f"Bearer {api_key}"}, timeout=60)
    assert rest.status_code == 400
    async with mcp_client(server, api_key) as c:
        result = await c.call_tool("sandbox_execute", arguments)
    assert result.is_error is True and result.structured_content is None
    assert text_of(result) == f"validation_error: {rest.json()['message']}"


async def test_fields_not_exposed_to_models_are_refused(server: Any, api_key: str) -> None:
    async with mcp_client(server, api_key) as c:
        for field, value in (("webhook_url", "https://example.com/hook"), ("sub_paths", ["/data/x/"])):
            result = await c.call_tool("sandbox_execute", {"code": "print(1)", field: value})
            assert result.is_error is True
            assert text_of(result) == f"validation_error: unknown field {field!r}"


async def test_unknown_tool_is_a_protocol_error(server: Any, api_key: str) -> None:
    async with mcp_client(server, api_key) as c:
        with pytest.raises(MCPError) as caught:
            await c.call_tool("rm_rf", {})
    assert caught.value.code == -32602
    assert "rm_rf" in caught.value.message


async def test_output_streams_as_progress(server: Any, api_key: str) -> None:
    code = "import sys, time\nprint('first', flush=True)\ntime.sleep(1.5)\nprint('oops', file=sys.stderr)\nprint('last')"
    seen: list[tuple[float, float, str | None]] = []

    async def progress(value: float, total: float | None, message: str | None) -> None:
        seen.append((time.monotonic(), value, message))

    async with mcp_client(server, api_key) as c:
        result = await c.call_tool("sandbox_execute", {"code": code}, progress_callback=progress)
    done = time.monotonic()
    assert result.structured_content["stdout"] == "first\nlast\n"
    messages = "".join(m or "" for _, _, m in seen)
    assert messages.startswith("first\n")
    assert "[stderr] oops" in messages and "last" in messages
    assert [v for _, v, _ in seen] == sorted({v for _, v, _ in seen})  # strictly increasing
    assert done - seen[0][0] > 1.0, "the first line must arrive while the program still runs"


async def test_audit_record(server: Any, api_key: str) -> None:
    async with mcp_client(server, api_key, headers={"X-Client-Id": "test-agent/mcp"}) as c:
        result = await c.call_tool("sandbox_execute", {"code": "print(1)", "metadata": {"task": "audit"}})
    trace_id = result.structured_content["trace_id"]
    rows = db_rows(server, "SELECT delivery_mode, client_id, metadata, status FROM executions WHERE trace_id = ?", trace_id)
    assert len(rows) == 1
    mode, client_id, metadata, status = rows[0]
    assert (mode, client_id, status) == ("mcp", "test-agent/mcp", "success")
    assert json.loads(metadata) == {"task": "audit"}
    # and the REST API serves the same execution
    status_doc = httpx.get(f"{server.url}/v1/executions/{trace_id}", headers={"Authorization": f"Bearer {api_key}"}).json()
    assert status_doc["delivery_mode"] == "mcp" and status_doc["stdout"] == "1\n"


async def test_client_info_is_recorded_without_a_client_id_header(server: Any, api_key: str) -> None:
    async with mcp_client(server, api_key, mode="auto", client_info=Implementation(name="probe-agent", version="7.1")) as c:
        result = await c.call_tool("sandbox_execute", {"code": "print(1)"})
    rows = db_rows(server, "SELECT client_id FROM executions WHERE trace_id = ?", result.structured_content["trace_id"])
    assert rows == [("probe-agent/7.1",)]


# --- threads and files --------------------------------------------------------------------------


@needs_btrfs
async def test_thread_state_persists(server: Any, api_key: str) -> None:
    thread = unique("mcp")
    async with mcp_client(server, api_key) as c:
        first = await c.call_tool(
            "sandbox_execute",
            {"code": "open('/home/baponi/count.txt', 'w').write('1')\nprint('wrote')", "thread_id": thread},
        )
        assert first.is_error is False
        second = await c.call_tool(
            "sandbox_execute", {"code": "cat /home/baponi/count.txt", "language": "bash", "thread_id": thread}
        )
        fresh = await c.call_tool("sandbox_execute", {"code": "ls -A /home/baponi | wc -l", "language": "bash"})
    assert second.structured_content["stdout"] == "1"
    assert fresh.structured_content["stdout"] == "0\n"


@needs_btrfs
async def test_busy_thread_is_a_conflict_tool_error(server: Any, api_key: str) -> None:
    thread = unique("busy")
    async with mcp_client(server, api_key) as c:
        slow = asyncio.create_task(c.call_tool("sandbox_execute", {"code": "sleep 3", "language": "bash", "thread_id": thread}))
        deadline = time.monotonic() + 30
        while not db_rows(server, "SELECT 1 FROM executions WHERE thread_id = ? AND status = 'running'", thread):
            assert time.monotonic() < deadline and not slow.done()
            await asyncio.sleep(0.05)
        second = await c.call_tool("sandbox_execute", {"code": "print(1)", "thread_id": thread})
        assert (await slow).is_error is False
    assert second.is_error is True
    assert text_of(second).startswith("conflict: ")


@needs_btrfs
async def test_files_list_and_download(server: Any, api_key: str) -> None:
    thread = unique("files")
    binary = bytes(range(256)) * 40
    code = (
        "import os\n"
        "os.makedirs('/home/baponi/out', exist_ok=True)\n"
        "open('/home/baponi/out/notes.txt', 'w').write('hello\\nworld\\n')\n"
        f"open('/home/baponi/out/blob.bin', 'wb').write(bytes(range(256)) * 40)\n"
        "open('/home/baponi/big.txt', 'w').write('x' * 70000)\n"
    )
    async with mcp_client(server, api_key) as c:
        assert (await c.call_tool("sandbox_execute", {"code": code, "thread_id": thread})).is_error is False
        listed = await c.call_tool("files_list", {"id": thread})
        sub = await c.call_tool("files_list", {"source": "thread", "id": thread, "path": "out"})
        notes = await c.call_tool("files_download", {"source": "thread", "id": thread, "path": "/home/baponi/out/notes.txt"})
        blob = await c.call_tool("files_download", {"id": thread, "path": "out/blob.bin"})
        big = await c.call_tool("files_download", {"id": thread, "path": "big.txt"})
        # entries are relative to the listed directory: a model prefixes it to download one
        composed = [
            await c.call_tool("files_download", {"id": thread, "path": f"out/{f['path']}"})
            for f in sub.structured_content["files"]
        ]

    paths = {f["path"]: f for f in listed.structured_content["files"]}
    assert {"out", "out/notes.txt", "out/blob.bin", "big.txt"} <= set(paths)
    assert paths["out"]["is_directory"] is True and paths["out/blob.bin"]["size"] == len(binary)
    assert "out/notes.txt\t12\t" in text_of(listed)
    assert {f["path"] for f in sub.structured_content["files"]} == {"notes.txt", "blob.bin"}
    assert "relative to 'out'" in text_of(sub) and "\nnotes.txt\t12\t" in text_of(sub)
    assert [r.is_error for r in composed] == [False, False]
    assert {r.structured_content["size"] for r in composed} == {12, len(binary)}

    assert notes.is_error is False
    s = notes.structured_content
    assert s["content"] == "hello\nworld\n" and s["size"] == 12
    assert "hello\nworld" in text_of(notes) and s["url"] in text_of(notes)
    async with httpx.AsyncClient(timeout=60) as plain:  # no key: the URL is the authority
        assert (await plain.get(s["url"])).content == b"hello\nworld\n"
        assert blob.structured_content["content"] is None and "binary" in text_of(blob)
        assert (await plain.get(blob.structured_content["url"])).content == binary
        assert big.structured_content["content"] is None and big.structured_content["size"] == 70000
        assert "inline limit" in text_of(big)
        assert (await plain.get(big.structured_content["url"])).content == b"x" * 70000


@needs_btrfs
async def test_files_errors_are_tool_errors(server: Any, api_key: str) -> None:
    thread = unique("nofile")
    headers = {"Authorization": f"Bearer {api_key}"}
    rest = httpx.post(f"{server.url}/v1/files/download_url", json={"source": "bucket", "id": thread, "path": "x"}, headers=headers)
    async with mcp_client(server, api_key) as c:
        bad_source = await c.call_tool("files_download", {"source": "bucket", "id": thread, "path": "x"})
        missing_thread = await c.call_tool("files_list", {"id": thread})
        traversal = await c.call_tool("files_download", {"id": thread, "path": "../../etc/passwd"})
    assert bad_source.is_error and text_of(bad_source) == f"validation_error: {rest.json()['message']}"
    assert missing_thread.is_error and text_of(missing_thread).startswith("not_found: ")
    assert traversal.is_error and text_of(traversal).startswith("validation_error: ")


@needs_btrfs
async def test_files_upload_inline_then_execute_reads_it(server: Any, api_key: str) -> None:
    """A thread that has not run yet: files_upload creates it, sandbox_execute finds the files."""
    thread = unique("upload")
    binary = bytes(range(256))
    async with mcp_client(server, api_key) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        text = await c.call_tool("files_upload", {"id": thread, "path": "in/data.csv", "content": "a,b\n1,2\n"})
        raw = await c.call_tool(
            "files_upload",
            {"id": thread, "path": "/home/baponi/in/blob.bin", "content": base64.b64encode(binary).decode(),
             "encoding": "base64"},
        )
        code = (
            "import csv, hashlib\n"
            "rows = list(csv.reader(open('/home/baponi/in/data.csv')))\n"
            "print(rows, hashlib.sha256(open('/home/baponi/in/blob.bin', 'rb').read()).hexdigest())"
        )
        ran = await c.call_tool("sandbox_execute", {"code": code, "thread_id": thread})
        too_big = await c.call_tool("files_upload", {"id": thread, "path": "big.txt", "content": "x" * 70_000})
        neither = await c.call_tool("files_upload", {"id": thread, "path": "x.txt"})
    assert text.is_error is False and text.structured_content == {
        "path": "in/data.csv", "written": True, "size": 8, "url": None, "headers": [], "expires_at": None,
    }
    Draft202012Validator(tools["files_upload"].output_schema).validate(raw.structured_content)
    assert raw.structured_content["path"] == "in/blob.bin" and raw.structured_content["size"] == 256
    assert ran.is_error is False, text_of(ran)
    assert ran.structured_content["stdout"] == f"[['a', 'b'], ['1', '2']] {hashlib.sha256(binary).hexdigest()}\n"
    assert too_big.is_error and "over the inline limit of 65536" in text_of(too_big)
    assert neither.is_error and text_of(neither).startswith("validation_error: give content")


@needs_btrfs
async def test_files_upload_signed_url(server: Any, api_key: str) -> None:
    thread = unique("upurl")
    async with mcp_client(server, api_key) as c:
        signed = await c.call_tool(
            "files_upload", {"id": thread, "path": "report.txt", "content_length": 5, "content_type": "text/plain"}
        )
        s = signed.structured_content
        assert signed.is_error is False and s["written"] is False and s["url"].startswith(server.url)
        assert s["url"] in text_of(signed)
        put = httpx.put(s["url"], content=b"hello", headers={h["name"]: h["value"] for h in s["headers"]})
        assert put.status_code == 200, put.text
        ran = await c.call_tool("sandbox_execute", {"code": "cat /home/baponi/report.txt", "language": "bash",
                                                    "thread_id": thread})
    assert ran.structured_content["stdout"] == "hello"


async def test_notes_in_the_execute_text(server: Any, api_key: str) -> None:
    async with mcp_client(server, api_key) as c:
        result = await c.call_tool("sandbox_execute", {"code": "print(1)", "timeout": 120})
    assert result.is_error is False
    assert result.structured_content["notes"] == ["timeout lowered from 120 s to this key's cap of 60 s"]
    assert result.structured_content["outputs"] == [] and result.structured_content["session"] is None
    assert "[notes]\n- timeout lowered from 120 s to this key's cap of 60 s" in text_of(result)


#: A python cell whose last value has a PNG repr (1x1, made with zlib: no PIL on the host).
PNG_CELL = """
import struct, zlib
def chunk(kind, data):
    return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
class Dot:
    def _repr_png_(self):
        ihdr = struct.pack('>IIBBBBB', 1, 1, 8, 2, 0, 0, 0)
        return (b'\\x89PNG\\r\\n\\x1a\\n' + chunk(b'IHDR', ihdr)
                + chunk(b'IDAT', zlib.compress(b'\\x00\\xff\\x00\\x00')) + chunk(b'IEND', b''))
    def _repr_markdown_(self):
        return '**a red dot**'
Dot()
"""


@needs_btrfs
async def test_a_persistent_session_shows_images_and_its_state(server: Any) -> None:
    """End to end with a session: the cell's PNG comes back as an image block, its markdown as
    text, and the text says whether the interpreter was kept."""
    key = await server.create_key(sandbox="mcp-repl", session="persistent")
    thread = unique("repl")
    async with mcp_client(server, key) as c:
        first = await c.call_tool("sandbox_execute", {"code": "x = 41", "thread_id": thread})
        shown = await c.call_tool("sandbox_execute", {"code": PNG_CELL, "thread_id": thread})
        kept = await c.call_tool("sandbox_execute", {"code": "print(x + 1)", "thread_id": thread})
        no_thread = await c.call_tool("sandbox_execute", {"code": "print(1)"})
    assert first.is_error is False and "[session: new]" in first.content[0].text
    assert shown.is_error is False, shown.content[0].text
    text, image, markdown = shown.content
    assert text.type == "text" and "[session: kept]" in text.text and "[outputs: 1. image/png; 2. text/markdown]" in text.text
    assert image.type == "image" and image.mime_type == "image/png"
    assert base64.b64decode(image.data).startswith(b"\x89PNG\r\n\x1a\n")
    assert markdown.type == "text" and markdown.text == "**a red dot**"
    assert [o["type"] for o in shown.structured_content["outputs"]] == ["image/png", "text/markdown"]
    assert kept.structured_content["stdout"] == "42\n" and kept.structured_content["session"]["state"] == "kept"
    assert "pass a thread_id to keep variables" in text_of(no_thread)


@needs_btrfs
async def test_an_upload_into_a_live_session_keeps_it_and_is_seen(server: Any) -> None:
    """An upload while the thread's session lives goes into its workspace, saved as the home:
    the interpreter keeps its state and sees the file, and later checkpoints keep it."""
    key = await server.create_key(sandbox="mcp-repl-up", session="persistent")
    thread = unique("repl-up")
    async with mcp_client(server, key) as c:
        await c.call_tool("sandbox_execute", {"code": "x = 1", "thread_id": thread})
        uploaded = await c.call_tool("files_upload", {"id": thread, "path": "in.txt", "content": "fresh"})
        after = await c.call_tool(
            "sandbox_execute", {"code": "print(open('/home/baponi/in.txt').read(), x)", "thread_id": thread}
        )
        listed = await c.call_tool("files_list", {"id": thread})
    assert uploaded.is_error is False
    assert after.is_error is False, text_of(after)
    assert after.structured_content["stdout"] == "fresh 1\n"
    assert after.structured_content["session"] == {"state": "kept", "reason": None}
    assert "in.txt" in json.dumps(listed.structured_content)


# --- auth ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "missing API key: send 'Authorization: Bearer <key>'"),
        ("Basic dXNlcjpwdw==", "missing API key: send 'Authorization: Bearer <key>'"),
        ("Bearer sk-local-" + "n" * 40, "invalid or revoked API key"),
    ],
)
def test_401_without_a_valid_key(server: Any, authorization: str | None, message: str) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    for method in ("POST", "GET"):
        r = httpx.request(
            method,
            f"{server.url}/mcp",
            content=b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
            headers={"Content-Type": "application/json", "Accept": ACCEPT, **headers},
        )
        assert r.status_code == 401
        assert r.json() == {"error": "unauthorized", "message": message}
        rest = httpx.post(f"{server.url}{EXECUTE}", json={"code": "1"}, headers=headers)
        assert rest.json() == r.json()


async def test_official_client_fails_with_a_bad_key(server: Any) -> None:
    with pytest.raises(BaseException) as caught:
        async with mcp_client(server, "sk-local-" + "z" * 40) as c:
            await c.list_tools()
    assert any(isinstance(e, MCPError) for e in flat(caught.value)), caught.value


async def test_failed_auth_lockout_applies_to_mcp(server_factory: Any) -> None:
    srv = server_factory(auth_failures_allowed=2)
    valid = await srv.create_key()
    unseen = await srv.create_key()
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    assert rpc(srv, valid, body).status_code == 200
    for _ in range(2):
        assert rpc(srv, "sk-local-" + "w" * 40, body).status_code == 401
    locked = rpc(srv, unseen, body)  # valid, but never authenticated from this address
    assert locked.status_code == 429 and locked.json()["error"] == "rate_limited"
    assert int(locked.headers["Retry-After"]) >= 1
    assert rpc(srv, valid, body).status_code == 200  # it did: it still works
    # one limiter for both surfaces
    rest = httpx.post(f"{srv.url}{EXECUTE}", json={"code": "1"}, headers={"Authorization": f"Bearer {unseen}"})
    assert rest.status_code == 429


# --- raw JSON-RPC: stateless, edge cases --------------------------------------------------------


def test_tools_call_without_initialize(server: Any, api_key: str) -> None:
    r = rpc(
        server,
        api_key,
        {"jsonrpc": "2.0", "id": "a1", "method": "tools/call", "params": {"name": "sandbox_execute", "arguments": {"code": "print(2 + 2)"}}},
    )
    assert r.status_code == 200
    assert "mcp-session-id" not in r.headers
    (message,) = sse_messages(r)
    assert message["id"] == "a1"
    assert message["result"]["structuredContent"]["stdout"] == "4\n"
    assert message["result"]["isError"] is False


def test_progress_notifications_on_the_raw_wire(server: Any, api_key: str) -> None:
    r = rpc(
        server,
        api_key,
        {
            "jsonrpc": "2.0",
            "id": 7,
            "method": "tools/call",
            "params": {"name": "sandbox_execute", "arguments": {"code": "echo one", "language": "bash"}, "_meta": {"progressToken": "tok"}},
        },
    )
    messages = sse_messages(r)
    progress = [m for m in messages if m.get("method") == "notifications/progress"]
    assert progress and all(m["params"]["progressToken"] == "tok" for m in progress)
    assert "".join(m["params"].get("message", "") for m in progress) == "one\n"
    assert messages[-1]["id"] == 7 and "result" in messages[-1]


@pytest.mark.parametrize(("asked", "answered"), [("2025-11-25", "2025-11-25"), ("2025-03-26", "2025-03-26"), ("2024-11-05", "2024-11-05"), ("1999-01-01", "2025-11-25")])
def test_initialize_negotiates_the_version(server: Any, api_key: str, asked: str, answered: str) -> None:
    r = rpc(
        server,
        api_key,
        {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": asked, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}},
    )
    (message,) = sse_messages(r)
    assert message["result"]["protocolVersion"] == answered
    assert message["result"]["serverInfo"]["name"] == "sandboxd"
    assert "tools" in message["result"]["capabilities"]
    assert "mcp-session-id" not in r.headers


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 99}},
        {"jsonrpc": "2.0", "id": 99, "result": {}},
    ],
)
def test_notifications_and_responses_get_202(server: Any, api_key: str, message: dict[str, Any]) -> None:
    r = rpc(server, api_key, message)
    assert r.status_code == 202
    assert r.content == b""


@pytest.mark.parametrize("batch", [[{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}], []])
def test_batches_are_refused(server: Any, api_key: str, batch: list[Any]) -> None:
    r = rpc(server, api_key, batch)
    assert r.status_code == 400
    body = r.json()
    assert body["jsonrpc"] == "2.0" and body["id"] is None
    assert body["error"]["code"] == -32600 and "batch" in body["error"]["message"]


def test_malformed_json_is_a_parse_error(server: Any, api_key: str) -> None:
    r = rpc(server, api_key, b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert r.status_code == 400
    assert r.json()["error"]["code"] == -32700 and r.json()["id"] is None


def test_unknown_tool_and_method_on_the_raw_wire(server: Any, api_key: str) -> None:
    (tool,) = sse_messages(rpc(server, api_key, {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "nope"}}))
    assert tool["id"] == 1 and tool["error"]["code"] == -32602
    (method,) = sse_messages(rpc(server, api_key, {"jsonrpc": "2.0", "id": 2, "method": "no/such"}))
    assert method["id"] == 2 and method["error"]["code"] == -32601


@pytest.mark.parametrize("method", ["GET", "DELETE", "PUT"])
def test_methods_other_than_post_get_405(server: Any, api_key: str, method: str) -> None:
    r = httpx.request(method, f"{server.url}/mcp", headers={"Authorization": f"Bearer {api_key}", "Accept": "text/event-stream"})
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    assert r.json()["error"] == "method_not_allowed"


def test_host_header_protection(server: Any, api_key: str) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    port = server.url.rsplit(":", 1)[1]
    assert rpc(server, api_key, body, headers={"Host": f"localhost:{port}"}).status_code == 200
    assert rpc(server, api_key, body, headers={"Host": "attacker.example"}).status_code == 421
    evil_origin = rpc(server, api_key, body, headers={"Origin": "http://attacker.example"})
    assert evil_origin.status_code == 403


async def test_configured_public_hosts_are_accepted(server_factory: Any) -> None:
    srv = server_factory(public_hosts="sandbox.example.test, api.example.test:8443", auth_failures_allowed=100)
    key = await srv.create_key()
    body = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    for host, status in (
        ("sandbox.example.test", 200),
        ("sandbox.example.test:443", 200),
        ("api.example.test:8443", 200),
        ("api.example.test:9999", 421),
        ("other.example.test", 421),
    ):
        assert rpc(srv, key, body, headers={"Host": host}).status_code == status, host
    ok = rpc(srv, key, body, headers={"Host": "sandbox.example.test", "Origin": "https://sandbox.example.test"})
    assert ok.status_code == 200
