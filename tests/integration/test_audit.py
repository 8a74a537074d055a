"""The audit log through a real server: executions by the official SDK (inline, streaming,
webhook/async, the async client) and files-API transfers leave rows with their facts; the code
only when the organization keeps it; `sandboxd audit verify` names a changed or removed row
(edited with sqlite3 in the live database) and passes again once it is put back; retention
keeps the chain verifiable; exports round-trip; two processes appending at once keep a chain."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import baponi
import httpx
import pytest

from sandboxd.app import open_admin
from sandboxd.service.audit import parse_csv
from sandboxd.service.webhooks import TERMINAL
from sandboxd.store import utcnow

#: All of this module's tests share one server of their own: they edit its database.
SERVER_SETTINGS = {"auth_failures_allowed": 100_000}


@pytest.fixture(scope="module")
def audited(server_factory: Any) -> Any:
    return server_factory(**SERVER_SETTINGS)


@pytest.fixture(scope="module")
def key(audited: Any) -> str:
    return asyncio.run(audited.create_key())


@pytest.fixture(scope="module")
def sdk(audited: Any, key: str) -> Iterator[baponi.Baponi]:
    with baponi.Baponi(api_key=key, base_url=audited.url) as client:
        yield client


def cli(server: Any, *args: str) -> subprocess.CompletedProcess[str]:
    return server.cli("audit", *args)


def search(server: Any, *args: str) -> list[dict[str, Any]]:
    done = cli(server, "search", "--limit", "200", *args)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


def execution_row(server: Any, *filters: str, timeout: float = 30) -> dict[str, Any]:
    """The execution's audit row (written with its final record; a stream's client may read
    the result event a moment before that transaction commits)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = search(server, *filters, "--kind", "execution")
        if rows:
            assert len(rows) == 1, rows
            return rows[0]
        assert time.monotonic() < deadline, f"no audit row for {filters}"
        time.sleep(0.2)


def sha256(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


def db(server: Any) -> sqlite3.Connection:
    return sqlite3.connect(server.data_dir / "sandboxd.db", timeout=30)


def key_prefix(server: Any, key: str) -> str:
    with db(server) as conn:
        prefixes = [p for (p,) in conn.execute("SELECT display_prefix FROM api_keys") if key.startswith(p)]
    assert prefixes, "the key's display prefix"
    return prefixes[0]


def test_inline_streaming_and_webhook_executions_are_audited(audited: Any, sdk: baponi.Baponi, key: str) -> None:
    tag = uuid.uuid4().hex[:8]
    inline_code = f"print('inline {tag}')"
    result = sdk.execute(inline_code, metadata={"case": tag, "mode": "inline"})
    assert result.success
    with sdk.execute_stream(f"print('stream {tag}')", metadata={"case": tag, "mode": "streaming"}) as stream:
        for _ in stream:
            pass
        assert stream.get_final_result().success
    handle = sdk.execute_webhook(f"import sys; print('async {tag}'); sys.exit(3)", metadata={"case": tag, "mode": "webhook"})
    deadline = time.monotonic() + 60
    while handle.poll().status not in TERMINAL:
        assert time.monotonic() < deadline
        time.sleep(0.2)

    row = execution_row(audited, "--metadata", f"case={tag}", "--metadata", "mode=inline")
    d = row["detail"]
    assert row["kind"] == "execution" and row["action"] == "execution.finish" and row["actor_kind"] == "key"
    assert d["code_sha256"] == sha256(inline_code) and "code" not in d
    assert (d["status"], d["exit_code"], d["delivery_mode"]) == ("success", 0, "inline")
    assert d["client_ip"] == "127.0.0.1" and row["ip"] == "127.0.0.1"
    assert d["client_id"].startswith("baponi-python")
    assert d["key_id"] == row["key_id"] and d["key_prefix"] == key_prefix(audited, key) == row["actor_name"]
    assert d["metadata"] == {"case": tag, "mode": "inline"}
    assert d["created_at"] <= d["started_at"] <= d["completed_at"] and d["duration_ms"] > 0
    assert d["network"] == [] and d["mounts"] == [] and d["connectors"] == []

    s = execution_row(audited, "--metadata", f"case={tag}", "--metadata", "mode=streaming")["detail"]
    assert (s["delivery_mode"], s["status"], s["code_sha256"]) == ("streaming", "success", sha256(f"print('stream {tag}')"))
    w = execution_row(audited, "--trace-id", handle.trace_id)
    assert (w["detail"]["delivery_mode"], w["detail"]["status"], w["detail"]["exit_code"]) == ("webhook", "failed", 3)
    assert w["detail"]["metadata"]["mode"] == "webhook" and w["trace_id"] == w["target"] == handle.trace_id

    # Search by metadata finds the three, and only them.
    found = {r["trace_id"] for r in search(audited, "--metadata", f"case={tag}")}
    assert len(found) == 3 and handle.trace_id in found and row["trace_id"] in found


async def test_async_client_and_the_org_setting_for_the_code(audited: Any, key: str) -> None:
    code = f"print('kept {uuid.uuid4().hex}')"
    done = cli(audited, "code", "default", "on")
    assert done.returncode == 0, done.stderr
    try:
        async with baponi.AsyncBaponi(api_key=key, base_url=audited.url) as client:
            # The server's cached key learns of the change within its refresh (the CLI bumps the epoch).
            deadline = time.monotonic() + 30
            while True:
                tag = uuid.uuid4().hex
                await client.execute(code, metadata={"case": tag})
                detail = (await asyncio.to_thread(execution_row, audited, "--metadata", f"case={tag}"))["detail"]
                if "code" in detail or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.5)
        assert detail["code"] == code and detail["code_sha256"] == sha256(code)
        [changed] = search(audited, "--action", "org.audit_code", "--newest-first", "--limit", "1")[:1] or [None]
        assert changed is not None and changed["detail"]["after"] == {"audit_code": True}
        assert changed["actor_kind"] == "cli"
    finally:
        assert cli(audited, "code", "default", "off").returncode == 0


