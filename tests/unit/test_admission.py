"""Admission control: concurrency caps and failed-authentication lockout."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

from sandboxd.errors import RateLimited
from sandboxd.service.admission import ConcurrencyLimiter

# --------------------------------------------------------------------------- concurrency


@contextmanager
def slot(limiter: ConcurrencyLimiter, org: str, org_cap: int | None = None) -> Iterator[None]:
    """Hold one slot for the body, as the execution service does around a run."""
    release = limiter.acquire(org, org_cap)
    try:
        yield
    finally:
        release()


def hold(stack: ExitStack, limiter: ConcurrencyLimiter, org: str, org_cap: int | None = None) -> None:
    stack.enter_context(slot(limiter, org, org_cap))


def refused(limiter: ConcurrencyLimiter, org: str, org_cap: int | None = None) -> RateLimited:
    before = limiter.running
    with pytest.raises(RateLimited) as info:
        with slot(limiter, org, org_cap):
            pytest.fail("the body must not run when refused")
    assert limiter.running == before  # a refusal takes no slot
    assert info.value.code == "rate_limited"
    assert info.value.retry_after >= 1
    return info.value


def test_slot_counts_and_releases() -> None:
    limiter = ConcurrencyLimiter(global_cap=4, per_org_cap=4)
    assert limiter.running == 0
    with slot(limiter, "org-a"):
        assert limiter.running == 1
        with slot(limiter, "org-b"):
            assert limiter.running == 2
        assert limiter.running == 1
    assert limiter.running == 0


def test_per_org_cap() -> None:
    limiter = ConcurrencyLimiter(global_cap=10, per_org_cap=2)
    with ExitStack() as stack:
        hold(stack, limiter, "org-a")
        hold(stack, limiter, "org-a")
        err = refused(limiter, "org-a")
        assert "organization" in err.message and "2" in err.message
        # Another organization is not affected by org-a's cap.
        with slot(limiter, "org-b"):
            assert limiter.running == 3
    assert limiter.running == 0
    # Released: org-a can run its full cap again.
    with ExitStack() as stack:
        hold(stack, limiter, "org-a")
        hold(stack, limiter, "org-a")
        assert limiter.running == 2


def test_global_cap() -> None:
    limiter = ConcurrencyLimiter(global_cap=3, per_org_cap=2)
    with ExitStack() as stack:
        hold(stack, limiter, "org-a")
        hold(stack, limiter, "org-a")
        hold(stack, limiter, "org-b")
        err = refused(limiter, "org-c")  # within its own cap, but the server is full
        assert "server" in err.message
        refused(limiter, "org-b")
    assert limiter.running == 0
    with slot(limiter, "org-c"):
        assert limiter.running == 1


def test_release_when_body_raises() -> None:
    limiter = ConcurrencyLimiter(global_cap=1, per_org_cap=1)
    with pytest.raises(ZeroDivisionError):
        with slot(limiter, "org-a"):
            1 / 0
    assert limiter.running == 0
    with slot(limiter, "org-a"):  # the slot came back, for the org and globally
        assert limiter.running == 1


async def test_release_when_cancelled() -> None:
    limiter = ConcurrencyLimiter(global_cap=1, per_org_cap=1)
    entered = asyncio.Event()

    async def body() -> None:
        with slot(limiter, "org-a"):
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(body())
    await entered.wait()
    assert limiter.running == 1
    refused(limiter, "org-a")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert limiter.running == 0


def test_refused_nested_slot_does_not_release_the_outer_one() -> None:
    limiter = ConcurrencyLimiter(global_cap=5, per_org_cap=1)
    with slot(limiter, "org-a"):
        refused(limiter, "org-a")
        refused(limiter, "org-a")
        assert limiter.running == 1
    assert limiter.running == 0
    with slot(limiter, "org-a"):
        refused(limiter, "org-a")  # still exactly one for org-a after the refusals


def test_org_override_cap_raises_the_limit() -> None:
    limiter = ConcurrencyLimiter(global_cap=10, per_org_cap=1)
    with ExitStack() as stack:
        for _ in range(3):
            hold(stack, limiter, "big", org_cap=3)
        err = refused(limiter, "big", org_cap=3)
        assert "3" in err.message
        assert limiter.running == 3
        # The default still applies to others.
        hold(stack, limiter, "small")
        refused(limiter, "small")


def test_org_override_cap_lowers_the_limit() -> None:
    limiter = ConcurrencyLimiter(global_cap=10, per_org_cap=5)
    with slot(limiter, "tiny", org_cap=1):
        refused(limiter, "tiny", org_cap=1)
    refused(limiter, "blocked", org_cap=0)


def test_release_is_idempotent() -> None:
    limiter = ConcurrencyLimiter(global_cap=2, per_org_cap=2)
    release = limiter.acquire("org-a")
    other = limiter.acquire("org-a")
    release()
    release()  # a second call must not give back a slot it does not hold
    assert limiter.running == 1
    other()
    assert limiter.running == 0
