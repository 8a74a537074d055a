"""images.inroot: paths inside an untrusted image tree, resolved in the root, never on the host."""

from __future__ import annotations

import os
import resource
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxd.errors import ImageError
from sandboxd.images.inroot import (
    ensure_mount_points,
    find_command,
    open_in_root,
    remove_entry,
)

PATH = "/opt/conda/envs/ds/bin:/opt/conda/bin:/usr/local/bin:/usr/bin:/bin"


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A directory beside the root standing for the host: nothing may touch it."""
    h = tmp_path / "host"
    h.mkdir()
    (h / "sentinel").write_text("host secret")
    (h / "tool").write_text("#!/bin/sh\n")
    (h / "tool").chmod(0o755)
    return h


@pytest.fixture
def root_fd(root: Path) -> Iterator[int]:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


def assert_host_untouched(host: Path) -> None:
    assert sorted(p.name for p in host.iterdir()) == ["sentinel", "tool"]
    assert (host / "sentinel").read_text() == "host secret"


def executable(path: Path, mode: int = 0o755) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n")
    path.chmod(mode)


def same_file(fd: int, path: Path) -> bool:
    st = os.fstat(fd)
    os.close(fd)
    return (st.st_dev, st.st_ino) == (path.lstat().st_dev, path.lstat().st_ino)


def test_links_resolve_inside_the_root(root: Path, root_fd: int, host: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc/passwd").write_text("image")
    os.symlink("/etc", root / "abs")
    os.symlink("../../../../../../../../etc", root / "rel")
    os.symlink(str(host), root / "hostlink")
    assert same_file(open_in_root(root_fd, "abs/passwd", follow_final=True), root / "etc/passwd")
    assert same_file(open_in_root(root_fd, "/rel/passwd", follow_final=True), root / "etc/passwd")
    assert same_file(open_in_root(root_fd, "../../etc/../etc/passwd", follow_final=True), root / "etc/passwd")
    assert same_file(open_in_root(root_fd, "abs", follow_final=False), root / "abs")  # the link itself
    assert same_file(open_in_root(root_fd, "abs", follow_final=True), root / "etc")
    with pytest.raises(FileNotFoundError):
        open_in_root(root_fd, "hostlink/sentinel", follow_final=True)


def test_a_link_loop_is_an_image_error(root: Path, root_fd: int) -> None:
    os.symlink("b", root / "a")
    os.symlink("a", root / "b")
    with pytest.raises(ImageError, match="too many levels of symbolic links"):
        open_in_root(root_fd, "a/x", follow_final=True)


def test_make_dirs_creates_missing_directories_in_the_root(root: Path, root_fd: int, host: Path) -> None:
    os.symlink(str(host / "new"), root / "dangling")
    fd = open_in_root(root_fd, "dangling/a/b", follow_final=True, make_dirs=True)
    inside = root / host.relative_to("/") / "new"
    assert same_file(fd, inside / "a/b")
    assert stat.S_IMODE((inside / "a").stat().st_mode) == 0o755
    assert_host_untouched(host)
    (root / "file").write_text("")
    with pytest.raises(NotADirectoryError):
        open_in_root(root_fd, "file/x", follow_final=True, make_dirs=True)


def test_remove_entry_removes_a_tree_without_following_links(root: Path, root_fd: int, host: Path) -> None:
    (root / "d/e/f").mkdir(parents=True)
    (root / "d/e/f/g").write_text("")
    os.symlink(str(host), root / "d/e/hostdir")
    os.symlink(str(host / "sentinel"), root / "d/s")
    remove_entry(root_fd, "d")
    remove_entry(root_fd, "absent")
    assert os.listdir(root) == []
    assert_host_untouched(host)


def test_find_command_follows_a_conda_style_absolute_link_in_the_root(root: Path) -> None:
    executable(root / "opt/conda/bin/python3.12")
    os.symlink("/opt/conda/bin/python3.12", root / "opt/conda/bin/python")
    assert find_command(root, PATH, "python") == "/opt/conda/bin/python"


def test_find_command_follows_a_relative_link(root: Path) -> None:
    executable(root / "usr/bin/python3.11")
    os.symlink("python3.11", root / "usr/bin/python3")
    os.symlink("usr/bin", root / "bin")  # merged /usr: /bin -> usr/bin
    assert find_command(root, "/usr/local/bin:/usr/bin", "python3") == "/usr/bin/python3"
    assert find_command(root, "/bin", "python3") == "/bin/python3"


def test_find_command_takes_the_first_path_directory(root: Path) -> None:
    executable(root / "usr/bin/python")
    executable(root / "opt/conda/envs/ds/bin/python")
    assert find_command(root, PATH, "python") == "/opt/conda/envs/ds/bin/python"


def test_find_command_skips_what_cannot_run(root: Path, host: Path) -> None:
    executable(root / "usr/local/bin/node", 0o644)  # no execute bit
    (root / "usr/bin/node").mkdir(parents=True)  # a directory
    assert find_command(root, PATH, "node") is None
    os.symlink(str(host / "tool"), root / "usr/local/bin/tool")  # only exists on the host
    os.symlink("loop", root / "usr/local/bin/loop")
    assert find_command(root, PATH, "tool") is None
    assert find_command(root, PATH, "loop") is None
    assert find_command(root, "relative/bin::", "node") is None
    executable(root / "usr/bin/ok")
    assert find_command(root, PATH, "../bin/ok") is None


def test_ensure_mount_points_replaces_a_resolv_conf_link_pointing_outside(root: Path, host: Path) -> None:
    (root / "etc").mkdir()
    os.symlink(str(host / "sentinel"), root / "etc/resolv.conf")
    os.symlink("../" * 20 + host.relative_to("/").as_posix() + "/sentinel", root / "etc/hosts")
    ensure_mount_points(root, [], ["/etc/resolv.conf", "/etc/hosts"])
    for name in ("resolv.conf", "hosts"):
        st = (root / "etc" / name).lstat()
        assert stat.S_ISREG(st.st_mode) and st.st_size == 0
        assert stat.S_IMODE(st.st_mode) == 0o644 and (st.st_uid, st.st_gid) == (0, 0)
    assert_host_untouched(host)


def test_ensure_mount_points_replaces_linked_and_mistyped_parents(root: Path, host: Path) -> None:
    os.symlink(str(host), root / "home")
    os.symlink(str(host), root / "run")
    (root / "tmp").write_text("a file where a directory must be")
    (root / "data").mkdir()
    (root / "data/keep").write_text("kept")
    (root / "mnt").mkdir()
    (root / "mnt/f").mkdir()
    ensure_mount_points(root, ["/home", "/run/user/0", "/tmp", "/data"], ["/mnt/f", "/new/dir/file"])
    for d in ("home", "run", "run/user", "run/user/0", "tmp", "data", "new/dir"):
        st = (root / d).lstat()
        assert stat.S_ISDIR(st.st_mode), d
    assert stat.S_IMODE((root / "run/user/0").stat().st_mode) == 0o755
    assert (root / "data/keep").read_text() == "kept"  # an existing directory is kept as is
    assert (root / "mnt/f").is_file() and (root / "new/dir/file").is_file()
    assert_host_untouched(host)


def test_ensure_mount_points_refuses_relative_and_dot_dot_paths(root: Path) -> None:
    with pytest.raises(ValueError):
        ensure_mount_points(root, ["etc"], [])
    with pytest.raises(ValueError):
        ensure_mount_points(root, ["/a/../../b"], [])


def open_fds() -> set[int]:
    return {int(n) for n in os.listdir("/proc/self/fd")}


@pytest.fixture
def few_fds() -> Iterator[None]:
    """RLIMIT_NOFILE lowered to 16 descriptors above those already open, then restored."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(open_fds()) + 16, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_make_dirs_reports_each_directory_before_making_it(root: Path, root_fd: int) -> None:
    (root / "a").mkdir()
    made: list[int] = []
    os.close(open_in_root(root_fd, "a/b/c", follow_final=True, make_dirs=True, on_mkdir=lambda: made.append(1)))
    assert len(made) == 2  # b and c; a was there

    def refuse_second() -> None:
        made.append(1)
        if len(made) > 3:
            raise ImageError("over the limit")

    with pytest.raises(ImageError, match="over the limit"):
        open_in_root(root_fd, "x/y/z", follow_final=True, make_dirs=True, on_mkdir=refuse_second)
    assert (root / "x").is_dir() and not (root / "x/y").exists()  # stopped before the second


