"""Execute and executions over HTTP on the real server: results, limits, auth, errors, admission."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import time
import uuid
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest

from sandboxd.app import open_admin

EXECUTE = "/v1/sandbox/execute"
TRACE_ID = re.compile(r"^trc_[A-Za-z0-9_-]{1,20}$")
SPEC_STATUS_FIELDS = {
    "trace_id", "status", "exit_code", "stdout", "stderr", "error", "duration_ms",
    "delivery_mode", "created_at", "completed_at", "webhook_url", "webhook_delivery_status",
}
TERMINAL = {"success", "failed", "timeout", "cancelled", "blocked", "oom", "seccomp", "deepguard"}


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def assert_error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code
    assert isinstance(body["message"], str) and body["message"]
    return body  # type: ignore[no-any-return]


def assert_retry_after(r: httpx.Response, upper: float) -> float:
    value = float(r.headers["Retry-After"])  # numeric seconds, as the SDK parses it
    assert 0 < value <= upper
    return value


async def run(client: httpx.AsyncClient, code: str, **fields: Any) -> dict[str, Any]:
    r = await client.post(EXECUTE, json={"code": code, **fields})
    assert r.status_code == 200, r.text
    result = r.json()
    for name in ("stdout", "stderr"):
        assert isinstance(result[name], str), f"{name} must never be null"
    assert isinstance(result["success"], bool) and isinstance(result["exit_code"], int)
    assert TRACE_ID.match(result["trace_id"]), result["trace_id"]
    return result  # type: ignore[no-any-return]


def running_count(server: Any) -> int:
    with sqlite3.connect(f"file:{server.data_dir / 'sandboxd.db'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM executions WHERE status = 'running'").fetchone()[0])


async def wait_running(server: Any, n: int, task: asyncio.Task[Any], timeout: float = 60) -> None:
    """Until `n` executions of `server` are admitted and running (the slot is taken by then)."""
    deadline = time.monotonic() + timeout
    while running_count(server) < n:
        if task.done():
            raise AssertionError(f"the slow execution ended before it was seen running: {task.result()!r}")
        if time.monotonic() > deadline:
            raise AssertionError("the slow execution never started running")
        await asyncio.sleep(0.05)


# --- results ----------------------------------------------------------------------------------

LANG_PROGRAMS = {
    "python": ("import sys\nprint('to out')\nprint('to err', file=sys.stderr)\n", "import sys; sys.exit(3)"),
    "node": ("console.log('to out'); console.error('to err');", "process.exit(3)"),
    "bash": ("echo 'to out'; echo 'to err' >&2", "exit 3"),
}


@pytest.mark.parametrize("language", sorted(LANG_PROGRAMS))
async def test_success_with_stdout_and_stderr_separated(client, language: str) -> None:
    result = await run(client, LANG_PROGRAMS[language][0], language=language)
    assert result["success"] is True
    assert result["exit_code"] == 0
    assert result["error"] is None
    assert result["stdout"] == "to out\n"
    assert result["stderr"] == "to err\n"
    assert result["output_truncated"] is False
    assert isinstance(result["duration_ms"], int) and result["duration_ms"] >= 0


@pytest.mark.parametrize("language", sorted(LANG_PROGRAMS))
async def test_failed_exit_code(client, language: str) -> None:
    result = await run(client, LANG_PROGRAMS[language][1], language=language)
    assert result["success"] is False
    assert result["exit_code"] == 3
    assert result["error"] is None  # a plain non-zero exit is not a platform error
    status = (await client.get(f"/v1/executions/{result['trace_id']}")).json()
    assert status["status"] == "failed"
    assert status["exit_code"] == 3


async def test_uncaught_exception_goes_to_stderr(client) -> None:
    result = await run(client, "print('before')\n1/0\n")
    assert result["success"] is False
    assert result["exit_code"] == 1
    assert result["stdout"] == "before\n"
    assert "ZeroDivisionError" in result["stderr"]
    assert "ZeroDivisionError" not in result["stdout"]


async def test_no_output_gives_empty_strings_not_null(client) -> None:
    result = await run(client, "pass")
    assert result["stdout"] == "" and result["stderr"] == ""
    status = (await client.get(f"/v1/executions/{result['trace_id']}")).json()
    assert status["stdout"] == "" and status["stderr"] == ""


async def test_trace_ids_are_unique_and_well_formed(client) -> None:
    ids = {(await run(client, "pass"))["trace_id"] for _ in range(5)}
    assert len(ids) == 5
    assert all(TRACE_ID.match(i) for i in ids)


UNICODE = "héllo ✓ 日本語 🎉 Ω"


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", f"print({UNICODE!r})"),
        ("node", f"console.log({UNICODE!r})"),
        ("bash", f"echo '{UNICODE}'"),
    ],
)
async def test_unicode_output(client, language: str, code: str) -> None:
    result = await run(client, code, language=language)
    assert result["success"] is True, result
    assert result["stdout"] == UNICODE + "\n"


async def test_invalid_utf8_output_is_still_a_string(client) -> None:
    result = await run(client, "import sys; sys.stdout.buffer.write(b'a\\xff\\xfeb\\n')")
    assert result["success"] is True
    assert result["stdout"].startswith("a") and result["stdout"].endswith("b\n")


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "import os; print(os.environ['GREETING'], os.environ['OTHER_VAR'])"),
        ("node", "console.log(process.env.GREETING, process.env.OTHER_VAR)"),
        ("bash", 'echo "$GREETING" "$OTHER_VAR"'),
    ],
)
async def test_env_vars_reach_the_code(client, language: str, code: str) -> None:
    env = {"GREETING": "hello wörld", "OTHER_VAR": "x=1;y"}
    result = await run(client, code, language=language, env_vars=env)
    assert result["success"] is True, result
    assert result["stdout"] == "hello wörld x=1;y\n"


async def test_env_vars_do_not_leak_between_executions(client) -> None:
    await run(client, "pass", env_vars={"LEAK_CHECK": "secret"})
    result = await run(client, "import os; print(os.environ.get('LEAK_CHECK', 'absent'))")
    assert result["stdout"] == "absent\n"


@pytest.mark.parametrize("name", ["PATH", "LD_PRELOAD", "PYTHONPATH", "NODE_OPTIONS", "BAPONI_X"])
async def test_reserved_env_name_refused(client, name: str) -> None:
    r = await client.post(EXECUTE, json={"code": "print(1)", "env_vars": {name: "/tmp"}})
    body = assert_error(r, 400, "validation_error")
    assert "reserved" in body["message"]


# --- limits -----------------------------------------------------------------------------------


async def test_timeout(client) -> None:
    t0 = time.monotonic()
    result = await run(client, "import time\nprint('started', flush=True)\ntime.sleep(120)\n", timeout=1)
    assert time.monotonic() - t0 < 60
    assert result["success"] is False
    assert result["error"] == "timeout"
    assert result["exit_code"] != 0
    assert result["stdout"] == "started\n"  # output before the kill is kept
    status = (await client.get(f"/v1/executions/{result['trace_id']}")).json()
    assert status["status"] == "timeout"
    assert status["error"] == "timeout"
    assert status["stdout"] == "started\n" and status["stderr"] == ""


async def test_sandbox_timeout_cap_lowers_requested_timeout(server) -> None:
    key = await server.create_key(sandbox=unique("short"), timeout_cap_s=1)
    async with httpx.AsyncClient(base_url=server.url, headers=auth(key), timeout=120) as c:
        t0 = time.monotonic()
        result = await run(c, "import time; time.sleep(60)", timeout=30)
        elapsed = time.monotonic() - t0
    assert result["success"] is False
    assert result["error"] == "timeout"
    # The 1 s cap applied, not the requested 30 s: generous bound for a noisy machine.
    assert elapsed < 20, elapsed
    assert result["duration_ms"] < 20_000


async def test_memory_limit(server) -> None:
    key = await server.create_key(sandbox=unique("small"), memory_mib=64)
    async with httpx.AsyncClient(base_url=server.url, headers=auth(key), timeout=120) as c:
        result = await run(c, "b = b'x' * (512 * 1024 * 1024)\nprint('allocated', len(b))\n")
        status = (await c.get(f"/v1/executions/{result['trace_id']}")).json()
    assert result["success"] is False
    assert result["error"] == "memory_limit_exceeded"
    assert "allocated" not in result["stdout"]
    assert result["exit_code"] != 0
    assert status["status"] == "oom"


async def test_memory_within_limit_succeeds(client) -> None:
    result = await run(client, "b = b'x' * (64 * 1024 * 1024)\nprint(len(b))\n")
    assert result["success"] is True, result
    assert result["stdout"] == f"{64 * 1024 * 1024}\n"


SECCOMP_KILL = """
import ctypes
print("before", flush=True)
ctypes.CDLL(None).syscall(323, 0)  # userfaultfd: in the filter's kill list
print("after", flush=True)
"""


async def test_seccomp_kill_is_status_seccomp(client) -> None:
    result = await run(client, SECCOMP_KILL)
    assert result["success"] is False
    assert result["error"] == "security_policy_violation"
    assert result["exit_code"] == 128 + 31  # SIGSYS
    assert result["stdout"] == "before\n"  # output before the kill is kept
    status = (await client.get(f"/v1/executions/{result['trace_id']}")).json()
    assert status["status"] == "seccomp"
    assert status["error"] == "security_policy_violation"


@pytest.fixture(scope="module")
def capped_server(server_factory) -> Any:
    return server_factory(output_limit_bytes=4096)


@pytest.fixture(scope="module")
async def capped_client(capped_server) -> Any:
    key = await capped_server.create_key()
    async with httpx.AsyncClient(base_url=capped_server.url, headers=auth(key), timeout=180) as c:
        yield c


async def test_output_flood_is_truncated_and_does_not_hang(capped_client) -> None:
    code = (
        "import sys\n"
        "chunk = 'x' * 65536\n"
        "for _ in range(800):\n"  # ~52 MB on each stream
        "    sys.stdout.write(chunk)\n"
        "    sys.stderr.write(chunk)\n"
        "sys.stdout.flush()\n"
        "print('done', file=sys.stderr)\n"
    )
    t0 = time.monotonic()
    result = await run(capped_client, code, timeout=60)
    assert time.monotonic() - t0 < 90
    assert result["output_truncated"] is True
    assert 0 < len(result["stdout"].encode()) <= 4096
    assert 0 < len(result["stderr"].encode()) <= 4096
    assert set(result["stdout"]) == {"x"}
    assert result["error"] != "timeout"  # the pipes were drained; the writer was never stuck
    status = (await capped_client.get(f"/v1/executions/{result['trace_id']}")).json()
    assert status["output_truncated"] is True
    assert len(status["stdout"].encode()) <= 4096


async def test_output_exactly_at_cap_is_not_truncated(capped_client) -> None:
    result = await run(capped_client, "import sys; sys.stdout.write('y' * 4096)")
    assert result["output_truncated"] is False
    assert result["stdout"] == "y" * 4096
    over = await run(capped_client, "import sys; sys.stdout.write('y' * 4097)")
    assert over["output_truncated"] is True
    assert over["stdout"] == "y" * 4096


# --- executions -------------------------------------------------------------------------------


def parse_time(value: str) -> datetime:
    assert re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]00:00)$", value), value
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert parsed.tzinfo is not None and parsed.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    return parsed


async def test_get_execution(server, client) -> None:
    before = datetime.now(timezone.utc)
    metadata = {"agent": "tester", "run.id": "42"}
    r = await client.post(
        EXECUTE,
        json={"code": "import sys; print('stored'); print('e', file=sys.stderr); sys.exit(2)", "metadata": metadata},
        headers={"X-Client-Id": "integration-tests/1.0"},
    )
    assert r.status_code == 200
    result = r.json()
    trace_id = result["trace_id"]

    g = await client.get(f"/v1/executions/{trace_id}")
    assert g.status_code == 200
    status = g.json()
    assert SPEC_STATUS_FIELDS <= set(status), SPEC_STATUS_FIELDS - set(status)
    assert status["trace_id"] == trace_id
    assert status["status"] == "failed" and status["status"] in TERMINAL
    assert status["exit_code"] == 2
    assert status["stdout"] == "stored\n"
    assert status["stderr"] == "e\n"
    assert status["error"] is None
    assert status["delivery_mode"] == "inline"
    assert status["duration_ms"] == result["duration_ms"]
    assert status["webhook_url"] is None
    assert status["webhook_delivery_status"] is None
    assert status["metadata"] == metadata
    created = parse_time(status["created_at"])
    completed = parse_time(status["completed_at"])
    after = datetime.now(timezone.utc)
    slack = 5  # seconds of clock granularity; the server runs on this machine
    assert (before - created).total_seconds() < slack and (created - after).total_seconds() < slack
    assert created <= completed
    assert (completed - after).total_seconds() < slack

    admin = await open_admin(server.settings)
    try:
        record = await admin.store.executions.get(trace_id)
    finally:
        await admin.close()
    assert record is not None
    assert record.client_id == "integration-tests/1.0"
    assert record.metadata == metadata


async def test_get_execution_of_another_org_is_not_found(server, client) -> None:
    trace_id = (await run(client, "print('mine')"))["trace_id"]
    other_key = await server.create_key(org="other")
    async with httpx.AsyncClient(base_url=server.url, headers=auth(other_key), timeout=60) as other:
        body = assert_error(await other.get(f"/v1/executions/{trace_id}"), 404, "not_found")
        assert "mine" not in body["message"]
        # and the other org's own executions remain its own
        theirs = (await run(other, "print('theirs')"))["trace_id"]
    assert_error(await client.get(f"/v1/executions/{theirs}"), 404, "not_found")
    assert (await client.get(f"/v1/executions/{trace_id}")).status_code == 200


@pytest.mark.parametrize(
    "trace_id",
    [
        "trc_AAAAAAAAAAAAAAAA",  # well-formed, never issued
        "trc_" + "a" * 20,
        "nottrace",
        "trc_",
        "trc_" + "a" * 21,
        "trc_a.b",
        "TRC_abc",
        "trc_%20x",
    ],
)
async def test_unknown_or_malformed_trace_id_is_not_found(client, trace_id: str) -> None:
    assert_error(await client.get(f"/v1/executions/{trace_id}"), 404, "not_found")


# --- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="missing"),
        pytest.param({"Authorization": "Bearer"}, id="bearer-without-key"),
        pytest.param({"Authorization": "sk-local-" + "a" * 40}, id="no-scheme"),
        pytest.param({"Authorization": "Basic dXNlcjpwYXNz"}, id="basic"),
        pytest.param({"Authorization": "Bearer not-a-key"}, id="malformed"),
        pytest.param({"Authorization": "Bearer sk-local-short"}, id="malformed-short"),
        pytest.param({"Authorization": "Bearer sk-local-" + "A1b2C3d4E5" * 4}, id="unknown"),
        pytest.param({"Authorization": "Bearer sk-eu-" + "Z" * 40}, id="unknown-region"),
    ],
)
async def test_unauthorized(server, headers: dict[str, str]) -> None:
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as c:
        assert_error(await c.post(EXECUTE, json={"code": "print(1)"}), 401, "unauthorized")
        assert_error(await c.get("/v1/executions/trc_AAAAAAAAAAAAAAAA"), 401, "unauthorized")


async def test_auth_is_checked_before_the_body(server) -> None:
    """An unauthenticated caller learns nothing about validation: 401 before 400."""
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
        r = await c.post(EXECUTE, json={"code": "", "timeout": 0})
        assert_error(r, 401, "unauthorized")
        r = await c.post(EXECUTE, json={"code": "print(1)", "env_vars": {"PATH": "/x"}, "bogus": 1})
        assert_error(r, 401, "unauthorized")


async def test_key_with_one_character_changed_is_refused(server, api_key: str) -> None:
    last = api_key[-1]
    tampered = api_key[:-1] + ("a" if last != "a" else "b")
    async with httpx.AsyncClient(base_url=server.url, headers=auth(tampered), timeout=60) as c:
        assert_error(await c.post(EXECUTE, json={"code": "print(1)"}), 401, "unauthorized")


async def test_revoked_key(server) -> None:
    created = server.cli("keys", "create", "--name", "to-revoke")
    assert created.returncode == 0, created.stderr
    secret = created.stdout.strip()
    key_id = re.search(r"key id (\S+)", created.stderr).group(1)  # type: ignore[union-attr]
    async with httpx.AsyncClient(base_url=server.url, headers=auth(secret), timeout=60) as c:
        assert (await c.post(EXECUTE, json={"code": "print(1)"})).status_code == 200
        revoked = server.cli("keys", "revoke", key_id)
        assert revoked.returncode == 0, revoked.stderr
        assert_error(await c.post(EXECUTE, json={"code": "print(1)"}), 401, "unauthorized")
        assert_error(await c.get("/v1/executions/trc_AAAAAAAAAAAAAAAA"), 401, "unauthorized")
    listed = server.cli("keys", "list")
    line = next(l for l in listed.stdout.splitlines() if l.startswith(key_id))
    assert "revoked" in line


# --- HTTP errors ------------------------------------------------------------------------------


async def test_unknown_route(client) -> None:
    assert_error(await client.get("/v1/nope"), 404, "not_found")
    assert_error(await client.post("/v1/sandbox/nope", json={}), 404, "not_found")


async def test_wrong_method(client) -> None:
    r = await client.get(EXECUTE)
    assert_error(r, 405, "method_not_allowed")
    assert "POST" in r.headers.get("allow", "")
    assert_error(await client.delete("/v1/executions/trc_AAAAAAAAAAAAAAAA"), 405, "method_not_allowed")


@pytest.fixture(scope="module")
def small_body_server(server_factory) -> Any:
    return server_factory(max_body_bytes=2048)


async def test_body_over_limit(small_body_server) -> None:
    key = await small_body_server.create_key()
    async with httpx.AsyncClient(base_url=small_body_server.url, headers=auth(key), timeout=60) as c:
        ok = await c.post(EXECUTE, json={"code": "print('small')"})
        assert ok.status_code == 200 and ok.json()["stdout"] == "small\n"
        big = {"code": "print('big')  # " + "x" * 4096}
        r = await c.post(EXECUTE, json=big)
        body = assert_error(r, 413, "payload_too_large")
        assert "2048" in body["message"]

        async def chunks():  # no Content-Length: the limit applies while the body streams in
            yield b'{"code": "print(1)  # '
            for _ in range(8):
                yield b"x" * 1024
            yield b'"}'

        r = await c.post(EXECUTE, content=chunks(), headers={"Content-Type": "application/json"})
        assert_error(r, 413, "payload_too_large")


async def test_failed_auth_lockout(server_factory) -> None:
    srv = server_factory()  # default settings: 3 failures per window lock the address out
    valid = await srv.create_key()
    unseen = await srv.create_key()
    async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
        assert (await c.post(EXECUTE, json={"code": "print(1)"}, headers=auth(valid))).status_code == 200
        for i in range(3):
            bad = auth("sk-local-" + f"{i}BadKey0000".ljust(40, "x"))
            assert_error(await c.post(EXECUTE, json={"code": "print(1)"}, headers=bad), 401, "unauthorized")
        r = await c.post(EXECUTE, json={"code": "print(1)"}, headers=auth("sk-local-" + "y" * 40))
        assert_error(r, 429, "rate_limited")
        assert_retry_after(r, 61)
        # while locked out, a valid key that never authenticated from here is refused like a
        # guess, on every endpoint; the key that did still works (tests/integration/test_edge.py)
        r = await c.post(EXECUTE, json={"code": "print(1)"}, headers=auth(unseen))
        assert_error(r, 429, "rate_limited")
        assert_retry_after(r, 61)
        r = await c.get("/v1/executions/trc_AAAAAAAAAAAAAAAA", headers=auth(unseen))
        assert_error(r, 429, "rate_limited")
        r = await c.post(EXECUTE, json={"code": "print(1)"}, headers=auth(valid))
        assert r.status_code == 200 and r.json()["stdout"] == "1\n"
        # health is not behind auth
        assert (await c.get("/health")).status_code == 200


async def test_lockout_expires(server_factory) -> None:
    srv = server_factory(auth_failures_allowed=2, auth_lockout_s=1)
    valid = await srv.create_key()
    async with httpx.AsyncClient(base_url=srv.url, timeout=60) as c:
        for _ in range(2):
            assert (await c.get("/v1/executions/trc_AAAAAAAAAAAAAAAA")).status_code == 401
        r = await c.post(EXECUTE, json={"code": "print(1)"}, headers=auth(valid))
        assert_error(r, 429, "rate_limited")
        assert_retry_after(r, 2)
        deadline = time.monotonic() + 30
        while r.status_code == 429 and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            r = await c.post(EXECUTE, json={"code": "print(1)"}, headers=auth(valid))
        assert r.status_code == 200 and r.json()["stdout"] == "1\n"


# --- admission --------------------------------------------------------------------------------

SLOW = "import time; time.sleep(4); print('slow done')"


@pytest.fixture(scope="module")
def single_slot_server(server_factory) -> Any:
    return server_factory(max_concurrent=1, admission_wait_s=0)  # refused at once, not queued


async def test_global_concurrency_cap(single_slot_server) -> None:
    srv = single_slot_server
    key = await srv.create_key()
    other_key = await srv.create_key(org="other")
    async with httpx.AsyncClient(base_url=srv.url, headers=auth(key), timeout=120) as c:
        slow = asyncio.create_task(c.post(EXECUTE, json={"code": SLOW}))
        await wait_running(srv, 1, slow)
        r = await c.post(EXECUTE, json={"code": "print(2)"})
        assert_error(r, 429, "rate_limited")
        assert_retry_after(r, 60)
        # the global cap holds for every organization
        r = await c.post(EXECUTE, json={"code": "print(2)"}, headers=auth(other_key))
        assert_error(r, 429, "rate_limited")
        first = await slow
        assert first.status_code == 200 and first.json()["stdout"] == "slow done\n"
        third = await c.post(EXECUTE, json={"code": "print(3)"})
        assert third.status_code == 200 and third.json()["stdout"] == "3\n"
    assert running_count(srv) == 0


async def test_per_org_concurrency_cap(server_factory) -> None:
    srv = server_factory(max_concurrent=4, max_concurrent_per_org=1)
    key = await srv.create_key()
    other_key = await srv.create_key(org="other")
    async with httpx.AsyncClient(base_url=srv.url, headers=auth(key), timeout=120) as c:
        slow = asyncio.create_task(c.post(EXECUTE, json={"code": SLOW}))
        await wait_running(srv, 1, slow)
        r = await c.post(EXECUTE, json={"code": "print(2)"})
        body = assert_error(r, 429, "rate_limited")
        assert "organization" in body["message"]
        assert_retry_after(r, 60)
        r = await c.post(EXECUTE, json={"code": "print('other org')"}, headers=auth(other_key))
        assert r.status_code == 200 and r.json()["stdout"] == "other org\n"
        first = await slow
        assert first.status_code == 200 and first.json()["stdout"] == "slow done\n"
        again = await c.post(EXECUTE, json={"code": "print(3)"})
        assert again.status_code == 200 and again.json()["stdout"] == "3\n"


async def test_running_execution_status(server, client) -> None:
    """While it runs, GET shows `running` with null results (spec §4.1), then the final result."""
    slow = asyncio.create_task(client.post(EXECUTE, json={"code": "import time; time.sleep(4); print('end')"}))
    trace_id = None
    deadline = time.monotonic() + 60
    while trace_id is None:
        assert not slow.done(), slow.result()
        assert time.monotonic() < deadline
        with sqlite3.connect(f"file:{server.data_dir / 'sandboxd.db'}?mode=ro", uri=True) as db:
            row = db.execute(
                "SELECT trace_id FROM executions WHERE status = 'running' AND key_id IS NOT NULL "
                "ORDER BY created_at DESC LIMIT 1"
            ).fetchone()
        trace_id = row[0] if row else None
        if trace_id is None:
            await asyncio.sleep(0.05)
    status = (await client.get(f"/v1/executions/{trace_id}")).json()
    assert status["status"] == "running"
    assert status["exit_code"] is None and status["stdout"] is None and status["stderr"] is None
    assert status["completed_at"] is None
    parse_time(status["created_at"])
    done = await slow
    assert done.json()["trace_id"] == trace_id
    final = (await client.get(f"/v1/executions/{trace_id}")).json()
    assert final["status"] == "success" and final["stdout"] == "end\n"
    assert final["completed_at"] is not None


def execution_count(server: Any) -> int:
    with sqlite3.connect(f"file:{server.data_dir / 'sandboxd.db'}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT count(*) FROM executions").fetchone()[0])


async def test_refused_execution_leaves_no_record(single_slot_server) -> None:
    """A 429 is refused before anything is recorded or run."""
    srv = single_slot_server
    key = await srv.create_key()
    before = execution_count(srv)
    async with httpx.AsyncClient(base_url=srv.url, headers=auth(key), timeout=120) as c:
        slow = asyncio.create_task(c.post(EXECUTE, json={"code": SLOW}))
        await wait_running(srv, 1, slow)
        for _ in range(3):
            assert (await c.post(EXECUTE, json={"code": "print(2)"})).status_code == 429
        assert (await slow).status_code == 200
    assert execution_count(srv) == before + 1


# --- service endpoints ------------------------------------------------------------------------


async def test_health_and_ready(server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
        health = await c.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
        ready = await c.get("/ready")
        assert ready.status_code == 200
        body = ready.json()
        assert body["status"] == "ready"
        assert {"python", "node", "bash"} <= set(body["languages"])


async def test_openapi_and_docs(server) -> None:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as c:
        spec = await c.get("/openapi.json")
        assert spec.status_code == 200
        paths = spec.json()["paths"]
        assert "post" in paths["/v1/sandbox/execute"]
        assert "get" in paths["/v1/executions/{trace_id}"]
        docs = await c.get("/docs")
        assert docs.status_code == 200
        assert docs.headers["content-type"].startswith("text/html")
        assert "openapi.json" in docs.text
