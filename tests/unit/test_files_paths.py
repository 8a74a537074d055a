"""Files API building blocks: the path rules, the no-symlink walker on a real tree, signed tokens,
and FilesService's upload/list/delete logic over a real directory (threads faked in memory)."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import stat
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace

import pytest

from sandboxd.errors import Conflict, Forbidden, InvalidRequest, NotFound
from sandboxd.service.files import FilesService
from sandboxd.service.paths import normalize_path
from sandboxd.storage.tree import (
    Owner,
    Upload,
    open_dir,
    open_regular,
    open_root,
    remove,
    stat_target,
    walk,
)
from sandboxd.service.signing import Claims, Signer

KEY = b"k" * 32

# --------------------------------------------------------------------------- path rules


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("foo.txt", "foo.txt"),
        ("/home/baponi/foo.txt", "foo.txt"),
        ("/home/baponi/data/x.csv", "data/x.csv"),
        ("data//x.csv", "data/x.csv"),
        ("./data/./x.csv", "data/x.csv"),
        ("data/x.csv/", "data/x.csv"),
        ("dir with space/ü.txt", "dir with space/ü.txt"),
        ("..foo/bar..", "..foo/bar.."),  # dots inside names are not traversal
        ("%41bc", "%41bc"),  # percent-encoding of a harmless letter is just a name
    ],
)
def test_thread_paths_accepted(raw: str, expected: str) -> None:
    assert normalize_path(raw, source="thread", id="t1") == expected


@pytest.mark.parametrize(
    ("raw", "allow_root"),
    [("", True), ("/home/baponi", True), ("/home/baponi/", True), (".", True), ("./", True)],
)
def test_root_only_where_allowed(raw: str, allow_root: bool) -> None:
    assert normalize_path(raw, source="thread", id="t1", allow_root=True) == ""
    with pytest.raises(InvalidRequest, match="storage root"):
        normalize_path(raw, source="thread", id="t1")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ("../etc/passwd", "'\\.\\.'"),
        ("data/../../x", "'\\.\\.'"),
        ("data/..", "'\\.\\.'"),
        ("/home/baponi/../x", "'\\.\\.'"),
        ("/etc/passwd", "outside the storage root"),
        ("/home/baponix/a", "outside the storage root"),
        ("/home/other/a", "outside the storage root"),
        ("/data/vol/a", "outside the storage root"),  # /data/<slug> is a volume's root, not a thread's
        ("a\x00b", "NUL"),
        ("a\\b", "backslash"),
        ("..\\..\\x", "backslash"),
        ("%2e%2e/x", "percent-encoded"),
        ("%2E%2E/x", "percent-encoded"),
        ("a%2fb", "percent-encoded"),
        ("a%2Fb", "percent-encoded"),
        ("a%5cb", "percent-encoded"),
        ("a%5Cb", "percent-encoded"),
        ("a%00b", "percent-encoded"),
        ("%252e%252e/x", "percent-encoded"),
        ("a%c0%afb", "percent-encoded"),
        ("x" * 256, "255 bytes"),
        ("a/" * 2100, "4096"),
        ("\ud800", "surrogate"),
    ],
)
def test_thread_paths_refused(raw: str, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        normalize_path(raw, source="thread", id="t1", allow_root=True)


def test_volume_paths() -> None:
    assert normalize_path("/data/myvol/a/b", source="volume", id="myvol") == "a/b"
    assert normalize_path("a/b", source="volume", id="myvol") == "a/b"
    for bad in ("/data/other/a", "/home/baponi/a", "/data/myvolx/a"):
        with pytest.raises(InvalidRequest, match="outside the storage root"):
            normalize_path(bad, source="volume", id="myvol")


# --------------------------------------------------------------------------- a real tree with links


@pytest.fixture
def tree(tmp_path: Path) -> Iterator[tuple[Path, Path, int]]:
    """root/ (the storage root) and outside/ (host files that must stay unreachable)."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret").write_text("HOST SECRET")
    (root / "ok.txt").write_text("hello")
    (root / "sub").mkdir()
    (root / "sub" / "inner.txt").write_text("inner")
    os.symlink(outside / "secret", root / "link")  # a file link, absolute
    os.symlink("../outside", root / "dirlink")  # a directory link, relative
    os.symlink(outside / "secret", root / "sub" / "deeplink")
    os.mkfifo(root / "fifo")
    fd = open_root(root)
    try:
        yield root, outside, fd
    finally:
        os.close(fd)


