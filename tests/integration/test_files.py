"""The Files API against a real server: the official SDK, signed URLs over plain HTTP, real
threads (btrfs, bubblewrap), and what sandbox code can plant in its home (links, FIFOs)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import baponi
import httpx
import pytest

from sandboxd.service.keys import load_or_create_secret
from sandboxd.service.signing import Claims, Signer, files_signing_key

pytestmark = pytest.mark.skipif(
    not (Path("/usr/sbin/mkfs.btrfs").exists() or Path("/usr/bin/mkfs.btrfs").exists()),
    reason="threads need btrfs-progs",
)

MB = 1024 * 1024


@pytest.fixture(scope="module")
def sdk(server: Any, api_key: str) -> Iterator[baponi.Baponi]:
    with baponi.Baponi(api_key=api_key, base_url=server.url, timeout=120) as client:
        yield client


@pytest.fixture
def http(server: Any, api_key: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {api_key}"}, timeout=120) as c:
        yield c


@pytest.fixture
def blob() -> Iterator[httpx.Client]:
    """A client with no Authorization at all: signed URLs must work on their own."""
    with httpx.Client(timeout=120) as c:
        yield c


def new_thread() -> str:
    return f"files-{uuid.uuid4().hex[:12]}"


def run(sdk: baponi.Baponi, thread_id: str, code: str, language: str = "bash") -> baponi.SandboxResult:
    result = sdk.execute(code, language=language, thread_id=thread_id, timeout=60)
    assert result.success, (result.stdout, result.stderr, result.error)
    return result


def headers_of(signed: baponi.SignedUrl) -> dict[str, str]:
    return {h.name: h.value for h in signed.headers}


def host_home(server: Any, thread_id: str) -> Path:
    (home,) = (server.settings.storage_mount_point / "threads").glob(f"*/{thread_id}/home")
    return home


def db_rows(server: Any, query: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{server.data_dir / 'sandboxd.db'}?mode=ro", uri=True) as db:
        return db.execute(query, args).fetchall()


def upload(sdk: baponi.Baponi, blob: httpx.Client, thread_id: str, path: str, data: bytes) -> httpx.Response:
    signed = sdk.upload_url(path=path, content_length=len(data), id=thread_id, content_type="text/plain")
    return blob.put(signed.url, content=data, headers=headers_of(signed))


def download(sdk: baponi.Baponi, blob: httpx.Client, thread_id: str, path: str) -> httpx.Response:
    signed = sdk.download_url(path=path, id=thread_id)
    assert signed.method == "GET"
    return blob.get(signed.url, headers=headers_of(signed))


def cli(server: Any, *args: str) -> str:
    """A `sandboxd` command on the live server's data dir, as an operator runs it; its stderr."""
    done = server.cli(*args)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return str(done.stderr)


def cli_key(server: Any, *args: str) -> tuple[str, str]:
    """`sandboxd keys create ARGS`: the key (stdout) and its id (stderr)."""
    done = server.cli("keys", "create", *args)
    assert done.returncode == 0, done.stderr
    match = re.search(r"key id (key_\S+)", done.stderr)
    assert match, done.stderr
    return done.stdout.strip(), match.group(1)


def assert_refused(resp: httpx.Response, why: str) -> None:
    assert resp.status_code == 403, (resp.status_code, resp.text)
    assert resp.json()["error"] == "forbidden" and why in resp.json()["message"], resp.text


# --------------------------------------------------------------------------- the happy paths


