"""Resource peaks read from a sandbox's cgroup (runtime/sandbox.py `with_usage`) and what an
execution adds to its organization's month (service/job.py `usage_of`)."""

from __future__ import annotations

from sandboxd.runtime import ExecResult, ExecStatus, Limits
from sandboxd.runtime.cgroups import CgroupStats
from sandboxd.runtime.sandbox import with_usage
from sandboxd.service.job import Outcome, usage_of


class FakeGroup:
    def __init__(self, stats: CgroupStats | Exception) -> None:
        self._stats = stats

    def stats(self) -> CgroupStats:
        if isinstance(self._stats, Exception):
            raise self._stats
        return self._stats


RESULT = ExecResult(ExecStatus.SUCCESS, 0, b"", b"", False, False, 1500)


def test_with_usage_reads_cpu_and_peak_and_subtracts_a_sessions_earlier_runs() -> None:
    got = with_usage(RESULT, FakeGroup(CgroupStats(cpu_ms=1200, memory_peak_bytes=50_000_000)))  # type: ignore[arg-type]
    assert (got.cpu_ms, got.memory_peak_bytes) == (1200, 50_000_000)
    since = CgroupStats(cpu_ms=1000, memory_peak_bytes=1)
    later = with_usage(RESULT, FakeGroup(CgroupStats(cpu_ms=1300, memory_peak_bytes=9)), since)  # type: ignore[arg-type]
    assert (later.cpu_ms, later.memory_peak_bytes) == (300, 9)
    unreadable = with_usage(RESULT, FakeGroup(OSError("gone")))  # type: ignore[arg-type]
    assert unreadable.cpu_ms is None and unreadable.memory_peak_bytes is None


class Job:
    limits = Limits(memory_mib=512)


def test_usage_of_is_cpu_seconds_and_memory_gib_times_duration() -> None:
    outcome = Outcome("trc_x", "success", 0, "", "", None, 2000, False, resources={"cpu_ms": 1500, "memory_peak_bytes": 1})
    assert usage_of(Job(), outcome) == (1.5, 1.0)  # type: ignore[arg-type]
    never_ran = Outcome("trc_y", "failed", -1, "", "", "sandbox_error", 0, False)
    assert usage_of(Job(), never_ran) == (0.0, 0.0)  # type: ignore[arg-type]