def test_regular_file_opens(tree: tuple[Path, Path, int]) -> None:
    _, _, fd = tree
    ffd, st = open_regular(fd, "sub/inner.txt")
    try:
        assert os.read(ffd, 100) == b"inner"
        assert st.st_size == 5
    finally:
        os.close(ffd)


@pytest.mark.parametrize("rel", ["link", "dirlink/secret", "sub/deeplink"])
def test_symlinks_are_never_followed_for_reading(tree: tuple[Path, Path, int], rel: str) -> None:
    _, _, fd = tree
    with pytest.raises((InvalidRequest, NotFound)) as info:
        open_regular(fd, rel)
    assert "HOST SECRET" not in str(info.value)


def test_fifo_and_directory_refused_without_hanging(tree: tuple[Path, Path, int]) -> None:
    _, _, fd = tree
    with pytest.raises(InvalidRequest, match="not a regular file"):
        open_regular(fd, "fifo")
    with pytest.raises(InvalidRequest, match="is a directory"):
        open_regular(fd, "sub")
    with pytest.raises(NotFound):
        open_regular(fd, "missing.txt")
    with pytest.raises(InvalidRequest, match="not a directory"):
        open_regular(fd, "ok.txt/x")


def test_walk_lists_only_files_and_dirs_and_never_enters_links(tree: tuple[Path, Path, int]) -> None:
    _, _, fd = tree
    entries = walk(fd, "", 100)
    assert [e["path"] for e in entries] == ["ok.txt", "sub", "sub/inner.txt"]
    by_path = {e["path"]: e for e in entries}
    assert by_path["sub"]["is_directory"] is True and by_path["sub"]["size"] == 0
    assert by_path["sub/inner.txt"] == {
        "name": "inner.txt",
        "path": "sub/inner.txt",
        "size": 5,
        "modified": by_path["sub/inner.txt"]["modified"],
        "is_directory": False,
    }
    modified = by_path["ok.txt"]["modified"]
    assert modified.endswith("Z")
    assert abs(datetime.fromisoformat(modified).timestamp() - datetime.now(UTC).timestamp()) < 60
    assert [e["path"] for e in walk(fd, "sub", 100)] == ["sub/inner.txt"]
    assert [e["path"] for e in walk(fd, "sub/inner.txt", 100)] == ["sub/inner.txt"]
    with pytest.raises(InvalidRequest, match="symbolic link"):
        walk(fd, "dirlink", 100)
    with pytest.raises(InvalidRequest, match="symbolic link"):
        walk(fd, "link", 100)
    with pytest.raises((InvalidRequest, NotFound)):
        walk(fd, "dirlink/secret", 100)
    with pytest.raises(NotFound):
        walk(fd, "nope", 100)
    with pytest.raises(InvalidRequest, match="more than 2 entries"):
        walk(fd, "", 2)


def test_upload_through_a_directory_link_is_refused(tree: tuple[Path, Path, int]) -> None:
    root, outside, fd = tree
    owner = Owner(uid=os.getuid(), gid=os.getgid(), file_mode=0o600, dir_mode=0o700)
    with pytest.raises(InvalidRequest, match="symbolic link"):
        Upload(fd, "dirlink/new.txt", owner)
    with pytest.raises(InvalidRequest, match="symbolic link"):
        stat_target(fd, "dirlink/new.txt")
    with pytest.raises(InvalidRequest, match="symbolic link"):
        stat_target(fd, "link")
    assert sorted(os.listdir(outside)) == ["secret"]


def test_upload_over_a_file_link_is_refused_and_the_host_file_untouched(tree: tuple[Path, Path, int]) -> None:
    root, outside, fd = tree
    owner = Owner(uid=os.getuid(), gid=os.getgid(), file_mode=0o640, dir_mode=0o700)
    up = Upload(fd, "link", owner)
    up.write(b"mine")
    with pytest.raises(InvalidRequest, match="symbolic link"):
        up.commit()
    assert (outside / "secret").read_text() == "HOST SECRET"
    assert (root / "link").is_symlink()
    assert sorted(os.listdir(root)) == ["dirlink", "fifo", "link", "ok.txt", "sub"]  # no temp left