def test_file_written_by_code_is_listed_and_downloads(sdk: baponi.Baponi, http: httpx.Client, blob: httpx.Client) -> None:
    t = new_thread()
    run(sdk, t, "mkdir -p /home/baponi/out/deep && printf hello > /home/baponi/out/a.txt "
                "&& printf 1234567 > /home/baponi/out/deep/b.bin && printf x > /home/baponi/top.txt")
    entries = sdk.list_files(id=t)
    assert all(isinstance(e, baponi.FileEntry) for e in entries)
    by_path = {e.path: e for e in entries}
    assert {"out/a.txt", "out/deep/b.bin", "top.txt", "out", "out/deep"} <= set(by_path)
    assert by_path["out/a.txt"].size == 5 and by_path["out/deep/b.bin"].size == 7
    assert by_path["out/a.txt"].modified and by_path["out/a.txt"].modified.endswith("Z")
    # `path` is a directory to list; returned paths are relative to it (as Baponi answers)
    assert [e.path for e in sdk.list_files(id=t, path="out/deep")] == ["b.bin"]
    assert [e.path for e in sdk.list_files(id=t, path="/home/baponi/out/deep/")] == ["b.bin"]
    raw = http.post("/v1/files/list", json={"id": t, "path": "out"}).json()
    assert raw["files"][0] == {
        "name": "a.txt", "path": "a.txt", "size": 5,
        "modified": raw["files"][0]["modified"], "is_directory": False,
    }
    assert {"name": "deep", "path": "deep", "size": 0, "modified": raw["files"][1]["modified"],
            "is_directory": True} in raw["files"]
    assert [e.path for e in sdk.list_files(id=t, path="out/a.txt")] == ["a.txt"]  # one file: its name
    got = download(sdk, blob, t, "out/a.txt")
    assert got.status_code == 200 and got.content == b"hello"
    assert got.headers["content-length"] == "5"
    got = download(sdk, blob, t, "/home/baponi/out/deep/b.bin")
    assert got.content == b"1234567"


def test_uploaded_file_is_visible_to_the_next_execution_and_owned_by_it(
    server: Any, sdk: baponi.Baponi, blob: httpx.Client
) -> None:
    t = new_thread()
    run(sdk, t, "true")
    put = upload(sdk, blob, t, "inbox/data.txt", b"from the API\n")
    assert put.status_code == 200, put.text
    assert put.json() == {"path": "inbox/data.txt", "size": 13}
    home = host_home(server, t)
    st_home, st_file = home.stat(), (home / "inbox" / "data.txt").stat()
    assert (st_file.st_uid, st_file.st_gid) == (st_home.st_uid, st_home.st_gid)
    assert st_file.st_uid != 0
    assert not [p for p in (home / "inbox").iterdir() if p.name != "data.txt"]  # no temp left
    result = run(sdk, t, (
        "import os\n"
        "p = '/home/baponi/inbox/data.txt'\n"
        "print(open(p).read().strip(), os.stat(p).st_uid == os.getuid())\n"
        "open(p, 'w').write('changed by code')\n"
        "open('/home/baponi/inbox/new.txt', 'w').write('new')\n"
    ), language="python")
    assert result.stdout == "from the API True\n"
    assert download(sdk, blob, t, "inbox/data.txt").content == b"changed by code"
    assert download(sdk, blob, t, "inbox/new.txt").content == b"new"
    # and an upload replaces a file the code wrote
    assert upload(sdk, blob, t, "inbox/data.txt", b"v3").status_code == 200
    assert run(sdk, t, "cat /home/baponi/inbox/data.txt").stdout == "v3"


