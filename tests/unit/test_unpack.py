"""images.unpack: one OCI layer applied onto a tree, from tarballs built here, as root."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import resource
import stat
import tarfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from sandboxd.errors import ImageError
from sandboxd.images.unpack import UnpackLimits, Usage, apply_layer

MIB = 1 << 20
LIMITS = UnpackLimits(max_bytes=64 * MIB, max_files=1000)
TAR = "application/vnd.oci.image.layer.v1.tar"
TAR_GZ = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_GZ = "application/vnd.docker.image.rootfs.diff.tar.gzip"


@dataclass
class E:
    """One tar entry: name, type, and the file's data or the link's target."""

    name: str
    type: bytes = tarfile.REGTYPE
    data: bytes = b""
    link: str = ""
    mode: int = 0o644
    uid: int = 0
    mtime: int = 1_600_000_000


def d(name: str, mode: int = 0o755) -> E:
    return E(name, tarfile.DIRTYPE, mode=mode)


def sym(name: str, target: str) -> E:
    return E(name, tarfile.SYMTYPE, link=target, mode=0o777)


def hard(name: str, target: str) -> E:
    return E(name, tarfile.LNKTYPE, link=target)


def tar_bytes(entries: list[E]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.type = e.type
            info.mode = e.mode
            info.uid = info.gid = e.uid
            info.mtime = e.mtime
            info.linkname = e.link
            info.size = len(e.data) if e.type == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(e.data) if info.size else None)
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def apply(
    root: Path,
    entries: list[E] | bytes,
    *,
    gz: bool = False,
    limits: UnpackLimits = LIMITS,
    usage: Usage | None = None,
    digest: str | None = None,
    diff_id: str | None = None,
) -> Usage:
    raw = entries if isinstance(entries, bytes) else tar_bytes(entries)
    blob = gzip.compress(raw) if gz else raw
    usage = usage if usage is not None else Usage()
    apply_layer(
        io.BytesIO(blob),
        root,
        media_type=TAR_GZ if gz else TAR,
        digest=digest or sha(blob),
        diff_id=diff_id or sha(raw),
        limits=limits,
        usage=usage,
    )
    return usage


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A directory beside the root standing for the host: nothing may touch it."""
    h = tmp_path / "host"
    h.mkdir()
    (h / "sentinel").write_text("host secret")
    return h


def assert_host_untouched(host: Path) -> None:
    assert sorted(p.name for p in host.iterdir()) == ["sentinel"]
    assert (host / "sentinel").read_text() == "host secret"
    assert (host / "sentinel").lstat().st_uid == os.getuid()


