"""Persistent sessions end to end: a thread's interpreter kept between its executions.

Real `sandboxd serve` processes on loopback, real bubblewrap sandboxes, real btrfs thread homes;
the official `baponi` SDK where a result's spec fields are enough, plain HTTP where sandboxd's
additions (`session`, `outputs`) are read. Every way a session ends is tried, and the next
result must say so and work.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import baponi
import httpx
import pytest
from _servers import EXECUTE, HTTP_TIMEOUT, Pool, db, pool, processes_of
from conftest import Server

__all__ = ["pool"]  # a fixture, imported so pytest finds it here

NDJSON = "application/x-ndjson"


@pytest.fixture(scope="module")
def server(pool: Pool) -> Server:
    return pool.start(auth_failures_allowed=100_000)


@pytest.fixture(scope="module")
async def key(server: Server) -> str:
    return await server.create_key(sandbox="repl", session="persistent", memory_mib=256, timeout_cap_s=60)


@pytest.fixture(scope="module")
def sdk(server: Server, key: str) -> Iterator[baponi.Baponi]:
    with baponi.Baponi(api_key=key, base_url=server.url, timeout=HTTP_TIMEOUT) as client:
        yield client


def thread() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def run(server: Server, key: str, code: str, thread_id: str | None, *, language: str = "python",
        timeout: int = 30, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"code": code, "language": language, "timeout": timeout, **extra}
    if thread_id is not None:
        body["thread_id"] = thread_id
    response = httpx.post(
        server.url + EXECUTE, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=HTTP_TIMEOUT
    )
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def session_of(result: dict[str, Any]) -> tuple[str, str | None]:
    assert result["session"] is not None, result
    return result["session"]["state"], result["session"]["reason"]


# --- state is kept --------------------------------------------------------------------------


def test_python_state_is_kept_between_executions(server: Server, key: str, sdk: baponi.Baponi) -> None:
    t = thread()
    first = run(server, key, "x = 41\nimport os\nos.chdir('/tmp')", t)
    assert first["success"], first
    assert session_of(first) == ("new", None)
    second = sdk.execute("print(x + 1)\nprint(os.getcwd())", thread_id=t)
    assert second.success, second
    assert second.stdout == "42\n/tmp\n"
    third = run(server, key, "x", t)
    assert session_of(third) == ("kept", None)
    assert third["stdout"] == "41\n"  # the last expression's value, as a notebook shows it


def test_node_and_bash_keep_their_state(server: Server, key: str) -> None:
    t = thread()
    assert run(server, key, "let x = 41; function twice(n) { return 2 * n }", t, language="node")["success"]
    node = run(server, key, "console.log(x + 1, twice(x))", t, language="node")
    assert node["stdout"] == "42 82\n", node
    assert session_of(node) == ("kept", None)
    assert run(server, key, "x=41; greet() { echo hi $1; }; cd /tmp", t, language="bash")["success"]
    bash = run(server, key, "echo $((x + 1)); greet you; pwd", t, language="bash")
    assert bash["stdout"] == "42\nhi you\n/tmp\n", bash
    # The languages of one thread share its files.
    assert run(server, key, "echo shared > /home/baponi/note", t, language="bash")["success"]
    read = run(server, key, "print(open('/home/baponi/note').read().strip())", t)
    assert read["stdout"] == "shared\n", read


def test_each_execution_has_its_own_output_and_exit_code(server: Server, key: str) -> None:
    t = thread()
    failed = run(server, key, "import sys\nprint('out')\nprint('err', file=sys.stderr)\nraise ValueError('boom')", t)
    assert failed["exit_code"] == 1 and not failed["success"]
    assert failed["stdout"] == "out\n"
    assert "err\n" in failed["stderr"] and "ValueError: boom" in failed["stderr"]
    again = run(server, key, "print('clean')", t)
    assert again["stdout"] == "clean\n" and again["stderr"] == "" and again["exit_code"] == 0
    assert session_of(again) == ("kept", None)
    exited = run(server, key, "import sys; sys.exit(3)", t)
    assert exited["exit_code"] == 3
    assert session_of(run(server, key, "print(1)", t)) == ("kept", None)


def test_threads_and_organizations_never_share_a_session(server: Server, key: str) -> None:
    a, b = thread(), thread()
    assert run(server, key, "secret = 'A'", a)["success"]
    other_thread = run(server, key, "print(secret)", b)
    assert "NameError" in other_thread["stderr"], other_thread
    other_key = asyncio.run(server.create_key(org="other-org", sandbox="repl", session="persistent"))
    other_org = run(server, other_key, "print(secret)", a)
    assert "NameError" in other_org["stderr"], other_org
    assert session_of(other_org) == ("new", None)


def test_streaming_result_carries_the_session(server: Server, key: str) -> None:
    t = thread()
    run(server, key, "n = 5", t)
    with httpx.stream(
        "POST", server.url + EXECUTE, json={"code": "for i in range(n): print(i)", "thread_id": t},
        headers={"Authorization": f"Bearer {key}", "Accept": NDJSON}, timeout=HTTP_TIMEOUT,
    ) as response:
        events = [json.loads(line) for line in response.iter_lines() if line]
    output = "".join(e["data"] for e in events if e["type"] == "output")
    assert output == "0\n1\n2\n3\n4\n"
    result = events[-1]
    assert result["type"] == "result" and result["result"]["session"] == {"state": "kept", "reason": None}
    stored = httpx.get(
        f"{server.url}/v1/executions/{result['trace_id']}", headers={"Authorization": f"Bearer {key}"}
    ).json()
    assert stored["session"] == {"state": "kept", "reason": None}


def test_stateless_config_and_no_thread_have_no_session(server: Server, key: str) -> None:
    assert run(server, key, "print(1)", None)["session"] is None
    stateless = asyncio.run(server.create_key())
    assert run(server, stateless, "print(1)", thread())["session"] is None


# --- how a session ends ---------------------------------------------------------------------


def test_timeout_ends_the_session_and_drops_its_unsaved_files(server: Server, key: str) -> None:
    t = thread()
    assert run(server, key, "x = 1\nopen('/home/baponi/kept', 'w').write('a')", t)["success"]
    timed = run(server, key, "open('/home/baponi/lost', 'w').write('b')\nwhile True: pass", t, timeout=2)
    assert timed["error"] == "timeout", timed
    after = run(server, key, "import os\nprint(sorted(os.listdir('/home/baponi')))\nprint('x' in globals())", t)
    assert session_of(after) == ("reset", "timeout")
    assert after["stdout"] == "['kept']\nFalse\n", after


@pytest.mark.parametrize(
    ("code", "reason"),
    [("import os; os._exit(1)", "crash"), ("b = bytearray(400 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])", "oom")],
)
def test_a_crash_or_oom_resets_the_session(server: Server, key: str, code: str, reason: str) -> None:
    t = thread()
    assert run(server, key, "x = 1", t)["success"]
    ended = run(server, key, code, t)
    assert not ended["success"]
    if reason == "oom":
        assert ended["error"] == "memory_limit_exceeded", ended
    after = run(server, key, "print('x' in globals())", t)
    assert session_of(after) == ("reset", reason)
    assert after["stdout"] == "False\n"
    assert session_of(run(server, key, "print(1)", t)) == ("kept", None)


def test_session_memory_counts_against_the_sandbox_limit(server: Server, key: str) -> None:
    t = thread()
    held = run(server, key, "a = bytearray(150 * 1024 * 1024); a[::4096] = b'x' * len(a[::4096])", t)
    assert held["success"], held
    more = run(server, key, "b = bytearray(150 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])", t)
    assert more["error"] == "memory_limit_exceeded", more  # 300 MiB held by one session > 256


def test_cancel_ends_the_session(server: Server, key: str) -> None:
    t = thread()
    assert run(server, key, "x = 1", t)["success"]
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream(
        "POST", server.url + EXECUTE, json={"code": "import time\nprint('go', flush=True)\ntime.sleep(50)", "thread_id": t},
        headers={**headers, "Accept": NDJSON}, timeout=HTTP_TIMEOUT,
    ) as response:
        lines = response.iter_lines()
        trace_id = json.loads(next(lines))["trace_id"]
        for line in lines:
            if line and json.loads(line).get("type") == "output":
                break
        cancelled = httpx.post(f"{server.url}/v1/executions/{trace_id}/cancel", headers=headers)
        assert cancelled.status_code in (200, 202), cancelled.text
        events = [json.loads(line) for line in lines if line]
    assert events[-1]["status"] == "cancelled", events[-1]
    after = run(server, key, "print('x' in globals())", t)
    assert session_of(after) == ("reset", "cancelled")
    assert after["stdout"] == "False\n"


def test_stateless_run_on_the_thread_resets_its_session(server: Server, key: str) -> None:
    t = thread()
    assert run(server, key, "x = 1", t)["success"]
    stateless = asyncio.run(server.create_key())
    assert run(server, stateless, "open('/home/baponi/f', 'w').write('s')", t)["success"]
    after = run(server, key, "print(open('/home/baponi/f').read(), 'x' in globals())", t)
    assert session_of(after) == ("reset", "changed")
    assert after["stdout"] == "s False\n"


def test_idle_expiry(pool: Pool) -> None:
    server = pool.start(session_idle_s=1.5)
    key = asyncio.run(server.create_key(sandbox="repl", session="persistent", memory_mib=128))
    idle = thread()
    assert run(server, key, "x = 1", idle)["success"]
    uid = db(server, "SELECT uid FROM threads WHERE thread_id = ?", idle)[0][0]
    deadline = time.monotonic() + 20
    while processes_of(uid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of(uid) == []  # the idle session's sandbox is gone, nothing left running
    after = run(server, key, "print('x' in globals())", idle)
    assert session_of(after) == ("reset", "idle") and after["stdout"] == "False\n"


def test_eviction_and_restart(pool: Pool) -> None:
    server = pool.start(session_memory_budget_mib=64)
    key = asyncio.run(server.create_key(sandbox="repl", session="persistent", memory_mib=128))
    # A new session wants 128 MiB: idle ones past the 64 MiB budget end, the oldest first.
    first, second = thread(), thread()
    assert run(server, key, "a = 1", first)["success"]
    assert run(server, key, "b = 1", second)["success"]
    evicted = run(server, key, "print('a' in globals())", first)
    assert session_of(evicted) == ("reset", "evicted") and evicted["stdout"] == "False\n"

    # A restart ends every session; the next run says so.
    kept = thread()
    assert run(server, key, "k = 1", kept)["success"]
    server.stop()
    server = pool.restart(server.data_dir, session_memory_budget_mib=64)
    restarted = run(server, key, "print('k' in globals())", kept)
    assert session_of(restarted) == ("reset", "restart") and restarted["stdout"] == "False\n"


# --- what the security review found --------------------------------------------------------


def test_connector_secret_is_redacted_from_rich_outputs_and_a_new_version_resets(server: Server) -> None:
    secret = "sk-live-" + uuid.uuid4().hex
    name = f"env-{uuid.uuid4().hex[:8]}"
    made = server.cli("connectors", "create", name, "--type", "env", "--secret-file", "-",
                      input=json.dumps({"OPENAI_API_KEY": secret}))
    assert made.returncode == 0, made.stderr
    assert server.cli("sandboxes", "create", f"s-{name}", "--session", "persistent").returncode == 0
    created = server.cli("keys", "create", "--sandbox", f"s-{name}", "--connector", name)
    assert created.returncode == 0, created.stderr
    key = created.stdout.split()[0]
    t = thread()
    code = "import os\nclass Leak:\n    def _repr_html_(self):\n        return '<b>' + os.environ['OPENAI_API_KEY'] + '</b>'\nLeak()"
    leaked = run(server, key, code, t)
    html = [o["data"] for o in leaked["outputs"] if o["type"] == "text/html"]
    assert html and secret not in json.dumps(leaked) and f"[redacted:{name}]" in html[0], leaked
    rotated = server.cli("connectors", "update", name, "--secret-file", "-",
                         input=json.dumps({"OPENAI_API_KEY": "sk-live-" + uuid.uuid4().hex}))
    assert rotated.returncode == 0, rotated.stderr
    deadline = time.monotonic() + 30  # the server's key cache learns of the change
    while session_of(after := run(server, key, "print(1)", t)) == ("kept", None) and time.monotonic() < deadline:
        time.sleep(1)
    assert session_of(after) == ("reset", "changed")


def test_a_session_started_after_a_reset_still_expires(pool: Pool) -> None:
    """A session begun in a thread's entry after its predecessor ended is still tracked."""
    server = pool.start(session_idle_s=1.5)
    one = asyncio.run(server.create_key(sandbox="one", session="persistent"))
    two = asyncio.run(server.create_key(sandbox="two", session="persistent", memory_mib=512))
    t = thread()
    assert run(server, one, "x = 1", t)["success"]
    changed = run(server, two, "print('x' in globals())", t)
    assert session_of(changed) == ("reset", "changed") and changed["stdout"] == "False\n"
    uid = db(server, "SELECT uid FROM threads WHERE thread_id = ?", t)[0][0]
    deadline = time.monotonic() + 20
    while processes_of(uid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_of(uid) == []
    assert session_of(run(server, two, "print(1)", t)) == ("reset", "idle")


def test_a_broken_control_line_is_the_programs_crash_not_a_platform_error(server: Server, key: str) -> None:
    t = thread()
    assert run(server, key, "x = 1", t)["success"]
    flood = run(server, key, "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'[' * 200000 + b'\\n')\n    except OSError:\n        pass", t)
    assert flood["error"] != "internal_error" and flood["exit_code"] != -1, flood
    ready = httpx.get(server.url + "/ready", timeout=10)
    assert ready.status_code == 200
    assert run(server, key, "print(2)", t)["stdout"] == "2\n"


def test_nothing_of_a_session_runs_between_its_executions(server: Server, key: str) -> None:
    t = thread()
    started = run(server, key, (
        "import threading, time\nticks = [0]\n"
        "def tick():\n    while True:\n        ticks[0] += 1\n        time.sleep(0.01)\n"
        "threading.Thread(target=tick, daemon=True).start()\ntime.sleep(0.05)"
    ), t)
    assert started["success"], started
    time.sleep(1.0)  # ~100 ticks if the thread ran meanwhile
    counted = run(server, key, "print(ticks[0])", t)
    assert int(counted["stdout"]) < 40, counted  # frozen between runs: only the runs' time ticked


def test_an_organizations_live_sessions_are_capped(pool: Pool) -> None:
    server = pool.start(session_max_per_org=2)
    key = asyncio.run(server.create_key(sandbox="repl", session="persistent"))
    first, second, third = thread(), thread(), thread()
    for t in (first, second, third):
        assert run(server, key, "v = 1", t)["success"]
    oldest = run(server, key, "print('v' in globals())", first)
    assert session_of(oldest) == ("reset", "evicted") and oldest["stdout"] == "False\n"