def _pattern(size: int) -> Iterator[bytes]:
    """`size` deterministic pseudo-random bytes, in 1 MiB chunks, never all in memory."""
    block = 0
    sent = 0
    while sent < size:
        seed = hashlib.sha256(block.to_bytes(8, "big")).digest()
        chunk = (seed * (MB // len(seed)))[: min(MB, size - sent)]
        chunk = bytes(b ^ (block & 0xFF) for b in chunk[:64]) + chunk[64:]
        sent += len(chunk)
        block += 1
        yield chunk


def test_round_trip_of_50_mb_streams_with_matching_sha256(sdk: baponi.Baponi, blob: httpx.Client) -> None:
    size = 50 * MB
    expected = hashlib.sha256()
    for chunk in _pattern(size):
        expected.update(chunk)
    t = new_thread()
    run(sdk, t, "true")
    signed = sdk.upload_url(path="big/blob.bin", content_length=size, id=t)
    assert signed.method == "PUT"
    assert headers_of(signed) == {"Content-Type": "application/octet-stream"}
    put = blob.put(signed.url, content=_pattern(size), headers={**headers_of(signed), "Content-Length": str(size)})
    assert put.status_code == 200, put.text
    (entry,) = sdk.list_files(id=t, path="big/blob.bin")
    assert entry.size == size
    got = hashlib.sha256()
    received = 0
    with blob.stream("GET", sdk.download_url(path="big/blob.bin", id=t).url) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-length"] == str(size)
        for chunk in resp.iter_bytes():
            received += len(chunk)
            got.update(chunk)
    assert received == size
    assert got.hexdigest() == expected.hexdigest()
    inside = run(sdk, t, "sha256sum /home/baponi/big/blob.bin | cut -d' ' -f1").stdout.strip()
    assert inside == expected.hexdigest()


def test_delete(server: Any, sdk: baponi.Baponi, http: httpx.Client) -> None:
    t = new_thread()
    run(sdk, t, "mkdir -p /home/baponi/d/empty && echo x > /home/baponi/d/f.txt && ln -s /etc/shadow /home/baponi/d/l")
    assert http.request("DELETE", "/v1/files", json={"id": t, "path": "d"}).status_code == 409
    resp = http.request("DELETE", "/v1/files", json={"source": "thread", "id": t, "path": "d/f.txt"})
    assert resp.status_code == 204 and resp.content == b""
    assert http.request("DELETE", "/v1/files", json={"id": t, "path": "d/empty"}).status_code == 204
    shadow = Path("/etc/shadow").read_bytes() if Path("/etc/shadow").exists() else None
    assert http.request("DELETE", "/v1/files", json={"id": t, "path": "/home/baponi/d/l"}).status_code == 204
    if shadow is not None:
        assert Path("/etc/shadow").read_bytes() == shadow
    assert [e.path for e in sdk.list_files(id=t)] == ["d"]
    missing = http.request("DELETE", "/v1/files", json={"id": t, "path": "d/f.txt"})
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert http.request("DELETE", "/v1/files", json={"id": t, "path": "d"}).status_code == 204
    assert http.request("DELETE", "/v1/files", json={"id": new_thread(), "path": "x"}).status_code == 404
    assert http.request("DELETE", "/v1/files", json={"id": t, "path": "../x"}).status_code == 400
    assert http.request("DELETE", "/v1/files", json={"id": t, "path": "x", "extra": 1}).status_code == 400
    assert run(sdk, t, "ls -A /home/baponi").stdout == ""


# --------------------------------------------------------------------------- what real clients do (#12 item 14)


def test_sdk_lists_a_directory_and_downloads_what_it_composes(sdk: baponi.Baponi, blob: httpx.Client) -> None:
    """The Biomni agent's Baponi integration: list `source="thread", path="_plots"`, then download
    `f"_plots/{entry.path}"` for each plot. Entry paths are relative to the listed directory. (The
    SDK's FileEntry has only path, size and modified: a client picks files by their names.)"""
    t = new_thread()
    run(sdk, t, "mkdir -p /home/baponi/_plots/run1 && printf A > /home/baponi/_plots/a.png "
                "&& printf BB > /home/baponi/_plots/run1/b.png && printf top > /home/baponi/a.png")
    entries = sdk.list_files(source="thread", id=t, path="_plots")
    got = {}
    for entry in entries:
        if not entry.path.endswith(".png"):
            continue
        signed = sdk.download_url(source="thread", id=t, path=f"_plots/{entry.path}")  # 404 before #12
        resp = blob.get(signed.url, headers=headers_of(signed))
        assert resp.status_code == 200, (entry.path, resp.text)
        got[entry.path] = resp.content
    assert got == {"a.png": b"A", "run1/b.png": b"BB"}
    assert {e.path for e in entries} == {"a.png", "run1", "run1/b.png"}
    # a nested directory, named the absolute way, the same
    nested = sdk.list_files(id=t, path="/home/baponi/_plots/run1")
    assert [e.path for e in nested] == ["b.png"]
    assert download(sdk, blob, t, f"_plots/run1/{nested[0].path}").content == b"BB"


# --------------------------------------------------------------------------- a URL lives only as long as its key (#12 item 7)


def test_a_revoked_keys_urls_are_refused_at_once(server: Any, sdk: baponi.Baponi, blob: httpx.Client) -> None:
    secret, key_id = cli_key(server, "--name", "soon-revoked")
    t = new_thread()
    with baponi.Baponi(api_key=secret, base_url=server.url, timeout=120) as theirs:
        run(theirs, t, "printf before > /home/baponi/f.txt")
        get = theirs.download_url(path="f.txt", id=t)
        put = theirs.upload_url(path="f.txt", content_length=5, id=t, content_type="text/plain")
    # both work, so the server has looked the key up (and cached it) before the revocation
    assert blob.get(get.url).content == b"before"
    assert blob.put(put.url, content=b"after", headers=headers_of(put)).status_code == 200
    cli(server, "keys", "revoke", key_id)  # another process on the live server's data dir
    assert_refused(blob.get(get.url), "revoked")
    assert_refused(blob.put(put.url, content=b"again", headers=headers_of(put)), "revoked")
    assert download(sdk, blob, t, "f.txt").content == b"after"  # the org's other key still reads it
    assert b"again" not in run(sdk, t, "cat /home/baponi/f.txt").stdout.encode()


def test_a_revoked_keys_volume_urls_are_refused(server: Any, blob: httpx.Client) -> None:
    slug = f"urls-{uuid.uuid4().hex[:8]}"
    cli(server, "volumes", "create", slug, "--quota", "10")
    secret, key_id = cli_key(server, "--volume", slug)
    with baponi.Baponi(api_key=secret, base_url=server.url, timeout=120) as theirs:
        put = theirs.upload_url(source="volume", id=slug, path="v.txt", content_length=2)
        assert blob.put(put.url, content=b"v1", headers=headers_of(put)).status_code == 200
        get = theirs.download_url(source="volume", id=slug, path="v.txt")
        assert blob.get(get.url).content == b"v1"
    cli(server, "keys", "revoke", key_id)
    assert_refused(blob.get(get.url), "revoked")
    assert_refused(blob.put(put.url, content=b"v2", headers=headers_of(put)), "revoked")
    cli(server, "volumes", "delete", slug)  # allowed now that no active key is bound
    assert_refused(blob.get(get.url), "revoked")


def test_a_volume_upload_url_ends_when_its_binding_is_lowered(server: Any, blob: httpx.Client) -> None:
    slug = f"urls-{uuid.uuid4().hex[:8]}"
    cli(server, "volumes", "create", slug, "--quota", "10")
    secret, key_id = cli_key(server, "--volume", slug)
    with baponi.Baponi(api_key=secret, base_url=server.url, timeout=120) as theirs:
        put = theirs.upload_url(source="volume", id=slug, path="v.txt", content_length=2)
        assert blob.put(put.url, content=b"v1", headers=headers_of(put)).status_code == 200
        get = theirs.download_url(source="volume", id=slug, path="v.txt")
        assert blob.get(get.url).content == b"v1"
        cli(server, "keys", "bind", key_id, f"{slug}:ro")  # lowered, from beside the live server
        assert_refused(blob.put(put.url, content=b"v2", headers=headers_of(put)), "read-only")
        assert blob.get(get.url).content == b"v1"  # reading is still allowed
        # and its executions see the new binding at once too
        probe = theirs.execute(f"echo x > /data/{slug}/w", language="bash", timeout=30)
        assert not probe.success and "Read-only file system" in probe.stderr, probe
        cli(server, "keys", "bind", key_id, slug)  # read-write again: the same URL works again
        assert blob.put(put.url, content=b"v3", headers=headers_of(put)).status_code == 200
        cli(server, "keys", "unbind", key_id, slug)
        assert_refused(blob.put(put.url, content=b"v4", headers=headers_of(put)), "read-only")
        assert blob.get(get.url).content == b"v3"


# --------------------------------------------------------------------------- refusals


def test_signed_urls_refuse_tampering_expiry_and_the_wrong_method(
    server: Any, sdk: baponi.Baponi, blob: httpx.Client
) -> None:
    t = new_thread()
    run(sdk, t, "echo secret > /home/baponi/s.txt")
    get_url = sdk.download_url(path="s.txt", id=t).url
    put = sdk.upload_url(path="p.txt", content_length=2, id=t)
    token = get_url.rsplit("/", 1)[1]
    payload, mac = token.split(".")
    base = get_url[: -len(token)]

    def refused(resp: httpx.Response) -> None:
        assert resp.status_code == 403, resp.text
        assert resp.json()["error"] == "forbidden"
        assert b"secret" not in resp.content

    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    refused(blob.get(base + f"{flipped}.{mac}"))
    refused(blob.get(base + f"{payload}.{mac[:-1]}{'A' if mac[-1] != 'A' else 'B'}"))
    refused(blob.get(base + payload))
    refused(blob.get(base + "not-a-token"))
    refused(blob.get(put.url))  # a PUT URL cannot read
    refused(blob.put(get_url, content=b"xx"))  # a GET URL cannot write
    # a genuine token (the server's own key) that has expired
    signer = Signer(files_signing_key(load_or_create_secret(server.data_dir)))
    ((org_id, key_id),) = db_rows(server, "SELECT org_id, key_id FROM executions WHERE thread_id = ?", t)
    expired = signer.sign(Claims(method="GET", source="thread", org_id=org_id, key_id=key_id, id=t,
                                 path="s.txt", expires=int(time.time()) - 1))
    refused(blob.get(base + expired))
    fresh = signer.sign(Claims(method="GET", source="thread", org_id=org_id, key_id=key_id, id=t,
                               path="s.txt", expires=int(time.time()) + 60))
    assert blob.get(base + fresh).content == b"secret\n"  # the same token, unexpired, works
    assert blob.put(put.url, content=b"ok").status_code == 200


def test_wrong_byte_count_is_refused_and_writes_nothing(sdk: baponi.Baponi, blob: httpx.Client) -> None:
    t = new_thread()
    run(sdk, t, "printf old > /home/baponi/f.txt")
    signed = sdk.upload_url(path="f.txt", content_length=10, id=t)
    short = blob.put(signed.url, content=b"12345")
    assert short.status_code == 400 and "content_length" in short.json()["message"]

    def chunks() -> Iterator[bytes]:  # chunked: no Content-Length, 12 bytes for 10 signed
        yield b"123456"
        yield b"789012"

    assert blob.put(signed.url, content=chunks()).status_code == 400
    assert download(sdk, blob, t, "f.txt").content == b"old"
    assert [e.path for e in sdk.list_files(id=t)] == ["f.txt"]
    with pytest.raises(baponi.APIValidationError):
        sdk.upload_url(path="g", content_length=-1, id=t)
    with pytest.raises(baponi.APIValidationError):
        sdk.upload_url(path="g", content_length=10 * 1024**3 + 1, id=t)


def test_upload_into_a_busy_thread_is_409(server: Any, sdk: baponi.Baponi, blob: httpx.Client) -> None:
    t = new_thread()
    run(sdk, t, "true")
    early = sdk.upload_url(path="x.txt", content_length=1, id=t)  # signed while idle
    done = threading.Event()

    def slow() -> None:
        try:
            sdk.execute("sleep 4", language="bash", thread_id=t, timeout=30)
        finally:
            done.set()

    worker = threading.Thread(target=slow)
    worker.start()
    try:
        deadline = time.monotonic() + 30
        while not db_rows(server, "SELECT 1 FROM executions WHERE thread_id = ? AND status = 'running'", t):
            assert time.monotonic() < deadline and not done.is_set(), "the slow execution never ran"
            time.sleep(0.05)
        with pytest.raises(baponi.ThreadBusyError):
            sdk.upload_url(path="x.txt", content_length=1, id=t)
        busy = blob.put(early.url, content=b"x")
        assert busy.status_code == 409 and busy.json()["error"] == "conflict"
        assert sdk.list_files(id=t) == []  # reads still work
    finally:
        worker.join(timeout=60)
    assert blob.put(early.url, content=b"x").status_code == 200
    assert run(sdk, t, "cat /home/baponi/x.txt").stdout == "x"


def test_missing_thread_and_missing_file_are_404(sdk: baponi.Baponi, http: httpx.Client) -> None:
    t = new_thread()
    for call in (
        lambda: sdk.list_files(id=t),
        lambda: sdk.download_url(path="a", id=t),
    ):
        with pytest.raises(baponi.BaponiError) as info:
            call()
        assert info.value.status_code == 404 and info.value.error_type == "not_found"
    run(sdk, t, "true")
    with pytest.raises(baponi.BaponiError) as info:
        sdk.download_url(path="nope.txt", id=t)
    assert info.value.status_code == 404
    with pytest.raises(baponi.BaponiError) as info:
        sdk.list_files(id=t, path="nope")
    assert info.value.status_code == 404
    assert http.post("/v1/files/list", json={"source": "volume", "id": "no-such-volume"}).status_code == 404


def test_an_upload_creates_a_thread_that_has_not_run(
    server: Any, sdk: baponi.Baponi, http: httpx.Client, blob: httpx.Client
) -> None:
    """Issue #17: upload input files first, then run code on them (no 404 "run code first")."""
    t = new_thread()
    assert upload(sdk, blob, t, "in/data.csv", b"a,b\n1,2\n").status_code == 200
    assert [(e.path, e.size) for e in sdk.list_files(id=t, path="in")] == [("data.csv", 8)]
    assert db_rows(server, "SELECT count(*) FROM threads WHERE thread_id = ?", t) == [(1,)]
    # the run sees it, and may change it: it is the thread's own file
    assert run(sdk, t, "echo 3,4 >> /home/baponi/in/data.csv && wc -l < /home/baponi/in/data.csv").stdout == "3\n"
    # the raw API too: a URL for a fresh thread, PUT without credentials, then the run reads it
    raw = new_thread()
    signed = http.post("/v1/files/upload_url", json={"id": raw, "path": "note.txt", "content_length": 2})
    assert signed.status_code == 200, signed.text
    put = blob.put(signed.json()["url"], content=b"hi", headers={h["name"]: h["value"] for h in signed.json()["headers"]})
    assert put.status_code == 200 and put.json() == {"path": "note.txt", "size": 2}
    assert run(sdk, raw, "cat /home/baponi/note.txt").stdout == "hi"


async def test_an_upload_to_a_new_thread_respects_the_thread_limit(server_factory: Any) -> None:
    limited = server_factory(max_threads_per_org=1)
    key = await limited.create_key()
    with baponi.Baponi(api_key=key, base_url=limited.url, timeout=120) as sdk:
        sdk.upload_url(path="a.txt", content_length=1, id="first-thread")
        with pytest.raises(baponi.BaponiError) as info:
            sdk.upload_url(path="a.txt", content_length=1, id="second-thread")
    assert info.value.status_code == 403 and "limit of 1 threads" in str(info.value)
    limited.stop()


@pytest.mark.parametrize(
    "path",
    ["../x", "a/../../x", "/etc/passwd", "/home/baponi/../x", "a\\..\\x", "%2e%2e/x", "a%2Fb", "a%00b",
     "a\x00b", "%252e%252e"],
)
def test_traversal_is_400(sdk: baponi.Baponi, http: httpx.Client, path: str) -> None:
    with pytest.raises(baponi.APIValidationError):
        sdk.download_url(path=path, id="any-thread")
    with pytest.raises(baponi.APIValidationError):
        sdk.upload_url(path=path, content_length=1, id="any-thread")
    with pytest.raises(baponi.APIValidationError):
        sdk.list_files(path=path, id="any-thread")
    resp = http.request("DELETE", "/v1/files", json={"id": "any-thread", "path": path})
    assert resp.status_code == 400 and resp.json()["error"] == "validation_error"


def test_request_validation(http: httpx.Client, server: Any) -> None:
    for body in (
        {"id": "t", "path": "a", "content_length": "5"},  # strict: no string for an int
        {"id": "t", "path": "a", "content_length": 1.5},  # 1.0 is the integer 1 (JSON Schema)
        {"id": "t", "path": "a"},
        {"id": "t", "path": "a", "content_length": 1, "extra": True},
        {"source": "bucket", "id": "t", "path": "a", "content_length": 1},
        {"id": 5, "path": "a", "content_length": 1},
    ):
        resp = http.post("/v1/files/upload_url", json=body)
        assert resp.status_code == 400, body
        assert set(resp.json()) == {"error", "message"}
    with httpx.Client(base_url=server.url) as anon:
        resp = anon.post("/v1/files/list", json={"id": "t"})
        assert resp.status_code == 401 and resp.json()["error"] == "unauthorized"
        paths = anon.get("/openapi.json").json()["paths"]
    for path, method in (("/v1/files/list", "post"), ("/v1/files/upload_url", "post"),
                         ("/v1/files/download_url", "post"), ("/v1/files", "delete")):
        assert paths[path][method]["security"], path  # a Bearer key
    for method in ("get", "put"):
        assert "security" not in paths["/v1/files/blob/{token}"][method]  # the token is the authority


# --------------------------------------------------------------------------- what sandbox code can plant


def test_links_and_fifos_planted_by_code_are_never_followed(
    server: Any, sdk: baponi.Baponi, http: httpx.Client, blob: httpx.Client
) -> None:
    victim = new_thread()
    run(sdk, victim, "echo victim-private > /home/baponi/private.txt")
    victim_home = host_home(server, victim)
    t = new_thread()
    run(sdk, t, "true")
    host_shadow = Path("/etc/shadow").read_bytes() if Path("/etc/shadow").exists() else b"root:"
    run(sdk, t, f"""
        cd /home/baponi
        ln -s /etc/shadow shadow
        ln -s /etc etc
        ln -s / rootfs
        ln -s {victim_home} victim
        ln -s {victim_home}/private.txt victim.txt
        ln -s ../../../../../../etc/passwd rel
        mkfifo pipe
        mkdir real && echo fine > real/ok.txt
        ln -s /etc real/etc
    """)
    listed = {e.path for e in sdk.list_files(id=t)}
    assert listed == {"real", "real/ok.txt"}
    for path in ("shadow", "etc/shadow", "rootfs/etc/shadow", "victim/private.txt", "victim.txt", "rel",
                 "real/etc/shadow", "pipe", "/home/baponi/victim/private.txt"):
        resp = http.post("/v1/files/download_url", json={"id": t, "path": path})
        assert resp.status_code in (400, 404), (path, resp.status_code, resp.text)
        assert b"victim-private" not in resp.content and b"root:" not in resp.content
    for path in ("etc", "rootfs", "victim", "real/etc"):
        resp = http.post("/v1/files/list", json={"id": t, "path": path})
        assert resp.status_code in (400, 404), (path, resp.text)
        assert b"shadow" not in resp.content and b"private" not in resp.content
    for path in ("etc/evil", "victim/evil.txt", "rootfs/tmp/evil", "real/etc/evil"):
        resp = http.post("/v1/files/upload_url", json={"id": t, "path": path, "content_length": 1})
        assert resp.status_code in (400, 404), (path, resp.text)
    assert not Path("/etc/evil").exists() and not (victim_home / "evil.txt").exists()
    # an upload aimed at a link is refused: the host file is not written through it
    with pytest.raises(baponi.APIValidationError, match="symbolic link"):
        upload(sdk, blob, t, "shadow", b"mine")
    if Path("/etc/shadow").exists():
        assert Path("/etc/shadow").read_bytes() == host_shadow
    assert run(sdk, t, "readlink /home/baponi/shadow").stdout == "/etc/shadow\n"
    assert (victim_home / "private.txt").read_text() == "victim-private\n"


def test_link_swapped_in_after_signing_is_not_followed(server: Any, sdk: baponi.Baponi, blob: httpx.Client) -> None:
    t = new_thread()
    run(sdk, t, "mkdir /home/baponi/d && echo mine > /home/baponi/d/f.txt")
    get_url = sdk.download_url(path="d/f.txt", id=t).url
    put = sdk.upload_url(path="d/new.txt", content_length=4, id=t)
    run(sdk, t, "cd /home/baponi && rm -r d && ln -s /etc d")
    resp = blob.get(get_url)
    assert resp.status_code in (400, 404) and b"root:" not in resp.content
    resp = blob.put(put.url, content=b"evil", headers=headers_of(put))
    assert resp.status_code in (400, 404)
    assert not Path("/etc/new.txt").exists()


def test_quota_exceeded_is_413(server_factory: Any) -> None:
    small = server_factory(thread_quota_mib=1, auth_failures_allowed=100_000)
    key = asyncio.run(small.create_key())
    with baponi.Baponi(api_key=key, base_url=small.url, timeout=120) as sdk, httpx.Client(timeout=120) as blob:
        t = new_thread()
        run(sdk, t, "true")
        size = 4 * MB
        signed = sdk.upload_url(path="big.bin", content_length=size, id=t)
        resp = blob.put(signed.url, content=os.urandom(size), headers=headers_of(signed))
        assert resp.status_code == 413, resp.text
        assert resp.json()["error"] == "payload_too_large" and "quota" in resp.json()["message"]
        assert sdk.list_files(id=t) == []
        assert upload(sdk, blob, t, "small.txt", b"fits").status_code == 200