def test_files_transfers_are_audited(audited: Any, sdk: baponi.Baponi, key: str) -> None:
    thread = f"audit-{uuid.uuid4().hex[:8]}"
    data = b"hello audit\n"
    with httpx.Client(timeout=60) as blob:
        signed = sdk.upload_url(path="notes/a.txt", content_length=len(data), id=thread, content_type="text/plain")
        put = blob.put(signed.url, content=data, headers={h.name: h.value for h in signed.headers})
        assert put.status_code == 200, put.text
        got = blob.get(sdk.download_url(path="notes/a.txt", id=thread).url)
        assert got.content == data
    with httpx.Client(base_url=audited.url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as http:
        assert http.request("DELETE", "/v1/files", json={"id": thread, "path": "notes/a.txt"}).status_code == 204
    rows = [r for r in search(audited, "--kind", "files") if r["detail"]["id"] == thread]
    assert [r["action"] for r in rows] == ["files.upload", "files.download", "files.delete"]
    assert [r["detail"]["bytes"] for r in rows] == [len(data), len(data), None]
    assert all(r["detail"]["path"] == "notes/a.txt" and r["ip"] == "127.0.0.1" for r in rows)
    assert rows[0]["key_id"] and rows[0]["actor_name"] == key_prefix(audited, key)


async def test_mcp_executions_and_transfers_are_audited(audited: Any, key: str) -> None:
    """The official MCP client: sandbox_execute, files_upload and files_download (inline)."""
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    tag, thread = uuid.uuid4().hex[:8], f"mcp-{uuid.uuid4().hex[:8]}"
    code = f"print('mcp {tag}')"
    http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=httpx2.Timeout(30, read=300))
    async with http, Client(streamable_http_client(f"{audited.url}/mcp", http_client=http), mode="legacy") as c:
        ran = await c.call_tool("sandbox_execute", {"code": code, "metadata": {"case": tag}})
        put = await c.call_tool("files_upload", {"id": thread, "path": "in.txt", "content": "abc\n"})
        got = await c.call_tool("files_download", {"id": thread, "path": "in.txt"})
    assert not ran.is_error and not put.is_error and not got.is_error
    row = await asyncio.to_thread(execution_row, audited, "--metadata", f"case={tag}")
    d = row["detail"]
    assert (d["delivery_mode"], d["status"], d["code_sha256"]) == ("mcp", "success", sha256(code))
    assert d["client_ip"] == "127.0.0.1" and d["key_prefix"] == key_prefix(audited, key)
    files = [r for r in await asyncio.to_thread(search, audited, "--kind", "files") if r["detail"]["id"] == thread]
    assert [(r["action"], r["detail"]["bytes"], r["ip"]) for r in files] == [
        ("files.upload", 4, "127.0.0.1"), ("files.download", 4, "127.0.0.1"),
    ]