def test_upload_creates_parents_with_owner_and_leaves_no_temp(tree: tuple[Path, Path, int]) -> None:
    root, _, fd = tree
    owner = Owner(uid=4242, gid=4343, file_mode=0o600, dir_mode=0o700)
    up = Upload(fd, "new/deeper/f.bin", owner)
    up.write(b"x" * 10)
    up.commit()
    for p in (root / "new", root / "new" / "deeper", root / "new" / "deeper" / "f.bin"):
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (4242, 4343), p
    assert stat.S_IMODE((root / "new").stat().st_mode) == 0o700
    assert os.listdir(root / "new" / "deeper") == ["f.bin"]
    aborted = Upload(fd, "new/aborted.bin", owner)
    aborted.write(b"partial")
    aborted.abort()
    assert sorted(os.listdir(root / "new")) == ["deeper"]


def test_remove_unlinks_the_link_itself(tree: tuple[Path, Path, int]) -> None:
    root, outside, fd = tree
    remove(fd, "link")
    assert not os.path.lexists(root / "link")
    assert (outside / "secret").read_text() == "HOST SECRET"
    with pytest.raises(Conflict, match="not empty"):
        remove(fd, "sub")
    with pytest.raises(NotFound):
        remove(fd, "nope")
    with pytest.raises(InvalidRequest, match="symbolic link"):
        remove(fd, "dirlink/secret")
    assert (outside / "secret").exists()


def test_open_dir_refuses_a_link_raced_in_for_a_created_directory(tree: tuple[Path, Path, int]) -> None:
    root, outside, fd = tree
    owner = Owner(uid=os.getuid(), gid=os.getgid(), file_mode=0o600, dir_mode=0o700)
    with pytest.raises(InvalidRequest, match="symbolic link"):
        open_dir(fd, ["dirlink"], create=owner)


# --------------------------------------------------------------------------- tokens


def claims(**over: object) -> Claims:
    base: dict[str, object] = dict(
        method="PUT", source="thread", org_id="org_1", key_id="key_1", id="t1", path="a/b.txt",
        expires=2_000_000_000, content_length=5, content_type="text/plain",
    )
    base.update(over)
    return Claims(**base)  # type: ignore[arg-type]


def _flip(text: str, i: int) -> str:
    return text[:i] + ("A" if text[i] != "A" else "B") + text[i + 1:]


def test_token_round_trip_and_url_safe() -> None:
    signer = Signer(KEY, clock=lambda: 1_000_000_000)
    token = signer.sign(claims())
    assert all(c.isalnum() or c in "-_." for c in token)
    assert signer.verify(token, "PUT") == claims()


def test_token_tamper_refused() -> None:
    signer = Signer(KEY, clock=lambda: 1_000_000_000)
    token = signer.sign(claims())
    payload, mac = token.split(".")
    for bad in (_flip(token, 3), _flip(token, len(payload) + 3), payload, payload + ".", "." + mac, "", "a.b.c"):
        with pytest.raises(Forbidden):
            signer.verify(bad, "PUT")
    # a payload re-encoded with another path keeps the old MAC: refused
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["path"] = "../../etc/shadow"
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    with pytest.raises(Forbidden):
        signer.verify(f"{forged}.{mac}", "PUT")
    with pytest.raises(Forbidden):
        Signer(b"other-key-other-key-32-bytes!!!!", clock=lambda: 1_000_000_000).verify(token, "PUT")


def test_token_expiry() -> None:
    now = [1_000_000_000.0]
    signer = Signer(KEY, clock=lambda: now[0])
    token = signer.sign(claims(expires=1_000_000_060))
    assert signer.verify(token, "PUT").path == "a/b.txt"
    now[0] = 1_000_000_060.0
    with pytest.raises(Forbidden, match="expired"):
        signer.verify(token, "PUT")


def test_token_wrong_method() -> None:
    signer = Signer(KEY, clock=lambda: 1_000_000_000)
    put = signer.sign(claims())
    get = signer.sign(claims(method="GET", content_length=None, content_type=None))
    with pytest.raises(Forbidden, match="for PUT, not GET"):
        signer.verify(put, "GET")
    with pytest.raises(Forbidden, match="for GET, not PUT"):
        signer.verify(get, "PUT")
    assert signer.verify(get, "GET").content_length is None


def test_short_key_refused() -> None:
    with pytest.raises(ValueError):
        Signer(b"short")