@pytest.mark.parametrize("gz", [False, True])
def test_files_dirs_and_links_are_applied_with_modes_and_mtimes(root: Path, gz: bool) -> None:
    usage = apply(
        root,
        [d("usr"), d("usr/bin", 0o700), E("usr/bin/tool", data=b"#!/bin/sh\n", mode=0o755),
         sym("usr/bin/alias", "tool"), E("/etc/conf", data=b"x")],
        gz=gz,
    )
    assert (root / "usr/bin/tool").read_bytes() == b"#!/bin/sh\n"
    assert stat.S_IMODE((root / "usr/bin/tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "usr/bin").stat().st_mode) == 0o700
    assert os.readlink(root / "usr/bin/alias") == "tool"
    assert (root / "usr/bin/tool").stat().st_mtime == 1_600_000_000
    assert (root / "etc/conf").read_bytes() == b"x"  # leading "/" stripped, missing parent made
    assert usage.files == 6 and usage.bytes >= 11  # five entries and the "etc" made for one


def test_docker_gzip_media_type(root: Path) -> None:
    raw = tar_bytes([E("a", data=b"1")])
    blob = gzip.compress(raw)
    apply_layer(io.BytesIO(blob), root, media_type=DOCKER_GZ, digest=sha(blob), diff_id=None,
                limits=LIMITS, usage=Usage())
    assert (root / "a").read_bytes() == b"1"


def test_whiteout_removes_a_file_and_a_whole_directory(root: Path) -> None:
    apply(root, [d("etc"), E("etc/a", data=b"a"), E("etc/b"), d("var/cache/x"), E("var/cache/x/f")])
    apply(root, [E("etc/.wh.a"), E("var/.wh.cache"), E("nowhere/.wh.x")], gz=True)
    assert sorted(os.listdir(root / "etc")) == ["b"]
    assert os.listdir(root / "var") == []
    assert not (root / "nowhere").exists()


def test_whiteout_of_a_link_removes_the_link_not_its_target(root: Path, host: Path) -> None:
    apply(root, [sym("h", str(host)), sym("s", str(host / "sentinel"))])
    apply(root, [E(".wh.h"), E(".wh.s")])
    assert os.listdir(root) == []
    assert_host_untouched(host)


def test_whiteout_does_not_hide_what_the_same_layer_wrote(root: Path) -> None:
    apply(root, [d("d"), E("d/lower")])
    apply(root, [d("d"), E("d/mine"), E(".wh.d")])
    assert os.listdir(root / "d") == ["mine"]


@pytest.mark.parametrize("marker_first", [True, False])
def test_opaque_directory_hides_lower_children_and_keeps_this_layers(
    root: Path, marker_first: bool
) -> None:
    apply(root, [d("opt/app/sub"), E("opt/app/old"), E("opt/app/sub/old"), E("opt/keep")])
    marker = E("opt/app/.wh..wh..opq")
    mine = [d("opt/app"), E("opt/app/new", data=b"n"), E("opt/app/sub/new")]
    apply(root, [marker, *mine] if marker_first else [*mine, marker])
    assert sorted(os.listdir(root / "opt/app")) == ["new", "sub"]
    assert os.listdir(root / "opt/app/sub") == ["new"]  # a lower dir below is emptied too
    assert (root / "opt/app/new").read_bytes() == b"n"
    assert (root / "opt/keep").exists()
    assert not (root / "opt/app/.wh..wh..opq").exists()


def test_hard_link_shares_the_inode(root: Path) -> None:
    apply(root, [E("bin/busybox", data=b"bb", mode=0o755)])
    apply(root, [hard("bin/sh", "bin/busybox"), hard("/sbin/init", "./bin/busybox")])
    assert (root / "bin/sh").stat().st_ino == (root / "bin/busybox").stat().st_ino
    assert (root / "sbin/init").stat().st_ino == (root / "bin/busybox").stat().st_ino
    assert (root / "bin/busybox").stat().st_nlink == 3


@pytest.mark.parametrize("target", ["missing", "link", "dir", "hostdir/sentinel"])
def test_hard_link_to_anything_but_a_regular_file_in_the_tree_is_refused(
    root: Path, host: Path, target: str
) -> None:
    apply(root, [sym("link", str(host / "sentinel")), d("dir"), sym("hostdir", str(host))])
    with pytest.raises(ImageError, match="hard link"):
        apply(root, [hard("x", target)])
    assert not (root / "x").exists()
    assert (host / "sentinel").stat().st_nlink == 1
    assert_host_untouched(host)


def test_links_out_of_the_root_are_kept_as_data_and_never_followed(root: Path, host: Path) -> None:
    depth = "../" * (len(root.parts) + 2)
    apply(root, [
        sym("shadow", "/etc/shadow"), sym("up", "../../.."), sym("evil", str(host)),
        sym("deep", depth + host.relative_to("/").as_posix()),
    ])
    assert os.readlink(root / "shadow") == "/etc/shadow"
    assert os.readlink(root / "up") == "../../.."
    apply(root, [
        E("evil/sentinel", data=b"pwned"), E("evil/new", data=b"pwned"),
        E("up/escaped", data=b"pwned"), E("deep/sentinel", data=b"pwned"),
        d("evil/dir"), sym("evil/l", "/"), hard("evil/h", "evil/sentinel"),
    ])
    assert_host_untouched(host)
    # they landed where the sandbox will see them: inside the root
    inside = root / host.relative_to("/")
    assert (inside / "sentinel").read_bytes() == b"pwned"
    assert (inside / "new").read_bytes() == b"pwned"
    assert (inside / "h").stat().st_ino == (inside / "sentinel").stat().st_ino
    assert (root / "escaped").read_bytes() == b"pwned"  # "up" stops at the root
    assert (root / "shadow").is_symlink()


def test_an_entry_replaces_a_path_of_another_type(root: Path, host: Path) -> None:
    apply(root, [d("a/sub"), E("a/sub/f"), E("b"), sym("c", str(host)), sym("f", str(host / "sentinel"))])
    apply(root, [E("a", data=b"file now"), d("b"), d("c"), E("f", data=b"mine")])
    assert (root / "a").read_bytes() == b"file now"
    assert (root / "b").is_dir() and not (root / "b").is_symlink()
    assert (root / "c").is_dir() and not (root / "c").is_symlink()
    assert not (root / "f").is_symlink() and (root / "f").read_bytes() == b"mine"
    assert_host_untouched(host)


def test_directory_over_directory_keeps_its_contents_and_takes_the_new_mode(root: Path) -> None:
    apply(root, [d("d"), E("d/f")])
    apply(root, [d("d", 0o750)])
    assert os.listdir(root / "d") == ["f"]
    assert stat.S_IMODE((root / "d").stat().st_mode) == 0o750


def test_setuid_setgid_and_sticky_bits_are_dropped(root: Path) -> None:
    shell = Path("/bin/sh").read_bytes()[:4096]
    apply(root, [E("bin/suid-sh", data=shell, mode=0o4755), E("bin/sgid", mode=0o2755),
                 d("tmp", 0o1777)])
    assert stat.S_IMODE((root / "bin/suid-sh").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "bin/sgid").stat().st_mode) == 0o755
    assert stat.S_IMODE((root / "tmp").stat().st_mode) == 0o777


def test_device_nodes_and_fifos_are_skipped(root: Path) -> None:
    apply(root, [E("dev/null")])  # a lower entry the device replaces
    usage = apply(root, [E("dev/null", tarfile.CHRTYPE), E("dev/sda", tarfile.BLKTYPE),
                         E("run/fifo", tarfile.FIFOTYPE)])
    assert not (root / "dev/null").exists()
    assert not (root / "dev/sda").exists()
    assert not (root / "run/fifo").exists()
    assert usage.files == 4  # three entries and the "run" made for one


def test_every_entry_is_owned_by_root(root: Path) -> None:
    apply(root, [
        E("home/u", tarfile.DIRTYPE, mode=0o755, uid=1234), E("home/u/f", uid=1234),
        E("home/u/l", tarfile.SYMTYPE, link="f", uid=1234),
    ])
    for p in ("home/u", "home/u/f", "home/u/l"):
        st = (root / p).lstat()
        assert (st.st_uid, st.st_gid) == (0, 0), p


def test_a_decompression_bomb_stops_at_the_limit(root: Path) -> None:
    size = 200 * MIB
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=1) as gz:
        info = tarfile.TarInfo("zeros")
        info.size = size
        gz.write(info.tobuf())
        zeros = bytes(MIB)
        for _ in range(size // MIB):
            gz.write(zeros)
        gz.write(bytes(1024))
    blob = buf.getvalue()
    assert len(blob) < 2 * MIB
    limits = UnpackLimits(max_bytes=64 * MIB, max_files=10)
    with pytest.raises(ImageError, match=r"larger than the limit of 64 MiB \(SANDBOXD_MAX_IMAGE_SIZE_MIB\)"):
        apply_layer(io.BytesIO(blob), root, media_type=TAR_GZ, digest=sha(blob), diff_id=None,
                    limits=limits, usage=Usage())
    assert (root / "zeros").stat().st_size <= 64 * MIB + MIB


def test_the_size_limit_counts_over_all_layers_of_an_image(root: Path) -> None:
    limits = UnpackLimits(max_bytes=3 * MIB, max_files=100)
    usage = Usage()
    apply(root, [E("one", data=bytes(2 * MIB))], limits=limits, usage=usage)
    with pytest.raises(ImageError, match="larger than the limit of 3 MiB"):
        apply(root, [E("two", data=bytes(2 * MIB))], limits=limits, usage=usage, gz=True)


def test_too_many_files(root: Path) -> None:
    limits = UnpackLimits(max_bytes=64 * MIB, max_files=50)
    usage = apply(root, [E(f"a{i}") for i in range(30)], limits=limits)
    with pytest.raises(ImageError, match=r"more than 50 files \(SANDBOXD_MAX_IMAGE_FILES\)"):
        apply(root, [E(f"b{i}") for i in range(30)], limits=limits, usage=usage)
    assert len(os.listdir(root)) == 50  # stopped at the entry that crossed the limit


@pytest.mark.parametrize("gz", [False, True])
def test_a_tampered_digest_is_refused_naming_the_layer(root: Path, gz: bool) -> None:
    wrong = "sha256:" + "0" * 64
    with pytest.raises(ImageError, match=f"layer {wrong}: its content does not match its digest"):
        apply(root, [E("a")], gz=gz, digest=wrong)


def test_a_tampered_diff_id_is_refused(root: Path) -> None:
    with pytest.raises(ImageError, match="does not match its diff_id"):
        apply(root, [E("a")], gz=True, diff_id="sha256:" + "1" * 64)


def test_the_digest_covers_bytes_after_the_end_of_the_tar(root: Path) -> None:
    raw = tar_bytes([E("a")])
    blob = raw + b"appended after the end-of-archive blocks"
    apply_layer(io.BytesIO(blob), root, media_type=TAR, digest=sha(blob), diff_id=sha(blob),
                limits=LIMITS, usage=Usage())
    with pytest.raises(ImageError, match="does not match its digest"):
        apply_layer(io.BytesIO(blob), root, media_type=TAR, digest=sha(raw), diff_id=None,
                    limits=LIMITS, usage=Usage())


@pytest.mark.parametrize("name", ["../escape", "a/../../escape", "/.."])
def test_dot_dot_names_are_refused(root: Path, name: str) -> None:
    with pytest.raises(ImageError, match=r"'\.\.'"):
        apply(root, [E(name, data=b"x")])
    assert not (root.parent / "escape").exists()


def test_dot_dot_whiteout_is_refused(root: Path) -> None:
    with pytest.raises(ImageError, match="whiteout"):
        apply(root, [E("a/.wh...")])


def test_zstd_and_unknown_media_types_are_refused(root: Path) -> None:
    for media_type, msg in [("application/vnd.oci.image.layer.v1.tar+zstd", "zstd layers are not supported"),
                            ("application/x-rar", "unsupported media type")]:
        with pytest.raises(ImageError, match=msg):
            apply_layer(io.BytesIO(b""), root, media_type=media_type, digest=sha(b""), diff_id=None,
                        limits=LIMITS, usage=Usage())


def test_garbage_is_refused_as_not_a_layer(root: Path) -> None:
    blob = b"not gzip at all" * 100
    with pytest.raises(ImageError, match="is not a valid"):
        apply_layer(io.BytesIO(blob), root, media_type=TAR_GZ, digest=sha(blob), diff_id=None,
                    limits=LIMITS, usage=Usage())


def test_a_huge_pax_header_is_refused_before_it_is_read(root: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("a")
        info.pax_headers = {"comment": "x" * (2 * MIB)}
        tf.addfile(info)
    with pytest.raises(ImageError, match="extended header"):
        apply(root, buf.getvalue())


def test_a_file_under_a_regular_file_is_refused(root: Path) -> None:
    with pytest.raises(ImageError, match="could not be applied"):
        apply(root, [E("f"), E("f/g")])


def pax_bytes(name: str, headers: dict[str, str], type: bytes = tarfile.REGTYPE, data: bytes = b"") -> bytes:
    """One pax entry with `headers` as given, which `tar_bytes` cannot write (NUL, huge mtimes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo(name)
        info.type = type
        info.pax_headers = headers
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def tree_entries(root: Path) -> int:
    """Everything in the tree below `root`, directories included; by descriptors, as the
    tree may be deeper than PATH_MAX or the recursion limit."""
    count, stack = 0, [os.open(root, os.O_RDONLY | os.O_DIRECTORY)]
    while stack:
        fd = stack.pop()
        with os.scandir(fd) as entries:
            for entry in entries:
                count += 1
                if entry.is_dir(follow_symlinks=False):
                    stack.append(os.open(entry.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd))
        os.close(fd)
    return count


def read_deep(root: Path, rel: str) -> bytes:
    """The file `rel` below `root`, opened component by component (it may pass PATH_MAX)."""
    *dirs, name = rel.split("/")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for part in dirs:
        child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        os.close(fd)
        fd = child
    try:
        with open(os.open(name, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def test_directories_made_for_missing_parents_count_against_the_file_limit(root: Path) -> None:
    # the reviewer's bomb, small: a few entries deep below missing parents made ~100,000
    # directories while usage.files counted only the entries
    limits = UnpackLimits(max_bytes=64 * MIB, max_files=100)
    deep = "/".join(["a"] * 60)
    with pytest.raises(ImageError, match=r"more than 100 files \(SANDBOXD_MAX_IMAGE_FILES\)"):
        apply(root, [E(f"k{i}/{deep}/f") for i in range(5)], gz=True, limits=limits)
    assert tree_entries(root) <= 100


def test_directories_made_through_a_link_count_against_the_file_limit(root: Path) -> None:
    limits = UnpackLimits(max_bytes=64 * MIB, max_files=100)
    with pytest.raises(ImageError, match="more than 100 files"):
        apply(root, [sym("s", "d/" + "a/" * 500), E("s/f")], limits=limits)
    assert tree_entries(root) <= 100


def test_usage_counts_exactly_what_was_made(root: Path) -> None:
    usage = apply(root, [E("a/b/c/f"), sym("l", "x/y"), E("l/g")])
    assert tree_entries(root) == usage.files == 8  # 3 entries; a, a/b, a/b/c, x, x/y made


def test_a_resolution_over_the_component_cap_is_refused_naming_the_entry(root: Path) -> None:
    # each link adds 2,000 components; the third walk would pass 4,096 (the reviewer's chain
    # reached 80,000 directories for one entry)
    limits = UnpackLimits(max_bytes=64 * MIB, max_files=100_000)
    many = "a/" * 2000
    with pytest.raises(ImageError, match=r"entry 'l/n/m/f': resolving 'l/n/m' .* more than 4096 path components"):
        apply(root, [sym("l", many), sym("l/n", many), sym("l/n/m", many), E("l/n/m/f")], limits=limits)
    assert tree_entries(root) < 4096 + 10


@pytest.mark.parametrize(
    ("name", "refusal"),
    [
        ("k/" + "/".join(["a" * 255] * 512) + "/f", "longer than 4096 bytes"),  # the reviewer's 130 KB
        ("/".join(["d" * 200] * 21), "longer than 4096 bytes"),
        ("d/" + "n" * 256, "name longer than 255 bytes"),
        ("/".join(["a"] * 513), "deeper than 512 directories"),
    ],
)
def test_overlong_paths_and_names_are_refused_with_a_short_message(root: Path, name: str, refusal: str) -> None:
    with pytest.raises(ImageError, match=refusal) as caught:
        apply(root, [E(name)])
    assert len(str(caught.value)) < 400  # the path is shown cut short
    assert os.listdir(root) == []


def test_paths_at_the_limits_are_applied(root: Path) -> None:
    name = "/".join(["d" * 254] * 16)  # 4,079 bytes of 254-byte names
    apply(root, [E(name, data=b"deep"), E("n" * 255)])
    assert read_deep(root, name) == b"deep"
    assert (root / ("n" * 255)).exists()


def test_the_record_of_a_layers_paths_is_bounded(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # one long deep path records its ~60 ancestors too: a few entries cross a small cap
    # (the real one, 256 MiB, bounds the 30 MB an entry once cost)
    monkeypatch.setattr("sandboxd.images.unpack._MAX_RECORD_BYTES", 200_000)
    deep = "/".join(["a" * 50] * 60)
    with pytest.raises(ImageError, match="MiB of bookkeeping in one layer"):
        apply(root, [E(f"k{i}/{deep}/f") for i in range(10)], limits=UnpackLimits(64 * MIB, 100_000))


@pytest.mark.parametrize(
    ("entry", "refusal"),
    [
        (pax_bytes("x", {"path": "a\0b"}), "path .* contains a NUL byte"),
        (pax_bytes("x", {"linkpath": "a\0b"}, tarfile.SYMTYPE), "target of symbolic link 'x' .* NUL byte"),
        (pax_bytes("x", {"linkpath": "a\0b"}, tarfile.LNKTYPE), "NUL byte"),
        (pax_bytes("x", {"linkpath": "t" * 4097}, tarfile.SYMTYPE), "longer than 4096 bytes"),
        (pax_bytes("x", {"mtime": "1e400"}), "impossible modification time"),
        (pax_bytes("x", {"mtime": "nan"}), "impossible modification time"),
        (pax_bytes("x", {"mtime": "99999999999999999999"}), "impossible modification time"),
        (pax_bytes("x", {"GNU.sparse.map": "a,b", "GNU.sparse.name": "x"}), "tar header is malformed"),
        (pax_bytes("x", {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.name": "x",
                         "GNU.sparse.realsize": "10"}, data=b"zz\n" + bytes(509)), "tar header is malformed"),
    ],
)
def test_malformed_entries_are_image_errors(root: Path, entry: bytes, refusal: str) -> None:
    with pytest.raises(ImageError, match=refusal):
        apply(root, entry)
    assert os.listdir(root) == []


def test_a_whiteout_or_hard_link_walking_over_the_component_cap_names_the_entry(root: Path) -> None:
    apply(root, [sym("up", "../" * 1365)])  # 1,365 components that resolve to the root
    over = "up/up/up/up"
    with pytest.raises(ImageError, match=rf"entry '{over}/\.wh\.x': .* more than 4096 path components"):
        apply(root, [E(f"{over}/.wh.x")])
    with pytest.raises(ImageError, match=r"entry 'h': .* more than 4096 path components"):
        apply(root, [E("f"), hard("h", f"{over}/f")])
    with pytest.raises(ImageError, match=r"target of hard link 'h' \('a\\x00b'\) contains a NUL byte"):
        apply(root, pax_bytes("h", {"linkpath": "a\0b"}, tarfile.LNKTYPE))


@contextmanager
def few_descriptors() -> Iterator[None]:
    """RLIMIT_NOFILE lowered to 16 descriptors above those already open, then restored."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(int(n) for n in os.listdir("/proc/self/fd")) + 16, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_a_deep_layer_and_its_whiteouts_hold_a_few_descriptors(root: Path) -> None:
    # 500 levels: one descriptor a level, as the walks once held, fails with EMFILE
    deep = "top/" + "/".join(["d"] * 500)
    apply(root, [E(f"{deep}/old"), E(f"{deep}/gone")])
    with few_descriptors():
        apply(root, [E(f"{deep}/new", data=b"n"), E(f"{deep}/.wh.gone"), E("top/.wh..wh..opq")])
    assert read_deep(root, f"{deep}/new") == b"n"
    for hidden in ("old", "gone"):
        with pytest.raises(FileNotFoundError):
            read_deep(root, f"{deep}/{hidden}")
