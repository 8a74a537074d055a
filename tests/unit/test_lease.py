"""Leases (runtime/lease.py) in a private directory: clashes refused, ranges picked, dead
leases swept, one server per data dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sandboxd.errors import SandboxSetupError
from sandboxd.runtime import lease


@pytest.fixture(autouse=True)
def leases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(lease, "LEASES", tmp_path / "leases")
    monkeypatch.setattr(lease, "_TAKEOVER_S", 0.2)
    return tmp_path / "leases"


def _server(name: str, sandbox: range, threads: range, data_dir: str = "/srv/a") -> lease.Lease:
    return lease.acquire(name=name, role="server", data_dir=data_dir, sandbox_uids=sandbox,
                         thread_uids=threads, cgroups=[])


def test_a_server_with_overlapping_sandbox_uids_is_refused_naming_the_setting() -> None:
    held = _server("a", range(200_000, 200_040), range(1_000_000, 2_000_000))
    with pytest.raises(SandboxSetupError, match="SANDBOXD_SANDBOX_UID_BASE") as refused:
        _server("b", range(200_030, 200_070), range(3_000_000, 4_000_000), "/srv/b")
    assert "/srv/a" in refused.value.message and str(os.getpid()) in refused.value.message
    held.close()
    _server("b", range(200_030, 200_070), range(3_000_000, 4_000_000), "/srv/b").close()


def test_a_server_whose_threads_overlap_another_is_refused() -> None:
    _server("a", range(200_000, 200_040), range(1_000_000, 2_000_000))
    with pytest.raises(SandboxSetupError, match="SANDBOXD_THREAD_UID_BASE"):
        _server("b", range(300_000, 300_040), range(1_500_000, 2_500_000), "/srv/b")
    with pytest.raises(SandboxSetupError, match="SANDBOXD_SANDBOX_UID_BASE"):  # into a's threads
        _server("c", range(1_000_100, 1_000_140), range(5_000_000, 6_000_000), "/srv/c")


def test_one_server_per_data_dir() -> None:
    _server("a", range(200_000, 200_040), range(1_000_000, 2_000_000))
    with pytest.raises(SandboxSetupError, match="already running on data dir /srv/a"):
        _server("a", range(400_000, 400_040), range(5_000_000, 6_000_000))


def test_run_picks_a_range_clear_of_every_live_lease_and_of_its_server() -> None:
    _server("a", range(200_000, 200_040), range(1_000_000, 2_000_000))
    _server("b", range(200_040, 200_080), range(3_000_000, 4_000_000), "/srv/b")
    run = lease.acquire(name="a-run1", role="run", data_dir="/srv/a", sandbox_uids=range(200_000, 200_016),
                        cgroups=[], avoid=[range(200_080, 200_100)])
    assert run.sandbox_uids == range(200_100, 200_116)
    again = lease.acquire(name="a-run2", role="run", data_dir="/srv/a", sandbox_uids=range(200_000, 200_016),
                          cgroups=[], avoid=[range(200_080, 200_100)])
    assert again.sandbox_uids == range(200_116, 200_132)  # the first run's range is taken too


def test_a_dead_lease_is_swept_and_frees_its_uids(tmp_path: Path) -> None:
    group = tmp_path / "cg" / "parent"
    group.mkdir(parents=True)
    held = lease.acquire(name="a", role="server", data_dir="/srv/a", sandbox_uids=range(200_000, 200_040),
                         cgroups=[group])
    os.close(held.fd)  # its holder died: the kernel drops the lock, the file stays
    assert held.path.exists()
    assert lease.live_leases() == []
    assert not held.path.exists() and not group.exists()  # swept: its cgroup parent removed
    _server("b", range(200_000, 200_040), range(1_000_000, 2_000_000), "/srv/b")
