"""The execution service over the fake runner: no root, no bubblewrap, a real SQLite store.

Submit → job → result, timeouts, OOM, cancel, a busy thread, admission limits, the event
order and replays, webhook scheduling, and the one place that gives back what a submission
holds (the admission slot and the thread lock) whatever fails.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from sandboxd.bus import Event
from sandboxd.errors import Conflict, RateLimited
from sandboxd.runtime import Limits, RootImage, SandboxSpec
from sandboxd.runtime.fake import FakeRunner, Script
from sandboxd.service.admission import ConcurrencyLimiter
from sandboxd.service.events import EventSettings
from sandboxd.service.executions import ExecutionService
from sandboxd.service.job import JobDescription, Outcome
from sandboxd.service.connectors import ConnectorBinding
from sandboxd.service.keys import Principal
from sandboxd.service.ports import Admission, Release
from sandboxd.service.requests import ExecuteRequest
from sandboxd.service.tenancy import SandboxConfig, TenancyService
from sandboxd.service.threads import ThreadLocks, ThreadPolicy, ThreadService
from sandboxd.service.url_guard import UrlGuard
from sandboxd.service.volumes import VolumeBinding, VolumeService
from sandboxd.service.webhooks import WebhookService
from sandboxd.store import Store

PEPPER = bytes(range(32))
HOOK = "https://hooks.example.com/sandboxd"

# --------------------------------------------------------------------------- fakes


def by_code(scripts: dict[str, Script]) -> Callable[[SandboxSpec], Script]:
    """The script named by the code; any other code is echoed to stdout."""

    def pick(spec: SandboxSpec) -> Script:
        return scripts.get(spec.code.decode(), Script(output=(("stdout", spec.code),)))

    return pick


SCRIPTS = {
    "hello": Script(output=(("stdout", b"hel"), ("stdout", b"lo\n"), ("stderr", b"warn\n"))),
    "exit3": Script(output=(("stderr", b"bad\n"),), exit_code=3),
    "sleep": Script(output=(("stdout", b"started\n"),), sleep_s=30),
    "oom": Script(output=(("stdout", b"allocating\n"),), oom=True),
    "setup-fails": Script(error=RuntimeError("no cgroup")),
}


@dataclass
class FakeOrgs:
    async def make_room(self, org_id: str, needed: int) -> None:
        return None

    def check_room(self, org_id: str) -> None:
        return None


@dataclass
class FakeHomes:
    """ThreadStore over plain directories, recording what became of each working copy."""

    root: Path
    orgs: FakeOrgs = field(default_factory=FakeOrgs)
    committed: list[Path] = field(default_factory=list)
    discarded: list[Path] = field(default_factory=list)

    async def make_room(self, org_id: str) -> None:
        return None

    def begin(self, org_id: str, thread_id: str, uid: int, gid: int, trace_id: str) -> Path:
        work = self.root / org_id / thread_id / f"work-{trace_id}"
        work.mkdir(parents=True)
        return work

    def commit(self, work: Path) -> None:
        self.committed.append(work)

    def discard(self, work: Path) -> None:
        self.discarded.append(work)


class RecordingWebhooks(WebhookService):
    """Deliveries are registered for real; a kick (an execution ended) is only counted."""

    kicks = 0

    def kick(self) -> None:
        self.kicks += 1


class CountingAdmission:
    """Today's limiter, counting how often each slot is given back (it must be once)."""

    def __init__(self, limiter: Admission) -> None:
        self._limiter = limiter
        self.releases: list[int] = []

    async def acquire(
        self, org_id: str, org_cap: int | None = None, over_cap: Callable[[int, int], RateLimited] | None = None
    ) -> Release:
        release = await self._limiter.acquire(org_id, org_cap, over_cap)
        index = len(self.releases)
        self.releases.append(0)

        def counted() -> None:
            self.releases[index] += 1
            release()

        return counted

    def close(self) -> None:
        self._limiter.close()

    @property
    def running(self) -> int:
        return self._limiter.running

    @property
    def waiting(self) -> int:
        return self._limiter.waiting


@dataclass
class World:
    service: ExecutionService
    runner: FakeRunner
    principal: Principal
    store: Store
    admission: CountingAdmission
    threads: ThreadService
    homes: FakeHomes
    webhooks: RecordingWebhooks
    tenancy: TenancyService


# --------------------------------------------------------------------------- fixtures