def test_exports_round_trip(audited: Any, tmp_path: Path) -> None:
    expected = search(audited)
    assert expected
    jsonl, table = tmp_path / "audit.jsonl", tmp_path / "audit.csv"
    assert cli(audited, "export", "--format", "jsonl", "--output", str(jsonl)).returncode == 0
    assert cli(audited, "export", "--format", "csv", "--output", str(table)).returncode == 0
    from_jsonl = [json.loads(line) for line in jsonl.read_text().splitlines()]
    from_csv = parse_csv(table.read_text())
    # Rows appended between the calls (none expected) would only add to the end.
    assert from_jsonl[: len(expected)] == expected and from_csv[: len(expected)] == expected
    assert next(csv.reader(io.StringIO(table.read_text())))[:3] == ["org_id", "seq", "at"]
    stdout = cli(audited, "export", "--format", "jsonl", "--kind", "files")
    assert stdout.returncode == 0 and all(json.loads(line)["kind"] == "files" for line in stdout.stdout.splitlines())


def _verify(server: Any) -> subprocess.CompletedProcess[str]:
    return cli(server, "verify")


def _org_id(server: Any, name: str = "default") -> str:
    with db(server) as conn:
        return str(conn.execute("SELECT id FROM orgs WHERE name = ?", (name,)).fetchone()[0])


def test_an_edited_row_fails_verify_at_that_row(audited: Any, sdk: baponi.Baponi) -> None:
    for i in range(3):
        assert sdk.execute(f"print({i})").success
    assert _verify(audited).returncode == 0, _verify(audited).stderr
    org = _org_id(audited)
    with db(audited) as conn:
        seq, target = conn.execute(
            "SELECT seq, target FROM audit_log WHERE org_id = ? ORDER BY seq DESC LIMIT 1 OFFSET 1", (org,)
        ).fetchone()
        conn.execute("UPDATE audit_log SET target = 'trc_forged' WHERE org_id = ? AND seq = ?", (org, seq))
    done = _verify(audited)
    assert done.returncode == 1 and f"seq {seq}: the row was changed" in done.stderr, done.stderr
    with db(audited) as conn:  # put back: the chain holds again
        conn.execute("UPDATE audit_log SET target = ? WHERE org_id = ? AND seq = ?", (target, org, seq))
    assert _verify(audited).returncode == 0


def test_a_deleted_middle_row_fails_verify_at_that_row(audited: Any, sdk: baponi.Baponi) -> None:
    assert sdk.execute("print('one more')").success
    org = _org_id(audited)
    with db(audited) as conn:
        conn.row_factory = sqlite3.Row
        (count,) = conn.execute("SELECT count(*) FROM audit_log WHERE org_id = ?", (org,)).fetchone()
        assert count >= 3
        row = conn.execute(
            "SELECT * FROM audit_log WHERE org_id = ? ORDER BY seq DESC LIMIT 1 OFFSET 1", (org,)
        ).fetchone()
        saved = dict(row)
        conn.execute("DELETE FROM audit_log WHERE org_id = ? AND seq = ?", (org, saved["seq"]))
    done = _verify(audited)
    assert done.returncode == 1 and f"seq {saved['seq']}: row {saved['seq']} is missing" in done.stderr, done.stderr
    with db(audited) as conn:
        names = ", ".join(saved)
        conn.execute(f"INSERT INTO audit_log ({names}) VALUES ({', '.join('?' for _ in saved)})", list(saved.values()))
    assert _verify(audited).returncode == 0


