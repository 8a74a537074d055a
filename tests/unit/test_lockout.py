"""The failed-auth lockout: counting, windows, Retry-After, and keys known to a client."""

from __future__ import annotations

import pytest

from sandboxd.errors import RateLimited
from sandboxd.service.lockout import AuthFailureLimiter

class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def limiter(clock: FakeClock) -> AuthFailureLimiter:
    return AuthFailureLimiter(allowed=3, window_s=60, lockout_s=300, clock=clock)


def locked_for(limiter: AuthFailureLimiter, ip: str, digest: str | None = None) -> int | None:
    """retry_after while locked out, else None."""
    try:
        limiter.check(ip, digest)
    except RateLimited as exc:
        assert exc.code == "rate_limited"
        return exc.retry_after
    return None


def test_below_threshold_not_locked(limiter: AuthFailureLimiter, clock: FakeClock) -> None:
    limiter.failed("10.0.0.1")
    clock.advance(1)
    limiter.failed("10.0.0.1")
    assert locked_for(limiter, "10.0.0.1") is None


def test_three_failures_in_window_lock_out(limiter: AuthFailureLimiter, clock: FakeClock) -> None:
    for _ in range(3):
        assert locked_for(limiter, "10.0.0.1") is None
        limiter.failed("10.0.0.1")
        clock.advance(10)
    retry = locked_for(limiter, "10.0.0.1")
    assert retry is not None and 280 <= retry <= 291  # 300 s from the 3rd failure, 10 s ago
    # Only that address.
    assert locked_for(limiter, "10.0.0.2") is None


def test_retry_after_counts_down_and_lockout_ends(limiter: AuthFailureLimiter, clock: FakeClock) -> None:
    for _ in range(3):
        limiter.failed("10.0.0.1")
    seen = []
    for step in (0, 100, 100, 99.5):
        clock.advance(step)
        retry = locked_for(limiter, "10.0.0.1")
        assert retry is not None and retry >= 1
        seen.append(retry)
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == len(seen)
    assert seen[0] in (300, 301)
    assert seen[-1] == 1  # 0.5 s left: rounded up, never 0
    clock.advance(0.5)
    assert locked_for(limiter, "10.0.0.1") is None
    assert locked_for(limiter, "10.0.0.1") is None  # and stays open


def test_counter_starts_over_after_lockout(limiter: AuthFailureLimiter, clock: FakeClock) -> None:
    for _ in range(3):
        limiter.failed("10.0.0.1")
    clock.advance(301)
    assert locked_for(limiter, "10.0.0.1") is None
    limiter.failed("10.0.0.1")
    limiter.failed("10.0.0.1")
    assert locked_for(limiter, "10.0.0.1") is None
    limiter.failed("10.0.0.1")
    assert locked_for(limiter, "10.0.0.1") is not None


def test_failures_outside_window_do_not_accumulate(
    limiter: AuthFailureLimiter, clock: FakeClock
) -> None:
    # One failure every 40 s: never three within 60 s.
    for _ in range(10):
        limiter.failed("10.0.0.1")
        assert locked_for(limiter, "10.0.0.1") is None
        clock.advance(40)
    # The last spaced failure (40 s ago) is still in the window: two quick ones make three.
    limiter.failed("10.0.0.1")
    assert locked_for(limiter, "10.0.0.1") is None
    clock.advance(5)
    limiter.failed("10.0.0.1")
    assert locked_for(limiter, "10.0.0.1") is not None


def test_slow_failures_then_burst(limiter: AuthFailureLimiter, clock: FakeClock) -> None:
    limiter.failed("10.0.0.1")
    clock.advance(61)  # the first has left the window
    limiter.failed("10.0.0.1")
    limiter.failed("10.0.0.1")
    assert locked_for(limiter, "10.0.0.1") is None
    limiter.failed("10.0.0.1")
    assert locked_for(limiter, "10.0.0.1") is not None


def test_addresses_counted_separately(limiter: AuthFailureLimiter) -> None:
    for ip in ("10.0.0.1", "10.0.0.2", "::1"):
        limiter.failed(ip)
        limiter.failed(ip)
    for ip in ("10.0.0.1", "10.0.0.2", "::1"):
        assert locked_for(limiter, ip) is None
    limiter.failed("::1")
    assert locked_for(limiter, "::1") is not None
    assert locked_for(limiter, "10.0.0.1") is None


def test_real_clock_default() -> None:
    limiter = AuthFailureLimiter(allowed=1, window_s=60, lockout_s=30)
    limiter.failed("10.0.0.9")
    retry = locked_for(limiter, "10.0.0.9")
    assert retry is not None and 1 <= retry <= 31


@pytest.mark.parametrize("elapsed", [0, 0.25, 150.5, 298.5, 299.9])
def test_retry_after_never_shorter_than_the_lockout_left(
    limiter: AuthFailureLimiter, clock: FakeClock, elapsed: float
) -> None:
    for _ in range(3):
        limiter.failed("10.0.0.1")
    clock.advance(elapsed)
    remaining = 300 - elapsed
    retry = locked_for(limiter, "10.0.0.1")
    assert retry is not None
    assert remaining <= retry <= remaining + 1  # whole seconds, rounded up


# --------------------------------------------------------------------------- other clients


def test_a_key_known_to_the_client_passes_a_lockout_and_others_do_not(
    limiter: AuthFailureLimiter, clock: FakeClock
) -> None:
    limiter.succeeded("10.0.0.1", "good")
    for _ in range(3):
        limiter.failed("10.0.0.1", "guess")
    assert locked_for(limiter, "10.0.0.1", "good") is None
    # refused alike, with no lookup: a valid key never seen from here, a guess, no key
    for digest in ("valid-elsewhere", "guess", None):
        assert locked_for(limiter, "10.0.0.1", digest) is not None
    # known from another address does not count here
    limiter.succeeded("10.0.0.2", "other")
    assert locked_for(limiter, "10.0.0.1", "other") is not None


def test_a_known_key_that_fails_is_forgotten(limiter: AuthFailureLimiter) -> None:
    limiter.succeeded("10.0.0.1", "revoked")
    for _ in range(3):
        limiter.failed("10.0.0.1", "revoked")
    assert locked_for(limiter, "10.0.0.1", "revoked") is not None


def test_known_keys_expire(clock: FakeClock) -> None:
    limiter = AuthFailureLimiter(allowed=1, window_s=60, lockout_s=3600, clock=clock, remember_s=100)
    limiter.succeeded("10.0.0.1", "good")
    clock.advance(101)
    limiter.failed("10.0.0.1")
    assert locked_for(limiter, "10.0.0.1", "good") is not None


def test_an_ipv6_client_is_its_64(limiter: AuthFailureLimiter) -> None:
    for host in ("2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff::3"):
        limiter.failed(host)
    assert locked_for(limiter, "2001:db8:1:2::99") is not None
    assert locked_for(limiter, "2001:db8:1:3::1") is None
    # an IPv4-mapped address is the IPv4 client
    for _ in range(3):
        limiter.failed("::ffff:10.0.0.7")
    assert locked_for(limiter, "10.0.0.7") is not None