async def world(
    store: Store, tmp_path: Path, *, global_cap: int = 8, per_org_cap: int = 8, timeout_cap_s: int = 60
) -> World:
    tenancy = TenancyService(store)
    org = await tenancy.ensure_defaults()
    sandbox = await tenancy.sandbox(org, "default")
    if timeout_cap_s != sandbox.timeout_cap_s:
        sandbox = await tenancy.create_sandbox(org, SandboxConfig(name="capped", timeout_cap_s=timeout_cap_s))
    homes = FakeHomes(tmp_path / "homes")
    threads = ThreadService(store, homes, ThreadPolicy(), ThreadLocks(tmp_path / "locks"))  # type: ignore[arg-type]
    webhooks = RecordingWebhooks(store, PEPPER, UrlGuard())
    admission = CountingAdmission(ConcurrencyLimiter(global_cap, per_org_cap))
    runner = FakeRunner(by_code(SCRIPTS))
    service = ExecutionService(
        store, runner, admission, Limits(), webhooks, threads, VolumeService(store, None),
        keepalive_s=60, events=EventSettings(flush_interval_s=0.02),
    )
    principal = Principal(key=None, org=org, sandbox=sandbox)
    return World(service, runner, principal, store, admission, threads, homes, webhooks, tenancy)


WorldFactory = Callable[..., Awaitable[World]]


@pytest.fixture
async def make(store: Store, tmp_path: Path) -> AsyncIterator[WorldFactory]:
    """Worlds on one store; each is shut down, and its last writes awaited, before the store closes."""
    built: list[World] = []

    async def build(**options: int) -> World:
        built.append(await world(store, tmp_path, **options))
        return built[-1]

    yield build
    for each in built:
        await each.service.shutdown(0)
        await each.threads.settle()


@pytest.fixture
async def w(make: WorldFactory) -> World:
    return await make()


def request(code: str = "hello", **fields: Any) -> ExecuteRequest:
    return ExecuteRequest(code=code, **fields)


async def collect(events: AsyncIterator[Event]) -> list[Event]:
    async with asyncio.timeout(10):
        return [e async for e in events]


async def running(w: World, trace_id: str) -> None:
    """Wait until the job has started the sandbox (its first output is published)."""
    async for event in await w.service.events(w.principal, trace_id):
        if event.type == "output":
            return


def released_once(w: World) -> bool:
    return all(n == 1 for n in w.admission.releases) and w.admission.running == 0


# --------------------------------------------------------------------------- submit → run → result


async def test_a_run_ends_with_its_result_recorded_and_its_sandbox_refilled(w: World) -> None:
    sub = await w.service.submit(w.principal, request("hello"))
    outcome = await sub.outcome()
    assert (outcome.status, outcome.exit_code, outcome.error) == ("success", 0, None)
    assert (outcome.stdout, outcome.stderr) == ("hello\n", "warn\n")
    stored = await w.store.executions.get(sub.trace_id)
    assert stored is not None and (stored.status, stored.exit_code, stored.stdout) == ("success", 0, "hello\n")
    assert [s.code for s in w.runner.runs] == [b"hello"]
    await asyncio.sleep(0)  # the refill runs as a done-callback of the job's task
    assert w.runner.refills == w.runner.runs
    assert released_once(w)


async def test_a_failing_program_is_a_failed_run_not_an_error(w: World) -> None:
    outcome = await w.service.execute(w.principal, request("exit3"))
    assert (outcome.status, outcome.exit_code, outcome.error, outcome.stderr) == ("failed", 3, None, "bad\n")
    assert not outcome.success


async def test_the_timeout_is_capped_by_the_sandbox_config_and_ends_the_run(make: WorldFactory) -> None:
    w = await make(timeout_cap_s=1)
    outcome = await w.service.execute(w.principal, request("sleep", timeout=30))
    assert w.runner.runs[0].limits.timeout_s == 1
    assert (outcome.status, outcome.error, outcome.exit_code, outcome.stdout) == ("timeout", "timeout", 137, "started\n")
    stored = await w.store.executions.get(outcome.trace_id)
    assert stored is not None and (stored.status, stored.timeout_s) == ("timeout", 1)


async def test_limits_come_from_the_sandbox_config(w: World) -> None:
    await w.service.execute(w.principal, request("hello", timeout=5))
    limits = w.runner.runs[0].limits
    assert (limits.cpus, limits.memory_mib, limits.timeout_s) == (
        w.principal.sandbox.cpus, w.principal.sandbox.memory_mib, 5
    )
    assert w.runner.runs[0].host_gid == w.principal.org.gid


async def test_out_of_memory(w: World) -> None:
    outcome = await w.service.execute(w.principal, request("oom"))
    assert (outcome.status, outcome.error, outcome.exit_code) == ("oom", "memory_limit_exceeded", 137)


async def test_a_runtime_failure_is_a_platform_error_and_gives_everything_back(w: World) -> None:
    outcome = await w.service.execute(w.principal, request("setup-fails", thread_id="t1"))
    assert (outcome.status, outcome.exit_code, outcome.error) == ("failed", -1, "internal_error")
    assert outcome.error_message and "runtime" in outcome.error_message and not outcome.stderr
    assert released_once(w) and not w.threads.busy(w.principal.org.id, "t1")
    assert w.homes.committed == [] and len(w.homes.discarded) == 1


