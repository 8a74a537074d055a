"""`open_beneath` (runtime/beneath.py) on a real tree: a directory below a source is opened
component by component without following a link, made when asked, and nothing else.

The returned descriptor is what bwrap binds (`--bind-fd`), so each test checks which inode it
refers to, and that no descriptor is left open on any path. The runtime opens each mount so
again at launch (runtime/sandbox.py): a link swapped in after the server's check is refused
there, as a failure of the tenant's storage, not of the runtime (service/health.py)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.errors import SandboxSetupError
from sandboxd.runtime.beneath import BeneathError, open_beneath
from sandboxd.runtime.bwrap import SandboxFds
from sandboxd.runtime.network import Attached
from sandboxd.runtime.sandbox import Sandboxes, _open_mounts
from sandboxd.runtime.spec import Limits, Mount, SandboxSpec
from sandboxd.service.health import setup_failure


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[Path]:
    """src/ (a volume: setgid 02770) with a/b/, a file, links out and in; outside/ next to it.

    Checks, after the test, that no descriptor was left open."""
    src = tmp_path / "src"
    src.mkdir()
    os.chmod(src, 0o2770)
    (src / "a" / "b").mkdir(parents=True)
    (src / "file").write_text("x")
    outside = tmp_path / "outside"
    (outside / "secret").mkdir(parents=True)
    (src / "to-outside").symlink_to(outside)
    (src / "to-etc").symlink_to("/etc")
    (src / "relative").symlink_to("a")  # a link within the tree is refused too
    (src / "dangling").symlink_to(tmp_path / "nowhere")
    (src / "a" / "up").symlink_to("..")
    before = _open_fds()
    yield src
    assert _open_fds() == before, "a descriptor was left open"


def _same(fd: int, path: Path) -> None:
    st, want = os.fstat(fd), path.lstat()
    assert stat.S_ISDIR(st.st_mode)
    assert (st.st_dev, st.st_ino) == (want.st_dev, want.st_ino)


def _opened(source: Path, sub: str, **kw: bool) -> os.stat_result:
    fd = open_beneath(str(source), sub, **kw)
    try:
        flags = int(Path(f"/proc/self/fdinfo/{fd}").read_text().split("flags:")[1].split()[0], 8)
        assert flags & os.O_PATH and flags & os.O_CLOEXEC  # a handle only, and not inherited
        return os.fstat(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("sub", ["", "a", "a/b", "/a/b/", "a//b"])
def test_a_plain_directory_is_opened(tree: Path, sub: str) -> None:
    fd = open_beneath(str(tree), sub)
    try:
        _same(fd, tree / sub.strip("/").replace("//", "/") if sub.strip("/") else tree)
    finally:
        os.close(fd)
    _opened(tree, sub)


def test_the_descriptor_keeps_the_checked_directory_when_the_path_changes(tree: Path) -> None:
    """What is bound is what was checked: renaming `a` and putting a link in its place after
    the open changes nothing about the descriptor."""
    fd = open_beneath(str(tree), "a/b")
    try:
        original = (tree / "a" / "b").stat()
        (tree / "a").rename(tree / "moved")
        (tree / "a").symlink_to("/etc")
        st = os.fstat(fd)
        assert (st.st_dev, st.st_ino) == (original.st_dev, original.st_ino)
        assert os.readlink(f"/proc/self/fd/{fd}") == str(tree / "moved" / "b")
    finally:
        os.close(fd)


def test_missing_with_create_is_made_0770_with_the_setgid_of_its_parent(tree: Path) -> None:
    old = os.umask(0o077)  # the server's
    try:
        fd = open_beneath(str(tree), "new/deeper/deepest", create=True)
    finally:
        os.umask(old)
    try:
        _same(fd, tree / "new" / "deeper" / "deepest")
    finally:
        os.close(fd)
    for made in ("new", "new/deeper", "new/deeper/deepest"):
        mode = (tree / made).stat().st_mode
        assert stat.S_ISDIR(mode) and stat.S_IMODE(mode) == 0o2770, (made, oct(mode))
    # an existing directory below is used as it is (its mode is not touched)
    os.chmod(tree / "a", 0o750)
    _opened(tree, "a/new", create=True)
    assert stat.S_IMODE((tree / "a").stat().st_mode) == 0o750
    assert stat.S_IMODE((tree / "a" / "new").stat().st_mode) == 0o770  # `a` is not setgid


def test_missing_with_create_under_a_plain_parent_has_no_setgid(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir(mode=0o755)
    _opened(plain, "x/y", create=True)
    assert stat.S_IMODE((plain / "x").stat().st_mode) == 0o770
    assert stat.S_IMODE((plain / "x" / "y").stat().st_mode) == 0o770


def test_create_of_an_existing_directory_changes_nothing(tree: Path) -> None:
    os.chmod(tree / "a" / "b", 0o700)
    st = _opened(tree, "a/b", create=True)
    assert st.st_ino == (tree / "a" / "b").stat().st_ino
    assert stat.S_IMODE((tree / "a" / "b").stat().st_mode) == 0o700


@pytest.mark.parametrize("sub", ["missing", "a/missing", "a/b/missing/deeper"])
def test_missing_without_create_is_refused_as_missing(tree: Path, sub: str) -> None:
    with pytest.raises(BeneathError) as info:
        open_beneath(str(tree), sub)
    assert info.value.missing is True
    assert info.value.reason == "does not exist"
    assert not (tree / sub).exists()


@pytest.mark.parametrize(
    "sub",
    [
        "to-etc",
        "to-etc/ssl",
        "to-outside",
        "to-outside/secret",
        "to-outside/made",  # would be made in outside/ if the link were followed
        "relative",
        "relative/b",
        "dangling",
        "a/up",
        "a/up/a",
        "file",
        "file/x",
    ],
)
@pytest.mark.parametrize("create", [False, True])
def test_a_link_or_a_file_in_the_way_is_refused(tree: Path, sub: str, create: bool) -> None:
    entries = sorted(p.name for p in tree.parent.rglob("*"))
    with pytest.raises(BeneathError) as info:
        open_beneath(str(tree), sub, create=create)
    assert info.value.missing is False
    assert "is not a directory (a file or a symbolic link is in the way)" == info.value.reason
    assert sorted(p.name for p in tree.parent.rglob("*")) == entries, "nothing is made through a link"
    assert not (tree.parent / "nowhere").exists()


def test_a_link_planted_below_a_made_directory_is_refused(tree: Path) -> None:
    """A directory made by `create` is opened below its parent like any other: a link put in
    its place (a sandbox racing the server) is refused, not followed."""
    outside = tree.parent / "outside"  # never /etc: a regression would make a directory there
    (tree / "racy").symlink_to(outside)
    with pytest.raises(BeneathError, match="symbolic link"):
        open_beneath(str(tree), "racy/x", create=True)
    assert sorted(p.name for p in outside.iterdir()) == ["secret"]


@pytest.mark.parametrize("sub", ["..", "a/..", "a/../..", "../outside", ".", "a/./b"])
def test_dot_and_dot_dot_are_refused(tree: Path, sub: str) -> None:
    with pytest.raises(BeneathError) as info:
        open_beneath(str(tree), sub, create=True)
    assert info.value.reason == "must not contain '.' or '..'"
    assert info.value.missing is False


def test_a_missing_source_is_an_os_error(tmp_path: Path) -> None:
    before = _open_fds()
    with pytest.raises(FileNotFoundError):
        open_beneath(str(tmp_path / "gone"), "a")
    assert _open_fds() == before


# --- at launch: the runtime opens each mount again ----------------------------------------


def _launch_fds(mounts: tuple[Mount, ...]) -> tuple[list[int], SandboxFds]:
    sandboxes = object.__new__(Sandboxes)  # _open_fds needs nothing of a live runtime but the filter
    # launch opens the mounts (off the event loop) with _open_mounts, then the rest
    sandboxes._seccomp_bpf = b"\x00" * 8
    opened: list[int] = []
    spec = SandboxSpec(language="bash", code=b"true", limits=Limits(), mounts=mounts)
    try:
        return opened, sandboxes._open_fds(spec, Attached(), opened, None, _open_mounts(spec, opened))
    except BaseException:
        for fd in opened:  # what Sandboxes.launch does
            os.close(fd)
        raise


def test_launch_binds_the_descriptors_of_the_checked_directories(tree: Path) -> None:
    opened, fds = _launch_fds((Mount(str(tree), "/data/v", True), Mount(str(tree), "/data/v/a/b", False, sub="a/b")))
    try:
        assert len(fds.mounts) == 2 and set(fds.mounts) <= set(opened)
        _same(fds.mounts[0], tree)
        _same(fds.mounts[1], tree / "a" / "b")
    finally:
        for fd in opened:
            os.close(fd)


@pytest.mark.parametrize("sub", ["to-outside", "a/up", "file", "missing"])
def test_a_link_swapped_in_before_launch_is_refused_and_not_a_runtime_fault(tree: Path, sub: str) -> None:
    """The server checked the directory (service/data_mounts.py); a sandbox replaced it by a
    link before the launch: the launch refuses it (never made there: `create` is the check's)
    and the failure does not count toward /ready, which a tenant could otherwise turn off."""
    with pytest.raises(SandboxSetupError) as info:
        _launch_fds((Mount(str(tree), "/data/v", False), Mount(str(tree), f"/data/v/{sub}", False, sub=sub)))
    assert info.value.step == "storage mount" and f"/data/v/{sub}" in info.value.message
    assert not (tree / sub).is_dir() or (tree / sub).is_symlink()
    failure = setup_failure(info.value)
    assert failure.runtime is False and failure.layer == "storage"
    assert str(tree) not in failure.message