# --------------------------------------------------------------------------- FilesService over a directory


@dataclass
class FakeThreads:
    """ThreadService's surface that FilesService uses, over plain directories."""

    homes: dict[str, Path]
    uid: int = 4242
    busy_ids: set[str] = field(default_factory=set)
    claims: list[str] = field(default_factory=list)

    async def get(self, org_id: str, thread_id: str) -> object:
        if thread_id not in self.homes:
            raise NotFound(f"no thread {thread_id!r}")
        return SimpleNamespace(org_id=org_id, thread_id=thread_id, uid=self.uid)

    def home(self, thread: object) -> Path | None:
        return self.homes[thread.thread_id]  # type: ignore[attr-defined]

    def busy(self, org_id: str, thread_id: str) -> bool:
        return thread_id in self.busy_ids

    async def claim(self, org_id: str, thread_id: str, trace_id: str) -> object:
        if thread_id in self.busy_ids:
            raise Conflict("busy")
        self.busy_ids.add(thread_id)
        self.claims.append(trace_id)
        return SimpleNamespace(thread=await self.get(org_id, thread_id))

    async def release(self, copy: object) -> None:
        self.busy_ids.discard(copy.thread.thread_id)  # type: ignore[attr-defined]

    async def create_home(self, copy: object, gid: int | None) -> Path:
        return self.homes[copy.thread.thread_id]  # type: ignore[attr-defined]

    @contextlib.asynccontextmanager
    async def changing(self, copy: object, home: Path) -> AsyncIterator[Path]:
        yield home


@dataclass
class FakeVolumes:
    """Read-write for the principals in `writers`, read-only for the rest of the org."""

    path: Path
    writers: set[str] = field(default_factory=set)

    async def access(self, principal: object, slug: str) -> object:
        if slug != "vol":
            raise NotFound("no volume")
        read_only = principal.key_id not in self.writers  # type: ignore[attr-defined]
        return SimpleNamespace(volume=None, path=self.path, read_only=read_only)


@dataclass
class FakeKeys:
    """KeyService.principal_of: the active keys by id."""

    active: dict[str, object]

    async def principal_of(self, key_id: str) -> object | None:
        return self.active.get(key_id)


PRINCIPAL = SimpleNamespace(org=SimpleNamespace(id="org_1", gid=777), key_id="key_1")
BASE = "http://127.0.0.1:9/"


async def body(*chunks: bytes) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


@pytest.fixture
def svc(tmp_path: Path) -> tuple[FilesService, FakeThreads, Path]:
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    os.chown(home, 4242, 777)
    vol = tmp_path / "vol"
    vol.mkdir()
    threads = FakeThreads(homes={"t1": home})
    keys = FakeKeys({"key_1": PRINCIPAL})
    service = FilesService(threads, FakeVolumes(vol), Signer(KEY), keys, max_file_bytes=1000)  # type: ignore[arg-type]
    return service, threads, home


def token_of(signed: dict[str, object]) -> str:
    url = str(signed["url"])
    assert url.startswith(BASE + "v1/files/blob/")
    return url.rsplit("/", 1)[1]


async def test_service_upload_list_download_delete(svc: tuple[FilesService, FakeThreads, Path]) -> None:
    service, threads, home = svc
    signed = await service.upload_url(PRINCIPAL, "thread", "t1", "/home/baponi/d/f.txt", 5, base_url=BASE)  # type: ignore[arg-type]
    assert signed["method"] == "PUT"
    assert signed["headers"] == [{"name": "Content-Type", "value": "application/octet-stream"}]
    assert str(signed["expires_at"]).endswith("Z")
    await service.receive_upload(token_of(signed), body(b"he", b"llo"), declared_length="5", content_type=None)
    st = (home / "d" / "f.txt").stat()
    assert (st.st_uid, st.st_gid) == (4242, 777)
    assert (home / "d" / "f.txt").read_bytes() == b"hello"
    # locked to sign (a new thread would be created) and to write, released each time
    assert threads.claims == ["files:upload_url", "files:upload"] and not threads.busy_ids
    listed = await service.list(PRINCIPAL, "thread", "t1", "d")  # type: ignore[arg-type]
    assert [(e["path"], e["size"], e["is_directory"]) for e in listed] == [("f.txt", 5, False)]
    dl = await service.download_url(PRINCIPAL, "thread", "t1", "d/f.txt", base_url=BASE)  # type: ignore[arg-type]
    download = await service.open_download(token_of(dl))
    try:
        assert download.file.read() == b"hello"
    finally:
        download.file.close()
    await service.delete(PRINCIPAL, "thread", "t1", "d/f.txt")  # type: ignore[arg-type]
    assert not (home / "d" / "f.txt").exists()
    with pytest.raises(NotFound):
        await service.download_url(PRINCIPAL, "thread", "t1", "d/f.txt", base_url=BASE)  # type: ignore[arg-type]