def test_a_cut_end_shows_against_heads_saved_earlier(audited: Any, sdk: baponi.Baponi, tmp_path: Path) -> None:
    assert sdk.execute("print('before the save')").success
    saved = tmp_path / "heads.jsonl"
    done = cli(audited, "heads")
    assert done.returncode == 0 and done.stdout.strip(), done.stderr
    saved.write_text(done.stdout)
    org = _org_id(audited)
    with db(audited) as conn:
        conn.row_factory = sqlite3.Row
        last = dict(conn.execute("SELECT * FROM audit_log WHERE org_id = ? ORDER BY seq DESC LIMIT 1", (org,)).fetchone())
        (prev_hash,) = conn.execute("SELECT hash FROM audit_log WHERE org_id = ? AND seq = ?", (org, last["seq"] - 1)).fetchone()
        conn.execute("DELETE FROM audit_log WHERE org_id = ? AND seq = ?", (org, last["seq"]))
        conn.execute("UPDATE audit_heads SET seq = ?, hash = ? WHERE org_id = ?", (last["seq"] - 1, prev_hash, org))
    assert _verify(audited).returncode == 0  # the chain alone cannot show it (docs/audit.md)
    done = cli(audited, "verify", "--heads", str(saved))
    assert done.returncode == 1 and f"seq {last['seq']}: the chain ends at seq {last['seq'] - 1}" in done.stderr, done.stderr
    with db(audited) as conn:  # put back
        conn.execute(f"INSERT INTO audit_log ({', '.join(last)}) VALUES ({', '.join('?' for _ in last)})", list(last.values()))
        conn.execute("UPDATE audit_heads SET seq = ?, hash = ? WHERE org_id = ?", (last["seq"], last["hash"], org))
    assert cli(audited, "verify", "--heads", str(saved)).returncode == 0


def test_two_processes_appending_at_once_keep_one_chain(audited: Any, sdk: baponi.Baponi) -> None:
    script = (
        "import asyncio, sys\n"
        "from pathlib import Path\n"
        "from sandboxd.app import open_admin\n"
        "from sandboxd.config import Settings\n"
        "from sandboxd.service.roles import Actor\n"
        "async def go():\n"
        "    admin = await open_admin(Settings(data_dir=Path(sys.argv[1])))\n"
        "    org = await admin.tenancy.org('default')\n"
        "    for i in range(40):\n"
        "        await admin.audit.admin(Actor('cli', 'root', 'cli'), 'test.append', org_id=org.id, target=f'{sys.argv[2]}-{i}')\n"
        "    await admin.close()\n"
        "asyncio.run(go())\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(audited.data_dir), name]) for name in ("a", "b")]
    for i in range(3):  # the server appends too, meanwhile
        assert sdk.execute(f"print({i})").success
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    assert len(search(audited, "--action", "test.append")) == 80
    done = _verify(audited)
    assert done.returncode == 0, done.stderr


def test_retention_sweep_keeps_the_chain_verifiable(audited: Any) -> None:
    async def sweep() -> int:
        admin = await open_admin(audited.settings)
        try:
            # Everything up to now is past a retention of 1 day, a day from now.
            return await admin.audit.sweep(lambda org: 1 if org.name == "default" else None,
                                           now=utcnow() + timedelta(days=1, seconds=1))
        finally:
            await admin.close()

    before = len(search(audited, "--org", "default"))
    deleted = asyncio.run(sweep())
    assert deleted == before > 0
    rows = search(audited, "--org", "default")
    assert [r["action"] for r in rows] == ["audit.prune"] and rows[0]["detail"]["after"]["deleted"] == before
    done = _verify(audited)
    assert done.returncode == 0, done.stderr
    # A prefix removed by hand after that is not retention's.
    with db(audited) as conn:
        conn.execute("DELETE FROM audit_log WHERE org_id = ?", (_org_id(audited),))
    done = _verify(audited)
    assert done.returncode == 1 and "missing" in done.stderr, done.stderr
