"""Admission control: execution slots (caps, fair share, reserve, queue) and failed-auth lockout."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from sandboxd.config import Settings
from sandboxd.errors import RateLimited, Unavailable
from sandboxd.service.admission import ConcurrencyLimiter, caller_gone

# --------------------------------------------------------------------------- concurrency

#: Long enough that a test which waited for it would hang (and fail by its own deadline).
FOREVER_S = 3600.0


@asynccontextmanager
async def slot(limiter: ConcurrencyLimiter, org: str, org_cap: int | None = None) -> AsyncIterator[None]:
    """Hold one slot for the body, as the execution service does around a run."""
    release = await limiter.acquire(org, org_cap)
    try:
        yield
    finally:
        release()


async def hold(
    stack: AsyncExitStack, limiter: ConcurrencyLimiter, org: str, org_cap: int | None = None
) -> None:
    await stack.enter_async_context(slot(limiter, org, org_cap))


async def refused(limiter: ConcurrencyLimiter, org: str, org_cap: int | None = None) -> RateLimited:
    """Refused with 429, at once (a refusal that waited out FOREVER_S would fail the deadline)."""
    before = limiter.running
    with pytest.raises(RateLimited) as info:
        async with asyncio.timeout(10):
            async with slot(limiter, org, org_cap):
                pytest.fail("the body must not run when refused")
    assert limiter.running == before  # a refusal takes no slot
    assert info.value.code == "rate_limited"
    assert info.value.retry_after >= 1
    return info.value


async def settle() -> None:
    """Let every ready task run (waiters enqueue, granted waiters resume)."""
    for _ in range(5):
        await asyncio.sleep(0)


def waiter(
    limiter: ConcurrencyLimiter, org: str, got: list[str] | None = None, name: str = ""
) -> asyncio.Task[Callable[[], None]]:
    """A request waiting for a slot in the background; appends `name` to `got` once admitted."""

    async def wait() -> Callable[[], None]:
        release = await limiter.acquire(org)
        if got is not None:
            got.append(name or org)
        return release

    return asyncio.create_task(wait())


async def test_slot_counts_and_releases() -> None:
    limiter = ConcurrencyLimiter(global_cap=4, per_org_cap=4)
    assert limiter.running == 0
    async with slot(limiter, "org-a"):
        assert limiter.running == 1
        async with slot(limiter, "org-b"):
            assert limiter.running == 2
        assert limiter.running == 1
    assert limiter.running == 0


async def test_per_org_cap() -> None:
    limiter = ConcurrencyLimiter(global_cap=10, per_org_cap=2)
    async with AsyncExitStack() as stack:
        await hold(stack, limiter, "org-a")
        await hold(stack, limiter, "org-a")
        err = await refused(limiter, "org-a")
        assert "organization" in err.message and "2" in err.message
        # Another organization is not affected by org-a's cap.
        async with slot(limiter, "org-b"):
            assert limiter.running == 3
    assert limiter.running == 0
    # Released: org-a can run its full cap again.
    async with AsyncExitStack() as stack:
        await hold(stack, limiter, "org-a")
        await hold(stack, limiter, "org-a")
        assert limiter.running == 2


async def test_global_cap() -> None:
    limiter = ConcurrencyLimiter(global_cap=3, per_org_cap=2)
    async with AsyncExitStack() as stack:
        await hold(stack, limiter, "org-a")
        await hold(stack, limiter, "org-a")
        await hold(stack, limiter, "org-b")
        err = await refused(limiter, "org-c")  # within its own cap, but the server is full
        assert "server" in err.message
        await refused(limiter, "org-b")
    assert limiter.running == 0
    async with slot(limiter, "org-c"):
        assert limiter.running == 1


async def test_release_when_body_raises() -> None:
    limiter = ConcurrencyLimiter(global_cap=1, per_org_cap=1)
    with pytest.raises(ZeroDivisionError):
        async with slot(limiter, "org-a"):
            1 / 0
    assert limiter.running == 0
    async with slot(limiter, "org-a"):  # the slot came back, for the org and globally
        assert limiter.running == 1


async def test_release_when_cancelled() -> None:
    limiter = ConcurrencyLimiter(global_cap=1, per_org_cap=1)
    entered = asyncio.Event()

    async def body() -> None:
        async with slot(limiter, "org-a"):
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(body())
    await entered.wait()
    assert limiter.running == 1
    await refused(limiter, "org-a")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limiter.running == 0


async def test_refused_nested_slot_does_not_release_the_outer_one() -> None:
    limiter = ConcurrencyLimiter(global_cap=5, per_org_cap=1)
    async with slot(limiter, "org-a"):
        await refused(limiter, "org-a")
        await refused(limiter, "org-a")
        assert limiter.running == 1
    assert limiter.running == 0
    async with slot(limiter, "org-a"):
        await refused(limiter, "org-a")  # still exactly one for org-a after the refusals


async def test_org_override_cap_raises_the_limit() -> None:
    limiter = ConcurrencyLimiter(global_cap=10, per_org_cap=1)
    async with AsyncExitStack() as stack:
        for _ in range(3):
            await hold(stack, limiter, "big", org_cap=3)
        err = await refused(limiter, "big", org_cap=3)
        assert "3" in err.message
        assert limiter.running == 3
        # The default still applies to others.
        await hold(stack, limiter, "small")
        await refused(limiter, "small")


async def test_org_override_cap_lowers_the_limit() -> None:
    limiter = ConcurrencyLimiter(global_cap=10, per_org_cap=5)
    async with slot(limiter, "tiny", org_cap=1):
        await refused(limiter, "tiny", org_cap=1)
    await refused(limiter, "blocked", org_cap=0)


# --- fairness: the default share and the reserve ---------------------------------------------


@pytest.mark.parametrize(("global_cap", "cap"), [(8, 8 + 64), (9, 9 + 72), (1, 1 + 8)])
def test_default_per_org_cap_fills_the_server_and_half_the_queue(global_cap: int, cap: int) -> None:
    assert Settings(max_concurrent=global_cap).max_concurrent_per_org == cap
    assert Settings(max_concurrent=global_cap, admission_queue_max=10).max_concurrent_per_org == global_cap + 5
    assert Settings(max_concurrent=global_cap, max_concurrent_per_org=7).max_concurrent_per_org == 7


async def test_reserve_admits_an_idle_org_while_another_saturates() -> None:
    limiter = ConcurrencyLimiter(global_cap=4, per_org_cap=4, reserve=1)
    async with AsyncExitStack() as stack:
        for _ in range(3):
            await hold(stack, limiter, "busy")
        # free = 1 = the reserve: busy (which runs something) may not take it ...
        assert "server" in (await refused(limiter, "busy")).message
        # ... an organization with nothing running may, at once
        await hold(stack, limiter, "idle")
        assert limiter.running == 4
        await refused(limiter, "third")  # now the server is full for everyone


async def test_first_run_of_an_org_ignores_the_reserve() -> None:
    limiter = ConcurrencyLimiter(global_cap=2, per_org_cap=2, reserve=2)
    async with AsyncExitStack() as stack:
        await hold(stack, limiter, "a")  # free 2, not > 2, but org a had nothing running
        await hold(stack, limiter, "b")
        assert limiter.running == 2


# --- the queue ----------------------------------------------------------------------------------


async def test_waits_for_a_slot_instead_of_429() -> None:
    limiter = ConcurrencyLimiter(global_cap=1, per_org_cap=5, wait_s=FOREVER_S, queue_max=10)
    first = await limiter.acquire("a")
    queued = waiter(limiter, "b")
    await settle()
    assert not queued.done() and limiter.waiting == 1 and limiter.running == 1
    first()
    release = await asyncio.wait_for(queued, 10)
    assert limiter.running == 1 and limiter.waiting == 0
    release()
    assert limiter.running == 0


async def test_freed_slot_goes_to_fewest_running_org_then_oldest() -> None:
    limiter = ConcurrencyLimiter(global_cap=2, per_org_cap=10, wait_s=FOREVER_S, queue_max=10)
    a1, a2 = await limiter.acquire("a"), await limiter.acquire("a")
    got: list[str] = []
    tasks = [waiter(limiter, "a", got, "a-first"), waiter(limiter, "a", got, "a-second"),
             waiter(limiter, "b", got, "b-first"), waiter(limiter, "c", got, "c-first")]
    await settle()
    assert got == [] and limiter.waiting == 4
    a1()  # a runs 1, b and c none: the oldest of b and c
    await settle()
    assert got == ["b-first"]
    a2()  # a 0, b 1, c 0: a and c tie on running; a's head came first
    await settle()
    assert got == ["b-first", "a-first"]
    (await tasks[2])()  # b done: c (0 running) before a (1 running)
    await settle()
    assert got == ["b-first", "a-first", "c-first"]
    (await tasks[0])()
    await settle()
    assert got == ["b-first", "a-first", "c-first", "a-second"]
    for t in (tasks[1], tasks[3]):
        (await t)()
    assert limiter.running == 0 and limiter.waiting == 0


async def test_queued_waiter_respects_the_reserve() -> None:
    limiter = ConcurrencyLimiter(global_cap=3, per_org_cap=3, reserve=1, wait_s=FOREVER_S, queue_max=10)
    a1, a2 = await limiter.acquire("a"), await limiter.acquire("a")
    got: list[str] = []
    queued_a = waiter(limiter, "a", got)
    await settle()
    assert got == []  # free 1 = the reserve: a waits
    b = await asyncio.wait_for(limiter.acquire("b"), 10)  # b had none running: it takes it
    a1()  # now free 1 again: still the reserve, a keeps waiting
    await settle()
    assert got == []
    b()  # free 2 > reserve
    await settle()
    assert got == ["a"]
    (await queued_a)()
    a2()
    assert limiter.running == 0


async def test_wait_ends_in_429_with_retry_after() -> None:
    limiter = ConcurrencyLimiter(global_cap=1, per_org_cap=5, wait_s=0.2, queue_max=10)
    first = await limiter.acquire("a")
    err = await refused(limiter, "b")
    assert "waited" in err.message and err.retry_after >= 1
    assert limiter.waiting == 0
    first()
    async with slot(limiter, "b"):  # nothing of the timed-out waiter is left
        assert limiter.running == 1


async def test_queue_is_bounded() -> None:
    limiter = ConcurrencyLimiter(global_cap=1, per_org_cap=5, wait_s=FOREVER_S, queue_max=1)
    first = await limiter.acquire("a")
    queued = waiter(limiter, "b")
    await settle()
    await refused(limiter, "c")  # the queue is full: at once
    first()
    (await asyncio.wait_for(queued, 10))()
    assert limiter.running == 0


async def test_org_cap_counts_waiting_requests_and_is_immediate() -> None:
    limiter = ConcurrencyLimiter(global_cap=1, per_org_cap=2, wait_s=FOREVER_S, queue_max=10)
    first = await limiter.acquire("a")
    queued = waiter(limiter, "a")
    await settle()
    assert "organization" in (await refused(limiter, "a")).message  # 1 running + 1 waiting = cap
    first()
    (await asyncio.wait_for(queued, 10))()


async def test_cancelled_while_queued_leaves_and_takes_no_slot() -> None:
    limiter = ConcurrencyLimiter(global_cap=1, per_org_cap=1, wait_s=FOREVER_S, queue_max=1)
    first = await limiter.acquire("a")
    gone = waiter(limiter, "b")
    await settle()
    assert limiter.waiting == 1
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert limiter.waiting == 0
    got: list[str] = []
    after = waiter(limiter, "b", got)  # its place (and b's cap) is free again
    await settle()
    first()
    await settle()
    assert got == ["b"] and limiter.running == 1
    (await after)()
    assert limiter.running == 0


async def test_caller_gone_while_queued_leaves_and_takes_no_slot() -> None:
    """The REST API sets caller_gone when the client disconnects (api/disconnect.py)."""
    limiter = ConcurrencyLimiter(global_cap=1, per_org_cap=1, wait_s=FOREVER_S, queue_max=10)
    first = await limiter.acquire("a")
    gone = asyncio.Event()
    token = caller_gone.set(gone)
    try:
        left = waiter(limiter, "b")  # the task copies the context: it sees `gone`
    finally:
        caller_gone.reset(token)
    await settle()
    assert limiter.waiting == 1
    gone.set()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(left, 10)
    assert limiter.waiting == 0
    first()
    assert limiter.running == 0  # nobody was handed the slot


async def test_cancelled_just_after_being_handed_a_slot_gives_it_back() -> None:
    limiter = ConcurrencyLimiter(global_cap=1, per_org_cap=1, wait_s=FOREVER_S, queue_max=10)
    first = await limiter.acquire("a")
    gone = waiter(limiter, "b")
    await settle()
    first()  # the slot is handed to b's waiter, which has not resumed yet ...
    gone.cancel()  # ... when its client goes away
    with pytest.raises(asyncio.CancelledError):
        await gone
    assert limiter.running == 0 and limiter.waiting == 0


async def test_close_refuses_waiters_and_later_requests_with_503() -> None:
    limiter = ConcurrencyLimiter(global_cap=1, per_org_cap=5, wait_s=FOREVER_S, queue_max=10)
    first = await limiter.acquire("a")
    queued = waiter(limiter, "b")
    await settle()
    limiter.close()
    with pytest.raises(Unavailable):
        await asyncio.wait_for(queued, 10)
    with pytest.raises(Unavailable):
        await limiter.acquire("c")
    first()  # a draining run gives its slot back to nobody
    assert limiter.running == 0 and limiter.waiting == 0


async def test_release_is_idempotent() -> None:
    limiter = ConcurrencyLimiter(global_cap=2, per_org_cap=2)
    release = await limiter.acquire("org-a")
    other = await limiter.acquire("org-a")
    release()
    release()  # a second call must not give back a slot it does not hold
    assert limiter.running == 1
    other()
    assert limiter.running == 0