@pytest.mark.parametrize(("chunks", "declared"), [((b"abc",), None), ((b"abcdef",), None), ((b"abc",), "3")])
async def test_service_wrong_byte_count_writes_nothing(
    svc: tuple[FilesService, FakeThreads, Path], chunks: tuple[bytes, ...], declared: str | None
) -> None:
    service, threads, home = svc
    (home / "keep.txt").write_bytes(b"old")
    signed = await service.upload_url(PRINCIPAL, "thread", "t1", "keep.txt", 5, base_url=BASE)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="content_length"):
        await service.receive_upload(token_of(signed), body(*chunks), declared_length=declared, content_type=None)
    assert (home / "keep.txt").read_bytes() == b"old"
    assert os.listdir(home) == ["keep.txt"]
    assert not threads.busy_ids


async def test_service_refusals(svc: tuple[FilesService, FakeThreads, Path]) -> None:
    service, threads, home = svc
    with pytest.raises(InvalidRequest, match="between 0 and 1000"):
        await service.upload_url(PRINCIPAL, "thread", "t1", "f", 1001, base_url=BASE)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="between 0 and 1000"):
        await service.upload_url(PRINCIPAL, "thread", "t1", "f", -1, base_url=BASE)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="content_type"):
        await service.upload_url(PRINCIPAL, "thread", "t1", "f", 1, "a\r\nX-Evil: 1", base_url=BASE)  # type: ignore[arg-type]
    with pytest.raises(NotFound):
        await service.upload_url(PRINCIPAL, "thread", "nope", "f", 1, base_url=BASE)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="thread_id"):
        await service.list(PRINCIPAL, "thread", "../x")  # type: ignore[arg-type]
    with pytest.raises(Forbidden, match="read-only"):
        await service.upload_url(PRINCIPAL, "volume", "vol", "f", 1, base_url=BASE)  # type: ignore[arg-type]
    with pytest.raises(Forbidden, match="read-only"):
        await service.delete(PRINCIPAL, "volume", "vol", "f")  # type: ignore[arg-type]
    signed = await service.upload_url(PRINCIPAL, "thread", "t1", "f", 1, "text/plain", base_url=BASE)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="Content-Type"):
        await service.receive_upload(token_of(signed), body(b"x"), declared_length="1", content_type="image/png")
    threads.busy_ids.add("t1")
    with pytest.raises(Conflict):
        await service.upload_url(PRINCIPAL, "thread", "t1", "f", 1, base_url=BASE)  # type: ignore[arg-type]
    with pytest.raises(Conflict):
        await service.receive_upload(token_of(signed), body(b"x"), declared_length="1", content_type=None)
    with pytest.raises(Conflict):
        await service.delete(PRINCIPAL, "thread", "t1", "f")  # type: ignore[arg-type]
    assert not (home / "f").exists()
    with pytest.raises(Forbidden, match="for PUT"):
        await service.open_download(token_of(signed))


# --------------------------------------------------------------------------- the key behind a URL (#12 item 7)


def test_token_names_its_key() -> None:
    signer = Signer(KEY, clock=lambda: 1_000_000_000)
    token = signer.sign(claims(key_id="key_abc"))
    payload = token.split(".")[0]
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert body["key_id"] == "key_abc" and body["v"] == 2
    assert signer.verify(token, "PUT").key_id == "key_abc"
    with pytest.raises(ValueError, match="API key"):
        signer.sign(claims(key_id=""))


def _genuine(signer: Signer, body: dict[str, object]) -> str:
    """A token MAC'd with the server's own key: only its claims can make it fail."""
    payload = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    return f"{payload}.{signer._mac(payload)}"