# --------------------------------------------------------------------------- cancel


async def test_cancel_stops_a_running_execution(w: World) -> None:
    sub = await w.service.submit(w.principal, request("sleep"))
    await running(w, sub.trace_id)
    assert await w.service.cancel(w.principal, sub.trace_id) == "cancelling"
    outcome = await sub.outcome()
    assert (outcome.status, outcome.error, outcome.stdout) == ("cancelled", "cancelled", "started\n")
    assert await w.service.cancel(w.principal, sub.trace_id) == "cancelled"  # ended: its status
    assert released_once(w)


async def test_shutdown_interrupts_what_runs(w: World) -> None:
    sub = await w.service.submit(w.principal, request("sleep"))
    await running(w, sub.trace_id)
    await w.service.shutdown(0)
    outcome = await sub.outcome()
    assert (outcome.status, outcome.error) == ("failed", "interrupted")
    assert w.service.closing


# --------------------------------------------------------------------------- threads


async def test_a_busy_thread_is_refused_409_before_any_work(w: World) -> None:
    first = await w.service.submit(w.principal, request("sleep", thread_id="t1"))
    await running(w, first.trace_id)
    with pytest.raises(Conflict):
        await w.service.submit(w.principal, request("hello", thread_id="t1"))
    assert len(w.runner.runs) == 1 and w.admission.running == 1  # no slot taken for it
    await w.service.cancel(w.principal, first.trace_id)
    await first.outcome()
    # A cancelled run's working copy is dropped; the lock is free again.
    assert w.homes.committed == [] and len(w.homes.discarded) == 1
    again = await w.service.execute(w.principal, request("hello", thread_id="t1"))
    assert again.status == "success" and len(w.homes.committed) == 1
    thread = await w.store.threads.get(w.principal.org.id, "t1")
    assert thread is not None
    spec = w.runner.runs[-1]
    assert spec.host_uid == thread.uid and spec.home == str(w.homes.committed[0])
    assert released_once(w)


# --------------------------------------------------------------------------- admission


async def test_a_full_server_refuses_429_and_gives_the_thread_back(make: WorldFactory) -> None:
    w = await make(global_cap=1)
    first = await w.service.submit(w.principal, request("sleep"))
    with pytest.raises(RateLimited):
        await w.service.submit(w.principal, request("hello", thread_id="t2"))
    assert not w.threads.busy(w.principal.org.id, "t2")
    await w.service.cancel(w.principal, first.trace_id)
    await first.outcome()
    assert (await w.service.execute(w.principal, request("hello"))).status == "success"
    assert released_once(w)


async def test_an_org_over_its_cap_is_refused_429(make: WorldFactory) -> None:
    w = await make(per_org_cap=1)
    first = await w.service.submit(w.principal, request("sleep"))
    with pytest.raises(RateLimited, match="organization"):
        await w.service.submit(w.principal, request("hello"))
    await w.service.cancel(w.principal, first.trace_id)
    await first.outcome()
    assert released_once(w)


