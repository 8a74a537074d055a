"""cgroup v2 driver against a fake cgroup2 tree of plain files, and the shared parsing helpers.

A real cgroup2 directory gets its interface files from the kernel on mkdir; a tmp directory
does not. So: files the driver *reads* from the delegated root are created here, files it
*writes* appear because write_text creates them, and the one branch that depends on a
kernel-created file (memory.swap.max) is tested both ways, the kernel's part simulated.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from sandboxd.errors import SandboxSetupError
from sandboxd.runtime.cgroups import base, v2
from sandboxd.runtime.cgroups.base import read_int, read_keyed, read_pids, rmdir_retrying, write
from sandboxd.runtime.cgroups.v1 import CgroupV1Group
from sandboxd.runtime.cgroups.v2 import CgroupV2Driver, CgroupV2Group
from sandboxd.runtime.spec import Limits

MIB = 1024 * 1024


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A delegated cgroup2 root: controllers available, no member processes."""
    (tmp_path / "cgroup.controllers").write_text("memory pids cpu\n")
    (tmp_path / "cgroup.procs").write_text("")
    (tmp_path / "cgroup.subtree_control").write_text("")
    return tmp_path


@pytest.fixture
def driver(root: Path) -> CgroupV2Driver:
    d = CgroupV2Driver("test", root=root)
    d.prepare()
    return d


def enabled(path: Path) -> set[str]:
    return set((path / "cgroup.subtree_control").read_text().split())


# --------------------------------------------------------------------------- prepare


def test_prepare_enables_controllers_on_root_and_parent(root: Path) -> None:
    CgroupV2Driver("inst", root=root).prepare()
    parent = root / "sandboxd-inst"
    assert parent.is_dir()
    assert enabled(root) == {"+memory", "+pids", "+cpu"}
    assert enabled(parent) == {"+memory", "+pids", "+cpu"}


def test_prepare_accepts_extra_controllers(root: Path) -> None:
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    CgroupV2Driver("inst", root=root).prepare()
    assert enabled(root / "sandboxd-inst") == {"+memory", "+pids", "+cpu"}


@pytest.mark.parametrize(
    ("available", "missing"),
    [
        ("pids cpu", ["memory"]),
        ("memory cpu", ["pids"]),
        ("memory pids", ["cpu"]),
        ("cpuset io", ["memory", "pids", "cpu"]),
        ("", ["memory", "pids", "cpu"]),
    ],
)
def test_prepare_refuses_missing_controllers(root: Path, available: str, missing: list[str]) -> None:
    (root / "cgroup.controllers").write_text(available + "\n")
    with pytest.raises(SandboxSetupError) as info:
        CgroupV2Driver("inst", root=root).prepare()
    assert info.value.code == "sandbox_error"
    assert info.value.step == "cgroup v2"
    for name in missing:
        assert name in info.value.message
    # Fail closed before touching anything.
    assert not (root / "sandboxd-inst").exists()
    assert (root / "cgroup.subtree_control").read_text() == ""


def test_prepare_is_idempotent_and_sweeps_stale_groups(root: Path) -> None:
    CgroupV2Driver("inst", root=root).prepare()
    parent = root / "sandboxd-inst"
    # Left behind by a crashed run: empty groups (a real kernel dir has only interface files).
    (parent / "x-stale1").mkdir()
    (parent / "x-stale2").mkdir()
    CgroupV2Driver("inst", root=root).prepare()
    assert parent.is_dir()
    assert sorted(p.name for p in parent.iterdir() if p.is_dir()) == []
    assert (parent / "cgroup.subtree_control").exists()  # files are not groups: left alone


def test_instances_do_not_sweep_each_other(root: Path) -> None:
    CgroupV2Driver("one", root=root).prepare()
    (root / "sandboxd-one" / "x-running").mkdir()
    CgroupV2Driver("two", root=root).prepare()
    assert (root / "sandboxd-one" / "x-running").is_dir()


def test_prepare_fails_closed_when_subtree_control_unwritable(root: Path) -> None:
    (root / "cgroup.subtree_control").unlink()
    (root / "cgroup.subtree_control").mkdir()  # writing to a directory fails with EISDIR
    with pytest.raises(SandboxSetupError) as info:
        CgroupV2Driver("inst", root=root).prepare()
    assert info.value.step == "cgroup v2 subtree_control"


# --------------------------------------------------------------------------- create