def test_token_without_a_key_is_refused() -> None:
    signer = Signer(KEY, clock=lambda: 1_000_000_000)
    fields = dict(method="GET", source="thread", org_id="org_1", id="t1", path="a", expires=2_000_000_000)
    with pytest.raises(Forbidden):  # what version 1 signed: no key id
        signer.verify(_genuine(signer, {"v": 1, **fields}), "GET")
    for key_id in (None, "", 5):
        with pytest.raises(Forbidden):
            signer.verify(_genuine(signer, {"v": 2, **fields, "key_id": key_id}), "GET")
    assert signer.verify(_genuine(signer, {"v": 2, **fields, "key_id": "key_1"}), "GET").key_id == "key_1"


async def test_revoked_key_urls_are_refused_at_use(svc: tuple[FilesService, FakeThreads, Path]) -> None:
    service, threads, home = svc
    (home / "f.txt").write_bytes(b"old")
    get = token_of(await service.download_url(PRINCIPAL, "thread", "t1", "f.txt", base_url=BASE))  # type: ignore[arg-type]
    put = token_of(await service.upload_url(PRINCIPAL, "thread", "t1", "f.txt", 3, base_url=BASE))  # type: ignore[arg-type]
    service._keys.active.clear()  # type: ignore[attr-defined]  # the key is revoked
    with pytest.raises(Forbidden, match="revoked"):
        await service.open_download(get)
    with pytest.raises(Forbidden, match="revoked"):
        await service.receive_upload(put, body(b"new"), declared_length="3", content_type=None)
    assert (home / "f.txt").read_bytes() == b"old" and threads.claims == ["files:upload_url"]
    # an active key of another organization under the same id grants nothing either
    service._keys.active["key_1"] = SimpleNamespace(org=SimpleNamespace(id="org_2"), key_id="key_1")  # type: ignore[attr-defined]
    with pytest.raises(Forbidden):
        await service.open_download(get)


async def test_volume_upload_url_needs_a_binding_still_read_write(
    svc: tuple[FilesService, FakeThreads, Path], tmp_path: Path
) -> None:
    service, _, _ = svc
    volumes = service._volumes
    volumes.writers.add("key_1")  # type: ignore[union-attr]
    (tmp_path / "vol" / "v.txt").write_bytes(b"shared")
    put = token_of(await service.upload_url(PRINCIPAL, "volume", "vol", "v.txt", 3, base_url=BASE))  # type: ignore[arg-type]
    get = token_of(await service.download_url(PRINCIPAL, "volume", "vol", "v.txt", base_url=BASE))  # type: ignore[arg-type]
    volumes.writers.clear()  # type: ignore[union-attr]  # the binding is lowered to read-only
    with pytest.raises(Forbidden, match="read-only"):
        await service.receive_upload(put, body(b"new"), declared_length="3", content_type=None)
    assert (tmp_path / "vol" / "v.txt").read_bytes() == b"shared"
    download = await service.open_download(get)  # reading is still allowed
    try:
        assert download.file.read() == b"shared"
    finally:
        download.file.close()


async def test_listed_paths_are_relative_to_the_listed_directory(
    svc: tuple[FilesService, FakeThreads, Path]
) -> None:
    service, _, home = svc
    (home / "_plots" / "deep").mkdir(parents=True)
    (home / "_plots" / "a.png").write_bytes(b"png")
    (home / "_plots" / "deep" / "b.png").write_bytes(b"b")

    async def listed(path: str | None) -> list[tuple[str, str]]:
        return [(e["name"], e["path"]) for e in await service.list(PRINCIPAL, "thread", "t1", path)]  # type: ignore[arg-type]

    assert await listed(None) == [
        ("_plots", "_plots"), ("a.png", "_plots/a.png"), ("deep", "_plots/deep"), ("b.png", "_plots/deep/b.png"),
    ]
    expected = [("a.png", "a.png"), ("deep", "deep"), ("b.png", "deep/b.png")]
    assert await listed("_plots") == expected
    assert await listed("/home/baponi/_plots/") == expected
    assert await listed("_plots/deep") == [("b.png", "b.png")]
    assert await listed("_plots/a.png") == [("a.png", "a.png")]  # one file: its name
    for entry in await service.list(PRINCIPAL, "thread", "t1", "_plots"):  # type: ignore[arg-type]
        if not entry["is_directory"]:  # what a client composes: the listed path, then the entry's
            await service.download_url(PRINCIPAL, "thread", "t1", f"_plots/{entry['path']}", base_url=BASE)  # type: ignore[arg-type]