async def test_a_failure_after_admission_gives_slot_and_lock_back_once(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("database gone")

    monkeypatch.setattr(w.store.executions, "add", broken)
    with pytest.raises(OSError):
        await w.service.submit(w.principal, request("hello", thread_id="t3"))
    assert w.admission.releases == [1] and w.admission.running == 0
    assert not w.threads.busy(w.principal.org.id, "t3")
    assert w.runner.runs == []


async def test_a_failure_inside_the_job_gives_slot_and_lock_back_once(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError("commit failed")

    monkeypatch.setattr(w.threads, "commit", broken)
    outcome = await w.service.execute(w.principal, request("hello", thread_id="t4"))
    # The program ran, but its writes to the thread were lost: a platform error says so.
    assert (outcome.status, outcome.error, outcome.stdout) == ("failed", "thread_mount_error", "hello\n")
    assert w.admission.releases == [1] and not w.threads.busy(w.principal.org.id, "t4")
    assert len(w.homes.discarded) == 1


async def test_an_error_escaping_the_job_still_gives_slot_and_lock_back_once(
    w: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("unexpected")

    monkeypatch.setattr(VolumeService, "mounts", broken)
    sub = await w.service.submit(w.principal, request("hello", thread_id="t5"))
    outcome = await sub.outcome()
    # recorded and published as a platform failure: no row left running, no follower left waiting
    assert (outcome.status, outcome.error, outcome.exit_code) == ("failed", "internal_error", -1)
    stored = await w.store.executions.get(sub.trace_id)
    assert stored is not None and (stored.status, stored.error) == ("failed", "internal_error")
    assert sub.log.closed
    assert w.admission.releases == [1] and not w.threads.busy(w.principal.org.id, "t5")
    assert w.runner.runs == []


async def test_a_working_copy_that_cannot_be_discarded_does_not_lose_the_result(make: WorldFactory) -> None:
    w = await make(timeout_cap_s=1)

    def broken(work: Any) -> None:
        raise OSError("subvolume busy")

    w.homes.discard = broken  # type: ignore[method-assign]  # the fake's discard, failing
    sub = await w.service.submit(w.principal, request("sleep", thread_id="t6", timeout=1))
    outcome = await sub.outcome()
    assert (outcome.status, outcome.error) == ("timeout", "timeout")
    stored = await w.store.executions.get(sub.trace_id)
    assert stored is not None and stored.status == "timeout"
    assert sub.log.closed and w.webhooks.kicks == 0
    assert w.admission.releases == [1] and not w.threads.busy(w.principal.org.id, "t6")


# --------------------------------------------------------------------------- events


async def test_events_come_in_order_and_replay_after_a_seq(w: World) -> None:
    sub = await w.service.submit(w.principal, request("hello"))
    live = await collect(sub.log.follow(0))
    kinds = [(e.type, e.body.get("status")) for e in live]
    assert kinds[:2] == [("status", "queued"), ("status", "running")]
    assert {e.type for e in live[2:-1]} == {"output"} and kinds[-1] == ("result", "success")
    assert [e.seq for e in live] == list(range(1, len(live) + 1))
    assert "".join(e.body["data"] for e in live if e.type == "output" and e.body["stream"] == "stdout") == "hello\n"
    await sub.outcome()
    # Ended: replayed from the store, the same events from any seq.
    replayed = await collect(await w.service.events(w.principal, sub.trace_id, 2))
    assert [e.seq for e in replayed] == [e.seq for e in live[2:]]
    assert [e.type for e in replayed] == [e.type for e in live[2:]]
    assert replayed[-1].body["result"]["stdout"] == "hello\n"


async def test_a_follower_mid_run_sees_the_rest_live(w: World) -> None:
    sub = await w.service.submit(w.principal, request("sleep"))
    await running(w, sub.trace_id)
    follower = asyncio.ensure_future(collect(await w.service.events(w.principal, sub.trace_id, 1)))
    await w.service.cancel(w.principal, sub.trace_id)
    events = await follower
    assert events[0].seq == 2 and events[-1].type == "result" and events[-1].body["status"] == "cancelled"


# --------------------------------------------------------------------------- webhooks


async def test_a_webhook_run_registers_a_delivery_and_kicks_the_sender_when_it_ends(w: World) -> None:
    await w.webhooks.create_secret(w.principal.org.id)
    sub = await w.service.submit(w.principal, request("hello", webhook_url=HOOK), delivery_mode="webhook")
    delivery = await w.store.webhooks.delivery_for(sub.trace_id)
    assert delivery is not None and (delivery.url, delivery.status) == (HOOK, "pending")
    await sub.outcome()
    assert w.webhooks.kicks == 1
    await w.service.execute(w.principal, request("hello"))
    assert w.webhooks.kicks == 1  # only webhook runs wake the sender


# --------------------------------------------------------------------------- the job description


def test_a_job_description_round_trips_through_json() -> None:
    job = JobDescription(
        trace_id="trc_1", org_id="org_1", org_gid=2_000_001, key_id="key_1", language="python",
        code="print('\u00e9')\n\udcff", env={"A": "1"}, limits=replace(Limits(), timeout_s=5.0, cpus=0.5),
        network="allowlist", network_allow=("pypi.org", "*.example.com:8443"),
        volumes=(VolumeBinding("org_1", "data", True),), thread_id="t1", webhook=True,
        image=RootImage("ds", "sha256:" + "b" * 64, "/x/roots/img_1", (("python", "/opt/py/bin/python3"),),
                        (("PATH", "/opt/py/bin:/usr/bin"),)),
        connectors=(ConnectorBinding("con_1", "db", "postgres", ("DATABASE_URL", "PGHOST")),),
        client_ip="192.0.2.4", member_id="mem_1", member_email="max@example.com",  # a console run's audit facts
    )
    text = job.to_json()
    assert isinstance(json.loads(text), dict)
    assert JobDescription.from_json(text) == job
    spec = JobDescription.from_json(text).spec()
    assert spec.code == job.code.encode("utf-8", errors="surrogatepass") and spec.host_gid == 2_000_001
    assert spec.home is None and spec.host_uid is None and spec.mounts == ()  # decided by the job
    assert spec.image == job.image and spec.image.binary("python") == "/opt/py/bin/python3"
    assert "con_1" in text and not spec.egress  # ids only: the secrets are opened where it runs


def test_outcome_is_what_the_surfaces_report() -> None:
    outcome = Outcome("trc_1", "success", 0, "x", "", None, 5, False)
    assert outcome.success and outcome.result()["stdout"] == "x"
