"""Platform failures are visible (issue #12, item 2), on a real server with a real fault.

The fault: a CPU quota on the server's own instance cgroup (cgroup v1) below its sandboxes'
(0.5 CPU under a 1-CPU sandbox config), as a systemd slice's CPUQuota would set. The kernel
then refuses every execution's `cpu.cfs_quota_us` (EINVAL), so each run fails closed in the
cgroup layer, and so does the self-check sandbox. Only this test's server's cgroup is touched,
and the quota is lifted at the end whatever happens.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_mcp import mcp_client
from test_observability import scrape, value

from conftest import Server

EXECUTE = "/v1/sandbox/execute"
CPU_V1 = Path("/sys/fs/cgroup/cpu")

pytestmark = pytest.mark.skipif(
    not (CPU_V1 / "cpu.cfs_quota_us").exists(), reason="the fault needs the cgroup v1 cpu controller"
)


@pytest.fixture(scope="module")
def box(server_factory: Any) -> Server:
    """No pool (every run builds its sandbox at use time), /ready off after 2 platform errors in
    a row, a self-check every 0.3 s; a uid base no other test uses."""
    return server_factory(  # type: ignore[no-any-return]
        pool_enabled="false",
        platform_error_threshold=2,
        selfcheck_interval_s=0.3,
        sandbox_uid_base=350_000,
        auth_failures_allowed=100_000,
    )


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _cpu_parent_of(server: Server, trace_id: str, c: httpx.Client) -> Path:
    """The server's instance cgroup in the cpu hierarchy: the parent of a running sandbox's."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for child in _children(server.proc.pid):
            try:
                lines = Path(f"/proc/{child}/cgroup").read_text().splitlines()
            except OSError:
                continue
            for line in lines:
                _, controllers, path = line.split(":", 2)
                if "cpu" in controllers.split(",") and path.rsplit("/", 1)[-1].startswith("x-"):
                    return (CPU_V1 / path.lstrip("/")).parent
        assert c.get(f"/v1/executions/{trace_id}").json()["status"] == "running"
        time.sleep(0.05)
    raise AssertionError("no sandbox of the server found")


def _ndjson_result(c: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    r = c.post(EXECUTE, json=body, headers={"Accept": "application/x-ndjson"})
    assert r.status_code == 200, r.text
    events = [json.loads(line) for line in r.text.splitlines() if line]
    assert events[-1]["type"] == "result", events
    return events[-1]  # type: ignore[no-any-return]


async def test_a_failing_layer_is_named_counted_and_turns_ready_off_until_a_self_check_passes(box: Server) -> None:
    key = await box.create_key()
    c = httpx.Client(base_url=box.url, headers={"Authorization": f"Bearer {key}"}, timeout=60)
    running = c.post(EXECUTE, json={"code": "sleep 2", "language": "bash"}, headers={"Prefer": "respond-async"})
    parent = _cpu_parent_of(box, running.json()["trace_id"], c)
    quota = parent / "cpu.cfs_quota_us"
    while c.get(f"/v1/executions/{running.json()['trace_id']}").json()["status"] == "running":
        time.sleep(0.05)  # a parent's quota cannot go below a child's: wait for its group to go
    before = scrape(box.url)
    try:
        quota.write_text("50000")

        # 1. the inline result: never ran, the platform's code, a message naming the layer
        r = c.post(EXECUTE, json={"code": "print(1)"})
        assert r.status_code == 200, r.text
        inline = r.json()
        assert inline["exit_code"] == -1 and inline["success"] is False, inline
        assert inline["error"] == "sandbox_error"
        message = inline["error_message"]
        assert "platform error in the cgroup layer" in message and "cpu quota" in message, message
        assert "/sys/" not in message and str(box.data_dir) not in message, "no host paths"
        assert inline["stderr"] == "", "platform errors never appear in stderr (spec §3.4)"
        assert c.get("/ready").status_code == 200, "one platform error is not yet a pattern"

        # 2. streaming: the result event carries it too; the second in a row turns /ready off
        event = _ndjson_result(c, {"code": "echo hi", "language": "bash"})
        assert event["result"]["error"] == "sandbox_error"
        assert event["result"]["error_message"] == message
        ready = c.get("/ready")
        assert ready.status_code == 503, ready.text
        assert ready.json()["error"] == "unavailable"
        assert "2 platform errors in a row" in ready.json()["message"]
        assert "cgroup" in ready.json()["message"] and "/sys/" not in ready.json()["message"]

        # 3. after the fact: the status document names the layer as well
        doc = c.get(f"/v1/executions/{inline['trace_id']}").json()
        assert doc["error"] == "sandbox_error" and doc["exit_code"] == -1
        assert doc["error_message"] == message

        # 4. still admitted while not ready (load balancers move away on /ready); MCP's result
        async with mcp_client(box, key) as client:
            result = await client.call_tool("sandbox_execute", {"code": "print(2)"})
        assert result.is_error
        assert result.structured_content is not None
        assert result.structured_content["error_message"] == message
        assert message in result.content[0].text  # type: ignore[union-attr]

        # 5. counted as platform errors of the cgroup layer, not as programs that failed
        after = scrape(box.url)
        moved = lambda name, **labels: value(after, name, **labels) - value(before, name, **labels)  # noqa: E731
        assert moved("sandboxd_platform_errors_total", layer="cgroup") == 3
        assert moved("sandboxd_executions_total", language="python", status="platform_error") == 2
        assert moved("sandboxd_executions_total", language="python", status="failed") == 0
        assert moved("sandboxd_executions_total", language="bash", status="failed") == 0
        assert value(after, "sandboxd_platform_unready") == 1

        # 6. the self-check keeps failing while the fault is there
        deadline = time.monotonic() + 30
        while "self-check failed, still not ready" not in box.log_path.read_text():
            assert time.monotonic() < deadline, "no self-check ran"
            time.sleep(0.1)
        assert c.get("/ready").status_code == 503
    finally:
        quota.write_text("-1")

    # 7. the fault is gone: a fresh self-check passes and the server is ready again
    deadline = time.monotonic() + 30
    while (ready := c.get("/ready")).status_code != 200:
        assert time.monotonic() < deadline, ready.text
        time.sleep(0.1)
    assert value(scrape(box.url), "sandboxd_platform_unready") == 0
    ok = c.post(EXECUTE, json={"code": "print(6 * 7)"}).json()
    assert ok["stdout"] == "42\n" and ok["error_message"] is None, ok
    c.close()