@pytest.mark.parametrize(
    ("limits", "memory", "pids", "cpu"),
    [
        (Limits(), 1024 * MIB, 256, "100000 100000"),
        (Limits(memory_mib=64, pids_max=16, cpus=0.5), 64 * MIB, 16, "50000 100000"),
        (Limits(memory_mib=4096, pids_max=4096, cpus=2.5), 4096 * MIB, 4096, "250000 100000"),
        (Limits(cpus=0.05), 1024 * MIB, 256, "5000 100000"),
        (Limits(cpus=0.001), 1024 * MIB, 256, "1000 100000"),  # the kernel's minimum quota
    ],
    ids=["defaults", "small", "large", "five-percent", "below-min"],
)
def test_create_writes_limits(
    driver: CgroupV2Driver, root: Path, limits: Limits, memory: int, pids: int, cpu: str
) -> None:
    group = driver.create("x-abc", limits)
    path = root / "sandboxd-test" / "x-abc"
    assert path.is_dir()
    assert (path / "memory.max").read_text() == str(memory)
    assert (path / "pids.max").read_text() == str(pids)
    assert (path / "cpu.max").read_text() == cpu
    assert group.procs_files == (str(path / "cgroup.procs"),)


def test_create_skips_swap_when_the_kernel_has_no_swap_file(driver: CgroupV2Driver, root: Path) -> None:
    """A fresh tmp directory has no memory.swap.max, so the code must not invent one."""
    driver.create("x-abc", Limits())
    assert not (root / "sandboxd-test" / "x-abc" / "memory.swap.max").exists()


