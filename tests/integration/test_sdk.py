"""The official `baponi` SDK 0.5.1 against the real server: results, status, error mapping."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
import uuid
from collections.abc import Iterator
from typing import Any

import baponi
import httpx
import pytest

EXECUTE = "/v1/sandbox/execute"


@pytest.fixture(scope="module")
def sdk(server, api_key: str) -> Iterator[baponi.Baponi]:
    with baponi.Baponi(api_key=api_key, base_url=server.url) as client:
        yield client


def db_rows(server: Any, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{server.data_dir / 'sandboxd.db'}?mode=ro", uri=True) as db:
        return db.execute(query, args).fetchall()


async def wait_running(server: Any, task: asyncio.Task[Any], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not db_rows(server, "SELECT 1 FROM executions WHERE status = 'running'"):
        if task.done():
            raise AssertionError(f"the slow execution ended before it was seen running: {task.result()!r}")
        assert time.monotonic() < deadline, "the slow execution never started running"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("language", "code"),
    [
        ("python", "import sys; print('out'); print('err', file=sys.stderr)"),
        ("node", "console.log('out'); console.error('err')"),
        ("bash", "echo out; echo err >&2"),
    ],
)
def test_execute_each_language(sdk: baponi.Baponi, language: str, code: str) -> None:
    result = sdk.execute(code, language=language)
    assert isinstance(result, baponi.SandboxResult)
    assert result.success is True
    assert result.exit_code == 0
    assert result.stdout == "out\n"
    assert result.stderr == "err\n"
    assert result.error is None


def test_failing_program(sdk: baponi.Baponi) -> None:
    result = sdk.execute("import sys; print('partial'); sys.exit(3)")
    assert result.success is False
    assert result.exit_code == 3
    assert result.stdout == "partial\n"
    assert result.error is None


def test_timeout_is_a_result_not_an_exception(sdk: baponi.Baponi) -> None:
    result = sdk.execute("import time; time.sleep(60)", timeout=1)
    assert result.success is False
    assert result.error == "timeout"
    assert result.exit_code != 0


def test_seccomp_kill_is_a_result_with_its_status(sdk: baponi.Baponi) -> None:
    result = sdk.execute("import ctypes; ctypes.CDLL(None).syscall(321, 0, 0, 0)")  # bpf: killed
    assert result.success is False
    assert result.error == "security_policy_violation"
    assert result.exit_code == 128 + 31


def test_env_vars_and_metadata(server, sdk: baponi.Baponi) -> None:
    marker = uuid.uuid4().hex
    result = sdk.execute(
        "echo \"$APP_MODE-$APP_LEVEL\"",
        language="bash",
        env_vars={"APP_MODE": "test", "APP_LEVEL": "3"},
        metadata={"marker": marker},
        thread_id="sdk-thread-1",
    )
    assert result.success is True
    assert result.stdout == "test-3\n"
    rows = db_rows(
        server, "SELECT client_id, metadata, thread_id, delivery_mode FROM executions WHERE metadata LIKE ?",
        f"%{marker}%",
    )
    assert len(rows) == 1
    client_id, metadata, thread_id, delivery_mode = rows[0]
    assert client_id == "baponi-python/direct"  # the SDK's X-Client-Id is kept
    assert json.loads(metadata) == {"marker": marker}
    assert thread_id == "sdk-thread-1"
    assert delivery_mode == "inline"


def test_unicode_round_trip(sdk: baponi.Baponi) -> None:
    text = "naïve ✓ 中文 🚀"
    result = sdk.execute(f"console.log({json.dumps(text)})", language="node")
    assert result.stdout == text + "\n"


async def test_async_client(server, api_key: str) -> None:
    async with baponi.AsyncBaponi(api_key=api_key, base_url=server.url) as client:
        results = await asyncio.gather(
            client.execute("print(sum(range(10)))"),
            client.execute("console.log(6 * 7)", language="node"),
            client.execute("exit 4", language="bash"),
        )
    assert [r.stdout for r in results] == ["45\n", "42\n", ""]
    assert [r.exit_code for r in results] == [0, 0, 4]
    assert [r.success for r in results] == [True, True, False]


async def test_get_execution(server, client, api_key: str, sdk: baponi.Baponi) -> None:
    r = await client.post(EXECUTE, json={"code": "import sys; print('hi'); sys.exit(5)"})
    trace_id = r.json()["trace_id"]
    status = sdk.get_execution(trace_id)
    assert isinstance(status, baponi.ExecutionStatus)
    assert status.trace_id == trace_id
    assert status.status == "failed"
    assert status.exit_code == 5
    assert status.stdout == "hi\n"
    assert status.stderr == ""
    assert status.delivery_mode == "inline"
    assert status.created_at and status.completed_at
    assert status.duration_ms == r.json()["duration_ms"]
    async with baponi.AsyncBaponi(api_key=api_key, base_url=server.url) as ac:
        again = await ac.get_execution(trace_id)
    assert again == status


async def test_get_execution_of_another_org(server, client) -> None:
    trace_id = (await client.post(EXECUTE, json={"code": "print(1)"})).json()["trace_id"]
    other_key = await server.create_key(org="other")
    with baponi.Baponi(api_key=other_key, base_url=server.url) as other:
        with pytest.raises(baponi.BaponiError) as info:
            other.get_execution(trace_id)
    assert type(info.value) is baponi.BaponiError  # not a subclass: 404 maps to the base error
    assert info.value.status_code == 404
    assert info.value.error_type == "not_found"


def test_get_unknown_execution(sdk: baponi.Baponi) -> None:
    with pytest.raises(baponi.BaponiError) as info:
        sdk.get_execution("trc_doesNotExist123")
    assert info.value.status_code == 404
    assert info.value.error_type == "not_found"


@pytest.mark.parametrize("key", ["sk-local-" + "Q" * 40, "not-even-a-key"])
def test_invalid_key(server, key: str) -> None:
    with baponi.Baponi(api_key=key, base_url=server.url, max_retries=0) as bad:
        with pytest.raises(baponi.AuthenticationError) as info:
            bad.execute("print(1)")
        assert info.value.status_code == 401
        assert info.value.error_type == "unauthorized"
        assert info.value.message
        with pytest.raises(baponi.AuthenticationError):
            bad.get_execution("trc_AAAAAAAAAAAAAAAA")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        # The SDK checks timeout with isinstance(int), so a bool passes it; the server refuses.
        pytest.param({"timeout": True}, "timeout", id="timeout-bool"),
        # The server also reserves its own SANDBOXD_ prefix, which the SDK does not know.
        pytest.param({"env_vars": {"SANDBOXD_DATA_DIR": "/"}}, "env_vars", id="env-sandboxd-prefix"),
    ],
)
def test_server_side_validation_error(sdk: baponi.Baponi, kwargs: dict[str, Any], field: str) -> None:
    with pytest.raises(baponi.APIValidationError) as info:
        sdk.execute("print(1)", **kwargs)
    assert info.value.status_code == 400
    assert info.value.error_type == "validation_error"
    assert field in info.value.message


def test_client_side_validation_never_reaches_the_server(sdk: baponi.Baponi) -> None:
    with pytest.raises(ValueError):
        sdk.execute("print(1)", env_vars={"PATH": "/x"})


@pytest.fixture(scope="module")
def single_slot_server(server_factory) -> Any:
    return server_factory(max_concurrent=1, admission_wait_s=0)  # refused at once, not queued


async def test_rate_limit_error(single_slot_server) -> None:
    srv = single_slot_server
    key = await srv.create_key()
    async with httpx.AsyncClient(base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as raw:
        slow = asyncio.create_task(raw.post(EXECUTE, json={"code": "import time; time.sleep(4); print('slow')"}))
        await wait_running(srv, slow)
        async with baponi.AsyncBaponi(api_key=key, base_url=srv.url, max_retries=0) as client:
            with pytest.raises(baponi.RateLimitError) as info:
                await client.execute("print(1)")
        assert info.value.status_code == 429
        assert info.value.error_type == "rate_limited"
        assert info.value.retry_after is not None and 0 < info.value.retry_after <= 60
        assert (await slow).json()["stdout"] == "slow\n"


async def test_sdk_retries_429_using_retry_after(single_slot_server) -> None:
    """The SDK's own retry loop (sleeping Retry-After) gets through once the slot frees up."""
    srv = single_slot_server
    key = await srv.create_key()
    async with httpx.AsyncClient(base_url=srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as raw:
        slow = asyncio.create_task(raw.post(EXECUTE, json={"code": "import time; time.sleep(2); print('slow')"}))
        await wait_running(srv, slow)
        async with baponi.AsyncBaponi(api_key=key, base_url=srv.url, max_retries=20) as client:
            result = await client.execute("print('after retry')")
        assert result.stdout == "after retry\n"
        assert (await slow).json()["stdout"] == "slow\n"
