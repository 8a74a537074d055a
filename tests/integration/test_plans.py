"""Plans against a real server: each limit's exact answer over REST (raw HTTP and the official
`baponi` SDK) and MCP (the official `mcp` client), usage figures that match the executions run,
resource peaks on each execution, and the plan commands of the CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import baponi
import httpx
import httpx2
import pytest
from _servers import admin_call
from conftest import Server, run_cli
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from sandboxd.app import open_admin

EXECUTE = "/v1/sandbox/execute"
CONCURRENCY_429 = "concurrent execution limit reached (5/5). Upgrade to Pro for 100 concurrent executions."
STREAMING_403 = "streaming delivery is not available on the Free plan; the Pro and Enterprise plans allow it"
WEBHOOK_403 = "webhook (async) delivery is not available on the Free plan; the Pro and Enterprise plans allow it"
MCP_PROGRESS_403 = (
    "streaming (MCP progress) delivery is not available on the Free plan; the Pro and Enterprise plans allow it"
)
SLEEP = "import time; time.sleep(6); print('slept')"


@pytest.fixture(scope="module")
def srv(server_factory: Any) -> Server:
    # Room for the Free plan's five at once (and its sixth refused by the plan, not the server).
    return server_factory(max_concurrent=8, admission_wait_s=0, webhook_allow_insecure=True)  # type: ignore[no-any-return]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def cli(server: Server, *args: str) -> str:
    done = run_cli(*args, "--data-dir", str(server.data_dir))
    assert done.returncode == 0, done.stderr
    return done.stdout


def cli_error(server: Server, *args: str) -> str:
    done = run_cli(*args, "--data-dir", str(server.data_dir))
    assert done.returncode == 1, (done.stdout, done.stderr)
    return done.stderr.strip()


def org_on(server: Server, plan: str) -> str:
    """A new organization on `plan` (assigned through the CLI)."""
    name = unique("org")
    cli(server, "orgs", "create", name)
    assert cli(server, "plans", "assign", name, plan).strip() == f"{name}\t{plan}"
    return name


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@contextlib.asynccontextmanager
async def mcp_client(server: Server, key: str) -> AsyncIterator[Client]:
    http = httpx2.AsyncClient(headers=auth(key), timeout=httpx2.Timeout(30, read=300))
    async with http, Client(streamable_http_client(f"{server.url}/mcp", http_client=http)) as c:
        yield c


def text_of(result: CallToolResult) -> str:
    assert len(result.content) == 1 and result.content[0].type == "text"
    return result.content[0].text


async def running(server: Server, org: str, n: int) -> None:
    """Until `n` executions of `org` are admitted and running (their slots are taken by then)."""
    deadline = time.monotonic() + 60
    query = "SELECT count(*) FROM executions e JOIN orgs o ON e.org_id = o.id WHERE e.status = 'running' AND o.name = ?"
    while True:
        with contextlib.closing(sqlite3.connect(f"file:{server.data_dir / 'sandboxd.db'}?mode=ro", uri=True)) as db:
            count = int(db.execute(query, (org,)).fetchone()[0])
        if count >= n:
            return
        assert time.monotonic() < deadline, f"{count} of {n} running"
        await asyncio.sleep(0.05)


async def running_trace(server: Server, org: str) -> str:
    await running(server, org, 1)
    query = "SELECT trace_id FROM executions e JOIN orgs o ON e.org_id = o.id WHERE e.status = 'running' AND o.name = ?"
    with contextlib.closing(sqlite3.connect(f"file:{server.data_dir / 'sandboxd.db'}?mode=ro", uri=True)) as db:
        return str(db.execute(query, (org,)).fetchone()[0])


# --- concurrency ---------------------------------------------------------------------------------


async def test_free_plan_sixth_concurrent_execution_is_429_with_upgrade_hint(srv: Server) -> None:
    org = org_on(srv, "free")
    key = await srv.create_key(org=org)
    async with httpx.AsyncClient(base_url=srv.url, headers=auth(key), timeout=120) as raw:
        held = [asyncio.create_task(raw.post(EXECUTE, json={"code": SLEEP})) for _ in range(5)]
        await running(srv, org, 5)
        refused = await raw.post(EXECUTE, json={"code": "print(1)"})
        assert refused.status_code == 429
        assert refused.json() == {"error": "rate_limited", "message": CONCURRENCY_429}
        assert refused.headers["Retry-After"] == "1"

        async with baponi.AsyncBaponi(api_key=key, base_url=srv.url, max_retries=0) as sdk:
            with pytest.raises(baponi.RateLimitError) as info:
                await sdk.execute("print(1)")
        assert (info.value.status_code, info.value.error_type) == (429, "rate_limited")
        assert info.value.message == CONCURRENCY_429 and info.value.retry_after == 1

        async with mcp_client(srv, key) as c:
            result = await c.call_tool("sandbox_execute", {"code": "print(1)"})
        assert result.is_error
        assert text_of(result) == f"rate_limited: {CONCURRENCY_429} (retry after 1 s)"
        # the five were not disturbed by the refusals
        assert [(await t).json()["stdout"] for t in held] == ["slept\n"] * 5


async def test_custom_plan_concurrency_has_no_upgrade_hint(srv: Server) -> None:
    org = unique("org")
    cli(srv, "orgs", "create", org)
    cli(srv, "plans", "create", "solo", "--org", org, "--concurrent", "1")
    cli(srv, "plans", "assign", org, "solo")
    key = await srv.create_key(org=org)
    async with httpx.AsyncClient(base_url=srv.url, headers=auth(key), timeout=120) as raw:
        held = asyncio.create_task(raw.post(EXECUTE, json={"code": "import time; time.sleep(5)"}))
        await running(srv, org, 1)
        refused = await raw.post(EXECUTE, json={"code": "print(1)"})
        assert refused.status_code == 429
        assert refused.json()["message"] == "concurrent execution limit reached (1/1)."
        assert (await held).status_code == 200


# --- delivery modes ------------------------------------------------------------------------------


async def test_free_plan_refuses_streaming_and_webhook_delivery(srv: Server) -> None:
    org = org_on(srv, "free")
    key = await srv.create_key(org=org)
    async with httpx.AsyncClient(base_url=srv.url, headers=auth(key), timeout=60) as raw:
        streamed = await raw.post(EXECUTE, json={"code": "print(1)"}, headers={"Accept": "application/x-ndjson"})
        assert streamed.status_code == 403
        assert streamed.json() == {"error": "forbidden", "message": STREAMING_403}
        hooked = await raw.post(
            EXECUTE, json={"code": "print(1)", "webhook_url": "http://127.0.0.1:9/hook"},
            headers={"Prefer": "respond-async"},
        )
        assert hooked.status_code == 403
        assert hooked.json() == {"error": "forbidden", "message": WEBHOOK_403}
        inline = await raw.post(EXECUTE, json={"code": "print(1)"})
        assert inline.status_code == 200 and inline.json()["stdout"] == "1\n"
        # following a running execution live is streaming too; replaying an ended one is not
        slow = asyncio.create_task(raw.post(EXECUTE, json={"code": "import time; time.sleep(3)"}))
        trace = await running_trace(srv, org)
        follow = await raw.get(f"/v1/executions/{trace}/output")
        assert follow.status_code == 403 and follow.json() == {"error": "forbidden", "message": STREAMING_403}
        assert (await slow).status_code == 200
        replay = await raw.get(f"/v1/executions/{trace}/output")
        assert replay.status_code == 200 and '"result"' in replay.text

    with baponi.Baponi(api_key=key, base_url=srv.url, max_retries=0) as sdk:
        with pytest.raises(baponi.ForbiddenError) as info:
            with sdk.execute_stream("print(1)") as stream:
                list(stream)
    assert (info.value.status_code, info.value.message) == (403, STREAMING_403)

    async def progress(value: float, total: float | None, message: str | None) -> None:
        pass

    async with mcp_client(srv, key) as c:
        refused = await c.call_tool("sandbox_execute", {"code": "print(1)"}, progress_callback=progress)
        assert refused.is_error and text_of(refused) == f"forbidden: {MCP_PROGRESS_403}"
        plain = await c.call_tool("sandbox_execute", {"code": "print(1)"})
        assert not plain.is_error and plain.structured_content["stdout"] == "1\n"  # type: ignore[index]


async def test_pro_plan_streams(srv: Server) -> None:
    key = await srv.create_key(org=org_on(srv, "pro"))
    with baponi.Baponi(api_key=key, base_url=srv.url, max_retries=0) as sdk:
        with sdk.execute_stream("print(2)") as stream:
            events = list(stream)
    assert any(getattr(e, "type", None) == "result" for e in events)


# --- timeout, sandbox configs, keys -------------------------------------------------------------


async def test_timeout_above_the_plan_is_lowered_with_a_note_naming_the_plan(srv: Server) -> None:
    org = unique("org")
    key = await srv.create_key(org=org, sandbox="long", timeout_cap_s=600)  # made on enterprise
    cli(srv, "plans", "assign", org, "free")
    note = "timeout lowered from 120 s to the Free plan's limit of 60 s"
    async with httpx.AsyncClient(base_url=srv.url, headers=auth(key), timeout=60) as raw:
        body = (await raw.post(EXECUTE, json={"code": "print(1)", "timeout": 120})).json()
        assert body["success"] and note in body["notes"]
    async with mcp_client(srv, key) as c:
        result = await c.call_tool("sandbox_execute", {"code": "print(1)", "timeout": 120})
    assert not result.is_error and note in result.structured_content["notes"]  # type: ignore[index]


async def test_sandbox_config_over_the_plan_is_refused_at_creation(srv: Server) -> None:
    org = org_on(srv, "free")
    assert cli_error(srv, "sandboxes", "create", "big", "--cpus", "2", "--org", org) == (
        "sandboxd: sandbox config 'big' asks for 2 CPUs; the Free plan allows 1 per sandbox. "
        "Upgrade to Pro for 4 CPUs per sandbox."
    )
    assert cli_error(srv, "sandboxes", "create", "fat", "--memory", "2048", "--org", org) == (
        "sandboxd: sandbox config 'fat' asks for 2048 MiB of memory; the Free plan allows 1024 MiB per sandbox. "
        "Upgrade to Pro for 4096 MiB per sandbox."
    )
    assert cli_error(srv, "sandboxes", "create", "slow", "--timeout-cap", "120", "--org", org) == (
        "sandboxd: sandbox config 'slow' asks for a timeout cap of 120 s; the Free plan allows 60 s. "
        "Upgrade to Pro for 3600 s timeouts."
    )
    cli(srv, "sandboxes", "create", "fits", "--cpus", "1", "--memory", "1024", "--org", org)


async def test_config_left_over_the_plan_by_a_downgrade_is_refused_at_admission(srv: Server) -> None:
    org = unique("org")
    key = await srv.create_key(org=org, sandbox="big", cpus=2, memory_mib=512)  # on enterprise
    answer = "sandbox config 'big' asks for 2 CPUs; the Free plan allows 1 per sandbox. Upgrade to Pro for 4 CPUs per sandbox."
    async with httpx.AsyncClient(base_url=srv.url, headers=auth(key), timeout=60) as raw:
        assert (await raw.post(EXECUTE, json={"code": "print(1)"})).status_code == 200
        cli(srv, "plans", "assign", org, "free")  # the server's cached principal is dropped
        refused = await raw.post(EXECUTE, json={"code": "print(1)"})
        assert refused.status_code == 403 and refused.json() == {"error": "forbidden", "message": answer}
    async with mcp_client(srv, key) as c:
        result = await c.call_tool("sandbox_execute", {"code": "print(1)"})
    assert result.is_error and text_of(result) == f"forbidden: {answer}"
    cli(srv, "plans", "assign", org, "pro")
    async with httpx.AsyncClient(base_url=srv.url, headers=auth(key), timeout=60) as raw:
        assert (await raw.post(EXECUTE, json={"code": "print(1)"})).status_code == 200


async def test_api_key_over_the_plan_is_refused(srv: Server) -> None:
    org = org_on(srv, "free")
    for _ in range(10):
        cli(srv, "keys", "create", "--org", org)
    assert cli_error(srv, "keys", "create", "--org", org) == (
        "sandboxd: API key limit reached (10/10): the Free plan allows 10 API keys; revoke one first. "
        "Upgrade to Pro for unlimited API keys."
    )
    first = cli(srv, "keys", "list", "--org", org).splitlines()[0].split("\t")[0]
    cli(srv, "keys", "revoke", first)
    cli(srv, "keys", "create", "--org", org)  # a revoked key does not count


# --- usage and resource peaks --------------------------------------------------------------------


BUSY = "import time\nstart = time.process_time()\nwhile time.process_time() - start < 1.0:\n    pass\nprint('done')"


async def test_usage_matches_the_executions_run_and_resources_are_recorded(srv: Server) -> None:
    org = unique("org")
    key = await srv.create_key(org=org, sandbox="metered", cpus=1, memory_mib=512)
    documents = []
    async with httpx.AsyncClient(base_url=srv.url, headers=auth(key), timeout=120) as raw:
        for code in (BUSY, "print(1)", "import sys; sys.exit(3)"):
            trace = (await raw.post(EXECUTE, json={"code": code})).json()["trace_id"]
            documents.append((await raw.get(f"/v1/executions/{trace}")).json())
    busy = documents[0]["resources"]
    assert busy["cpu_ms"] >= 1000, busy  # the loop alone used a second of CPU
    assert busy["cpu_ms"] <= documents[0]["duration_ms"] * 1 + 500  # one CPU's quota, some slack
    assert 1_000_000 < busy["memory_peak_bytes"] <= 512 * 2**20
    assert all(d["resources"]["cpu_ms"] >= 0 for d in documents)

    month = time.strftime("%Y-%m", time.gmtime())
    line = json.loads(cli(srv, "usage", "--org", org, "--month", month))
    assert line["org"] == org and line["month"] == month and line["executions"] == 3
    cpu_s = sum(d["resources"]["cpu_ms"] for d in documents) / 1000
    assert abs(line["cpu_seconds"] - cpu_s) < 0.01, (line, cpu_s)
    gib_s = sum(0.5 * d["duration_ms"] / 1000 for d in documents)
    assert abs(line["gib_seconds"] - gib_s) < 0.01, (line, gib_s)
    every = [json.loads(x) for x in cli(srv, "usage", "--month", month).splitlines()]
    assert line in every
    assert json.loads(cli(srv, "usage", "--org", org, "--month", "2001-01"))["executions"] == 0

    admin = await open_admin(srv.settings)  # the service the console and admin API read
    try:
        stored = await admin.usage.usage(await admin.tenancy.org(org), month)
    finally:
        await admin.close()
    assert stored.executions == 3 and abs(stored.gib_seconds - gib_s) < 0.01


async def test_mcp_executions_are_metered_too(srv: Server) -> None:
    org = unique("org")
    key = await srv.create_key(org=org)
    async with mcp_client(srv, key) as c:
        for _ in range(2):
            assert not (await c.call_tool("sandbox_execute", {"code": "print(1)"})).is_error
    assert json.loads(cli(srv, "usage", "--org", org))["executions"] == 2


# --- the CLI ---------------------------------------------------------------------------------------


def test_plans_cli_lists_shows_creates_and_assigns(srv: Server) -> None:
    listed = [json.loads(x) for x in cli(srv, "plans", "list").splitlines()]
    by_name = {p["name"]: p for p in listed if not p["custom"]}
    assert by_name["free"] == {
        "name": "free", "custom": False, "org": None, "cpus": 1, "memory_mib": 1024, "concurrent": 5,
        "timeout_s": 60, "api_keys": 10, "audit_retention_days": 1, "images": 1, "streaming": False,
    }
    assert by_name["pro"]["concurrent"] == 100 and by_name["pro"]["audit_retention_days"] == 30
    assert all(v is None for k, v in by_name["enterprise"].items() if k not in ("name", "custom", "org", "streaming"))

    org = unique("org")
    cli(srv, "orgs", "create", org)
    made = json.loads(cli(
        srv, "plans", "create", "gold", "--org", org, "--cpus", "2", "--memory-mib", "2048", "--concurrent", "20",
        "--timeout-s", "600", "--keys", "3", "--audit-retention-days", "7", "--images", "2", "--no-streaming",
    ))
    assert made == {
        "name": "gold", "custom": True, "org": org, "cpus": 2.0, "memory_mib": 2048, "concurrent": 20,
        "timeout_s": 600, "api_keys": 3, "audit_retention_days": 7, "images": 2, "streaming": False,
    }
    assert json.loads(cli(srv, "plans", "show", "gold", "--org", org)) == made
    assert made in [json.loads(x) for x in cli(srv, "plans", "list").splitlines()]
    assert cli_error(srv, "plans", "create", "gold", "--org", org) == (
        f"sandboxd: organization {org!r} already has a plan 'gold'"
    )
    assert cli_error(srv, "plans", "create", "pro", "--org", org) == (
        "sandboxd: 'pro' is a preset's name; choose another for a custom plan"
    )
    assert cli_error(srv, "plans", "assign", org, "platinum") == (
        f"sandboxd: no plan 'platinum' for organization {org!r} (`sandboxd plans list`)"
    )
    other = unique("org")
    cli(srv, "orgs", "create", other)
    assert cli_error(srv, "plans", "assign", other, "gold") == (  # a custom plan is its organization's
        f"sandboxd: no plan 'gold' for organization {other!r} (`sandboxd plans list`)"
    )
    assert cli(srv, "plans", "assign", org, "gold").strip() == f"{org}\tgold"
    audited = cli(srv, "audit", "search", "--org", org, "--action", "plan.assign")
    assert '"plan.assign"' in audited and '"gold"' in audited and '"enterprise"' in audited, audited
    assert '"plan.create"' in cli(srv, "audit", "search", "--org", org, "--action", "plan.create")

    async def check(admin: Any) -> Any:
        the_org = await admin.tenancy.org(org)
        of = await admin.plans.retention_days_of()  # the audit log's sweeper reads it so
        return (
            (await admin.plans.plan_of(the_org)).name, await admin.plans.retention_days(the_org),
            [of(o) for o in (the_org, await admin.tenancy.org(other), await admin.tenancy.org("default"))],
        )

    cli(srv, "plans", "assign", other, "pro")
    assert admin_call(srv, check) == ("gold", 7, [7, 30, None])
    assert cli_error(srv, "sandboxes", "create", "x", "--cpus", "3", "--org", org) == (
        "sandboxd: sandbox config 'x' asks for 3 CPUs; the custom plan 'gold' allows 2 per sandbox."
    )


def test_default_plan_is_a_setting(server_factory: Any) -> None:
    free_by_default = server_factory(default_plan="free")
    org = unique("org")
    env = {"SANDBOXD_DEFAULT_PLAN": "free"}  # the CLI reads the same settings as the server
    assert run_cli("orgs", "create", org, "--data-dir", str(free_by_default.data_dir), env=env).returncode == 0
    done = run_cli("sandboxes", "create", "big", "--cpus", "2", "--org", org,
                   "--data-dir", str(free_by_default.data_dir), env=env)
    assert done.returncode == 1 and "the Free plan allows 1 per sandbox" in done.stderr, done.stderr


@pytest.mark.skipif(
    not (Path("/usr/sbin/mkfs.btrfs").exists() or Path("/usr/bin/mkfs.btrfs").exists()),
    reason="threads need btrfs-progs",
)
async def test_a_persistent_sessions_runs_each_count_their_own_cpu(srv: Server) -> None:
    key = await srv.create_key(org=unique("org"), sandbox="repl", session="persistent")
    thread = unique("t")
    async with httpx.AsyncClient(base_url=srv.url, headers=auth(key), timeout=120) as raw:
        busy = (await raw.post(EXECUTE, json={"code": BUSY, "thread_id": thread})).json()
        idle = (await raw.post(EXECUTE, json={"code": "x = 1", "thread_id": thread})).json()
        assert idle["session"]["state"] == "kept", idle
        first, second = [(await raw.get(f"/v1/executions/{r['trace_id']}")).json()["resources"] for r in (busy, idle)]
    assert first["cpu_ms"] >= 1000 and second["cpu_ms"] < 500, (first, second)
    assert second["memory_peak_bytes"] >= first["memory_peak_bytes"] > 0  # the session's peak


async def test_installation_figures_for_a_preset_apply_to_its_organizations_and_hints(tmp_path: Path) -> None:
    from sandboxd.service.plans import PlanLimits, PlanService, concurrency_refused
    from sandboxd.store import Store, create_engine, migrate

    store = Store(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'sandboxd.db'}"))
    try:
        await migrate(store.engine)
        org = await store.orgs.add("org_p", "presets", plan="free")
        plans = PlanService(store, default="free")
        await plans.create_custom(None, "pro", PlanLimits(concurrent=250))  # this installation's Pro
        await plans.create_custom(None, "free", PlanLimits(concurrent=2, streaming=False))
        free = await plans.plan_of(org)
        assert (free.name, free.custom, free.limits.concurrent, free.limits.cpus) == ("free", False, 2, None)
        assert concurrency_refused(free, 2, 2).message == (
            "concurrent execution limit reached (2/2). Upgrade to Pro for 250 concurrent executions."
        )
        listed = {p.name: p.limits.concurrent for p in await plans.list()}
        assert listed == {"free": 2, "pro": 250, "enterprise": None}
        nameless = await store.orgs.add("org_q", "nameless")  # no plan: the default
        assert (await plans.plan_of(nameless)).name == "free"
    finally:
        await store.close()