def test_a_walk_over_max_components_is_refused(root: Path, root_fd: int) -> None:
    # "up" is 1,365 components that end where they start, the root: four of them resolve to
    # the root, but walk 5,460 components, over MAX_COMPONENTS (4,096)
    os.symlink("../" * 1365, root / "up")
    assert same_file(open_in_root(root_fd, "up/up", follow_final=True), root)
    with pytest.raises(ImageError, match=r"resolving 'up/up/up/up/x' .* more than 4096 path components"):
        open_in_root(root_fd, "up/up/up/up/x", follow_final=True, make_dirs=True)
    with pytest.raises(ImageError, match="more than 4096 components"):
        open_in_root(root_fd, "a/" * 4097, follow_final=True)
    assert os.listdir(root) == ["up"]


def test_a_nul_byte_in_a_path_is_an_image_error(root_fd: int) -> None:
    with pytest.raises(ImageError, match="contains a NUL byte"):
        open_in_root(root_fd, "usr/bin\0/x", follow_final=True)


def test_deep_walks_hold_a_few_descriptors(root: Path, root_fd: int, few_fds: None) -> None:
    # the tree is 1,000 directories deep and the walk passes 3,000 components through links
    # and "..": one descriptor a level (as before) would fail with EMFILE at the 16th
    before = open_fds()
    deep = "d/" * 1000
    os.close(open_in_root(root_fd, deep, follow_final=True, make_dirs=True))
    os.symlink("/" + deep, root / "bottom")
    os.symlink("../" * 1000, root / "d/top")  # from d/, climbs to the root
    fd = open_in_root(root_fd, "bottom/../" + "../" * 998 + "top/bottom/f", follow_final=True, make_dirs=True)
    assert stat.S_ISDIR(os.fstat(fd).st_mode)
    os.close(fd)
    remove_entry(root_fd, "d")
    assert sorted(os.listdir(root)) == ["bottom"]
    assert open_fds() == before


def test_find_command_skips_path_entries_with_a_nul_byte(root: Path) -> None:
    # an image's PATH is untrusted: a NUL names no path (no environment can even carry it)
    executable(root / "usr/bin/python")
    assert find_command(root, "/usr/bin\0/evil:/usr/bin", "python") == "/usr/bin/python"
    assert find_command(root, "/usr/bin\0", "python") is None
    assert find_command(root, "/usr/bin", "python\0") is None