def test_create_disables_swap_when_the_kernel_offers_it(
    driver: CgroupV2Driver, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulate the kernel creating memory.swap.max ('max') in the new group at mkdir."""
    real_write = v2.write

    def kernel_like_write(path: Path, value: str, *, step: str) -> None:
        swap = path.parent / "memory.swap.max"
        if not swap.exists():
            swap.write_text("max\n")
        real_write(path, value, step=step)

    monkeypatch.setattr(v2, "write", kernel_like_write)
    driver.create("x-abc", Limits())
    assert (root / "sandboxd-test" / "x-abc" / "memory.swap.max").read_text() == "0"


def test_create_refuses_an_existing_group(driver: CgroupV2Driver, root: Path) -> None:
    (root / "sandboxd-test" / "x-taken").mkdir()
    with pytest.raises(SandboxSetupError) as info:
        driver.create("x-taken", Limits())
    assert "x-taken" in info.value.message


def test_create_before_prepare_fails_closed(root: Path) -> None:
    with pytest.raises(SandboxSetupError):
        CgroupV2Driver("test", root=root).create("x-abc", Limits())


def test_failed_limit_write_removes_the_group(
    driver: CgroupV2Driver, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(path: Path, value: str, *, step: str) -> None:
        raise SandboxSetupError(step, f"cannot write {value!r} to {path}: Invalid argument")

    monkeypatch.setattr(v2, "write", refuse)
    with pytest.raises(SandboxSetupError) as info:
        driver.create("x-abc", Limits())
    assert info.value.step == "cgroup memory.max"
    assert not (root / "sandboxd-test" / "x-abc").exists()


# --------------------------------------------------------------------------- group


@pytest.fixture
def group(driver: CgroupV2Driver, root: Path) -> CgroupV2Group:
    return driver.create("x-abc", Limits())


def gpath(root: Path) -> Path:
    return root / "sandboxd-test" / "x-abc"


@pytest.mark.parametrize(
    ("events", "killed"),
    [
        (None, False),
        ("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\noom_group_kill 0\n", False),
        ("low 0\nhigh 0\nmax 12\noom 1\noom_kill 0\noom_group_kill 0\n", False),
        ("low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n", True),
        ("oom_kill 7\n", True),
        ("oom_group_kill 1\n", False),  # not the key the driver reads
    ],
    ids=["no-file", "zero", "oom-without-kill", "killed", "killed-many", "other-key"],
)
def test_oom_killed(group: CgroupV2Group, root: Path, events: str | None, killed: bool) -> None:
    if events is not None:
        (gpath(root) / "memory.events").write_text(events)
    assert group.oom_killed() is killed


def test_pids(group: CgroupV2Group, root: Path) -> None:
    assert group.pids() == set()  # no cgroup.procs file yet
    (gpath(root) / "cgroup.procs").write_text("101\n202\n303\n")
    assert group.pids() == {101, 202, 303}


def test_stats(group: CgroupV2Group, root: Path) -> None:
    assert group.stats() == base.CgroupStats(cpu_ms=0, memory_peak_bytes=0)
    (gpath(root) / "cpu.stat").write_text("usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n")
    (gpath(root) / "memory.peak").write_text("52428800\n")
    assert group.stats() == base.CgroupStats(cpu_ms=123, memory_peak_bytes=52_428_800)


def test_kill_all_returns_when_empty(group: CgroupV2Group, root: Path) -> None:
    (gpath(root) / "cgroup.procs").write_text("")
    group.kill_all()
    assert not (gpath(root) / "cgroup.kill").exists()  # nothing written when nothing runs


def test_remove(root: Path) -> None:
    d = CgroupV2Driver("test", root=root)
    d.prepare()
    path = root / "sandboxd-test" / "x-empty"
    path.mkdir()
    CgroupV2Group(path).remove()
    assert not path.exists()
    CgroupV2Group(path).remove()  # already gone: fine


# --------------------------------------------------------------------------- shared helpers


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n",
            {"oom_kill_disable": 0, "under_oom": 0, "oom_kill": 3},
        ),
        ("usage_usec 10\nnr_periods 0\n", {"usage_usec": 10, "nr_periods": 0}),
        ("a 1\n\nb 2", {"a": 1, "b": 2}),
        ("neg -5\n", {"neg": -5}),
        ("big 18446744073709551615\n", {"big": 18446744073709551615}),
        ("name value\nnum 4\n", {"num": 4}),  # non-numeric values skipped
        ("alone\nx 1\n", {"x": 1}),  # a line without a value skipped
        ("x 1.5\n", {}),
        ("", {}),
    ],
    ids=["v1-oom_control", "cpu.stat", "blank-line", "negative", "u64-max", "non-numeric",
         "no-value", "float", "empty"],
)
def test_read_keyed(tmp_path: Path, text: str, expected: dict[str, int]) -> None:
    f = tmp_path / "keyed"
    f.write_text(text)
    assert read_keyed(f) == expected


def test_read_keyed_missing_file(tmp_path: Path) -> None:
    assert read_keyed(tmp_path / "nope") == {}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1\n2\n3\n", {1, 2, 3}),
        ("42", {42}),
        ("7\n7\n", {7}),
        ("", set()),
        ("\n", set()),
        ("12\nnot-a-pid\n", set()),  # unparsable: nothing rather than a wrong guess
    ],
    ids=["three", "no-newline", "duplicate", "empty", "blank", "garbage"],
)
def test_read_pids(tmp_path: Path, text: str, expected: set[int]) -> None:
    f = tmp_path / "cgroup.procs"
    f.write_text(text)
    assert read_pids(f) == expected


def test_read_pids_missing_file(tmp_path: Path) -> None:
    assert read_pids(tmp_path / "nope") == set()


def test_read_int(tmp_path: Path) -> None:
    f = tmp_path / "n"
    f.write_text("1234\n")
    assert read_int(f) == 1234
    f.write_text("max\n")
    assert read_int(f, default=-1) == -1
    assert read_int(tmp_path / "nope", default=7) == 7


def test_write_failure_is_a_setup_error(tmp_path: Path) -> None:
    with pytest.raises(SandboxSetupError) as info:
        write(tmp_path / "missing-dir" / "memory.max", "1", step="cgroup memory.max")
    assert info.value.step == "cgroup memory.max"
    assert "memory.max" in info.value.message


def test_rmdir_retrying(tmp_path: Path) -> None:
    d = tmp_path / "g"
    d.mkdir()
    rmdir_retrying(d)
    assert not d.exists()
    rmdir_retrying(d)  # missing: fine
    d.mkdir()
    (d / "f").write_text("")
    with pytest.raises(OSError) as info:  # only EBUSY is retried
        rmdir_retrying(d, attempts=3)
    assert info.value.errno == errno.ENOTEMPTY


def test_rmdir_retrying_retries_ebusy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    d = tmp_path / "g"
    d.mkdir()
    real_rmdir = base.os.rmdir
    calls = []

    def busy_twice(path: Path) -> None:
        calls.append(path)
        if len(calls) <= 2:
            raise OSError(errno.EBUSY, "Device or resource busy")
        real_rmdir(path)

    monkeypatch.setattr(base.os, "rmdir", busy_twice)
    monkeypatch.setattr(base.time, "sleep", lambda s: None)
    rmdir_retrying(d)
    assert len(calls) == 3 and not d.exists()


def test_v1_group_reads_oom_control_and_pids(tmp_path: Path) -> None:
    dirs = {c: tmp_path / c / "x-abc" for c in ("memory", "pids", "cpu", "cpuacct", "freezer")}
    dirs["cpuacct"] = dirs["cpu"]  # cpu,cpuacct co-mounted
    for d in set(dirs.values()):
        d.mkdir(parents=True)
    group = CgroupV1Group(dirs)
    assert len(group.procs_files) == 4  # one per distinct hierarchy
    assert group.oom_killed() is False
    (dirs["memory"] / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n")
    assert group.oom_killed() is True
    (dirs["pids"] / "cgroup.procs").write_text("5\n6\n")
    assert group.pids() == {5, 6}
    (dirs["cpuacct"] / "cpuacct.usage").write_text("2500000000\n")
    (dirs["memory"] / "memory.max_usage_in_bytes").write_text("1048576\n")
    assert group.stats() == base.CgroupStats(cpu_ms=2500, memory_peak_bytes=1048576)


@pytest.mark.parametrize("value", ["--1", "²"], ids=["double-minus", "superscript-two"])
def test_read_keyed_never_raises_on_odd_values(tmp_path: Path, value: str) -> None:
    f = tmp_path / "keyed"
    f.write_text(f"odd {value}\noom_kill 1\n")
    assert read_keyed(f) == {"oom_kill": 1}
