"""Artifacts without a sandbox: collecting /data/outputs (runtime/outputs.py) from a tree that
untrusted code wrote, and the artifact store's URLs and sweep (service/artifacts.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from sandboxd.errors import Forbidden
from sandboxd.ids import reserved_data_name
from sandboxd.runtime.outputs import Collected, collect
from sandboxd.service.artifacts import Artifacts
from sandboxd.service.signing import Claims, Signer
from sandboxd.service.storage_kind import StorageKind

KEY = b"k" * 32


def _tree(root: Path) -> None:
    (root / "d" / "e").mkdir(parents=True)
    (root / "a.csv").write_bytes(b"x,y\n1,2\n")
    (root / "d" / "e" / "b.bin").write_bytes(os.urandom(1000))
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "etc").symlink_to("/etc")
    os.mkfifo(root / "fifo")


def test_collect_copies_regular_files_only(tmp_path: Path) -> None:
    src, into = tmp_path / "src", tmp_path / "into"
    src.mkdir()
    _tree(src)
    got = collect(src, into)
    assert got.files == (Collected("a.csv", 8), Collected("d/e/b.bin", 1000))
    assert got.dropped == 0
    assert (into / "a.csv").read_bytes() == b"x,y\n1,2\n"
    assert (into / "d/e/b.bin").read_bytes() == (src / "d/e/b.bin").read_bytes()
    assert sorted(p.name for p in into.iterdir()) == ["a.csv", "d"]  # no link, no FIFO
    assert (into / "a.csv").stat().st_mode & 0o777 == 0o600
    assert (into / "d").stat().st_mode & 0o777 == 0o700
    assert not list(into.rglob(".*.part"))


def test_collect_only_new_or_changed_since_seen(tmp_path: Path) -> None:
    src, into = tmp_path / "src", tmp_path / "into"
    src.mkdir()
    (src / "a").write_text("one")
    (src / "b").write_text("two")
    first = collect(src, into)
    assert [f.path for f in first.files] == ["a", "b"]
    assert collect(src, into, first.seen).files == ()
    time.sleep(0.01)
    (src / "b").write_text("two, changed")
    (src / "c").write_text("three")
    again = collect(src, into, first.seen)
    assert again.files == (Collected("b", 12), Collected("c", 5))
    assert (into / "b").read_text() == "two, changed"
    assert set(again.seen) == {"a", "b", "c"}


def test_collect_caps_count_and_bytes(tmp_path: Path) -> None:
    src, into = tmp_path / "src", tmp_path / "into"
    src.mkdir()
    for i in range(5):
        (src / f"f{i}").write_bytes(b"x" * 100)
    by_count = collect(src, into / "1", max_files=3)
    assert [f.path for f in by_count.files] == ["f0", "f1", "f2"] and by_count.dropped == 2
    assert "f3" not in by_count.seen  # a later call may still take it
    by_bytes = collect(src, into / "2", max_bytes=250)
    assert len(by_bytes.files) == 2 and by_bytes.dropped == 3


def test_collect_of_an_empty_directory_makes_nothing(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    assert collect(tmp_path / "src", tmp_path / "into").files == ()
    assert not (tmp_path / "into").exists()


def test_signed_urls_bind_org_trace_path_and_expiry() -> None:
    now = [1_000_000.0]
    signer = Signer(KEY, clock=lambda: now[0])
    store = Artifacts(Path("/nonexistent"), signer, retention_s=3600, clock=lambda: now[0])
    [listed] = store.listing("org_a", "trc_abc", [Collected("dir/r 1.csv", 3)], "http://h:1/")
    assert listed["path"] == "dir/r 1.csv" and listed["size"] == 3
    assert listed["expires_at"] == "1970-01-12T14:46:40.000Z"
    url = listed["url"]
    assert url.startswith("http://h:1/v1/artifacts/trc_abc/dir/r%201.csv?expires=1003600&signature=")
    sig = url.rsplit("=", 1)[1]
    signer.verify_artifact("org_a", "trc_abc", "dir/r 1.csv", 1_003_600, sig)
    for changed in (
        ("org_b", "trc_abc", "dir/r 1.csv", 1_003_600, sig),
        ("org_a", "trc_abd", "dir/r 1.csv", 1_003_600, sig),
        ("org_a", "trc_abc", "dir/r 2.csv", 1_003_600, sig),
        ("org_a", "trc_abc", "dir/r 1.csv", 1_003_601, sig),
        ("org_a", "trc_abc", "dir/r 1.csv", 1_003_600, sig[:-2] + "AA"),
        ("org_a", "trc_abc", "dir/r 1.csv", 1_003_600, "not base64!"),
    ):
        with pytest.raises(Forbidden):
            signer.verify_artifact(*changed)
    now[0] = 1_003_600.0
    with pytest.raises(Forbidden, match="expired"):
        signer.verify_artifact("org_a", "trc_abc", "dir/r 1.csv", 1_003_600, sig)


def test_a_file_token_is_no_artifact_signature() -> None:
    """Same key, other domain: neither kind of URL can be made from the other."""
    signer = Signer(KEY, clock=lambda: 0.0)
    token = signer.sign(Claims("GET", StorageKind.THREAD, "org_a", "key_1", "t", "a.csv", 100))
    with pytest.raises(Forbidden):
        signer.verify_artifact("org_a", "trc_abc", "a.csv", 100, token.split(".")[1])


def test_sweep_removes_executions_past_retention(tmp_path: Path) -> None:
    store = Artifacts(tmp_path, Signer(KEY), retention_s=100)
    old, new = store.dir_for("org_a", "trc_old"), store.dir_for("org_a", "trc_new")
    for d in (old, new):
        d.mkdir(parents=True)
        (d / "f").write_text("x")
    os.utime(old, (time.time() - 200, time.time() - 200))
    assert store.sweep() == 1
    assert not old.exists() and (new / "f").exists()
    assert store.sweep(keep_s=0, now=time.time() + 1) == 1
    assert not (tmp_path / "org_a").exists()


def test_dir_for_refuses_what_is_not_an_id(tmp_path: Path) -> None:
    store = Artifacts(tmp_path, Signer(KEY))
    for org, trace in (("../x", "trc_a"), ("org", "../../etc"), ("org", "trc_a/b")):
        with pytest.raises(ValueError):
            store.dir_for(org, trace)


def test_outputs_is_a_reserved_data_name() -> None:
    assert reserved_data_name("outputs") is not None
    assert reserved_data_name("outputs2") is None


class _Executions:
    def __init__(self, rows: dict[str, str]) -> None:
        self.rows = rows

    async def get(self, trace_id: str) -> object | None:
        org = self.rows.get(trace_id)
        return None if org is None else type("Row", (), {"org_id": org})()


class _Store:
    def __init__(self, rows: dict[str, str]) -> None:
        self.executions = _Executions(rows)


async def test_open_serves_a_listed_file_and_nothing_once_the_execution_is_gone(tmp_path: Path) -> None:
    from sandboxd.errors import NotFound

    rows = {"trc_run": "org_a"}
    store = Artifacts(tmp_path, Signer(KEY), _Store(rows), retention_s=60)  # type: ignore[arg-type]
    kept = store.dir_for("org_a", "trc_run")
    (kept / "sub").mkdir(parents=True)
    (kept / "sub" / "r.csv").write_bytes(b"a,b\n")
    [listed] = store.listing("org_a", "trc_run", [Collected("sub/r.csv", 4)])
    query = dict(part.split("=", 1) for part in listed["url"].split("?", 1)[1].split("&"))
    download = await store.open("trc_run", "sub/r.csv", int(query["expires"]), query["signature"])
    try:
        assert (download.size, download.name, download.content_type) == (4, "r.csv", "text/csv")
        assert download.file.read() == b"a,b\n"
    finally:
        download.file.close()
    with pytest.raises(Forbidden):  # the signature is for another path
        await store.open("trc_run", "sub/../sub/r.csv", int(query["expires"]), query["signature"])
    del rows["trc_run"]  # deleted with the execution's retention
    with pytest.raises(NotFound):
        await store.open("trc_run", "sub/r.csv", int(query["expires"]), query["signature"])


def test_collect_never_eats_the_disks_last_free_bytes(tmp_path: Path) -> None:
    """A sparse 1 GiB file costs the sandbox nothing but would be copied whole: collection stops
    where the disk of the artifacts would keep less than `keep_free_bytes` free."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "small.txt").write_bytes(b"x" * 10)
    with open(out / "sparse.bin", "wb") as f:
        f.truncate(1 << 30)
    disk = os.statvfs(tmp_path)
    free = disk.f_bavail * disk.f_frsize
    got = collect(out, tmp_path / "into", keep_free_bytes=free - (64 << 20))  # room for 64 MiB only
    assert [c.path for c in got.files] == ["small.txt"] and got.dropped == 1
    assert not (tmp_path / "into" / "sparse.bin").exists()
