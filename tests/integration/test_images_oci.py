"""Pull and import with skopeo against a real registry on loopback; build with mmdebstrap."""

# ruff: noqa: F811  (the fixtures imported from _registry are redefined as parameters)

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _registry import (  # noqa: F401  (fixtures)
    LayoutImage,
    Registry,
    auth_registry,
    debian_image_layout,
    push,
    registry,
    write_tiny_layout,
)

from sandboxd.images import oci, skopeo
from sandboxd.errors import ImageError
from sandboxd.images.skopeo import Credentials, Source


class Spy:
    """Records the argv and environment of every process the code under test starts."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], dict[str, str]]] = []

    @property
    def authfile(self) -> Path:
        argv = self.calls[-1][0]
        return Path(argv[argv.index("--src-authfile") + 1])


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> Iterator[Spy]:
    spy = Spy()
    real = subprocess.Popen

    def popen(argv: list[str], *args: Any, **kwargs: Any) -> Any:
        spy.calls.append((list(argv), dict(kwargs.get("env") or {})))
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(skopeo.subprocess, "Popen", popen)
    yield spy


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> LayoutImage:
    return write_tiny_layout(tmp_path_factory.mktemp("tiny") / "layout", "tiny", {"marker": b"tiny image\n"})


def assert_secret_absent(spy: Spy, secret: str) -> None:
    for argv, env in spy.calls:
        assert not any(secret in a for a in argv), argv
        assert not any(secret in v for v in env.values())
        assert set(env) <= {"PATH", "HOME", "XDG_RUNTIME_DIR", "TMPDIR", *skopeo._PROXY_VARS}


def test_debian_image_is_one_uncompressed_layer(debian_image_layout: LayoutImage) -> None:
    image = oci.read_image(debian_image_layout.layout, debian_image_layout.tag)
    assert [layer.media_type for layer in image.layers] == [oci.OCI_LAYER_TAR]
    assert image.diff_ids == (image.layers[0].digest,)
    assert image.env["LANG"] == "C.UTF-8" and image.path == oci.DEFAULT_PATH
    assert (image.architecture, image.os) == (oci.host_architecture(), "linux")
    with tarfile.open(oci.blob_path(debian_image_layout.layout, image.layers[0].digest)) as tar:
        names = set(tar.getnames())
    assert {"./usr/bin/python3", "./bin/bash"} <= names or {"./usr/bin/python3", "./usr/bin/bash"} <= names


def test_pull_from_registry(
    debian_image_layout: LayoutImage, registry: Registry, tmp_path: Path, spy: Spy
) -> None:
    digest = push(debian_image_layout.transport, registry, "sandboxd/debian:1")
    lines: list[str] = []
    skopeo.copy(Source("registry", f"{registry.host}/sandboxd/debian:1"), tmp_path / "store", "deb",
                plain_http=True, progress=lines.append)
    pulled = oci.read_image(tmp_path / "store", "deb")
    built = oci.read_image(debian_image_layout.layout, debian_image_layout.tag)
    assert pulled.diff_ids == built.diff_ids and pulled.config_digest == built.config_digest
    assert any("Copying blob" in line for line in lines)
    assert str(spy.authfile).startswith("/proc/self/fd/")  # a memfd: never a file on a disk
    assert [p.name for p in (tmp_path / "store").iterdir() if p.name.startswith(".")] == []

    # Again, by digest, under a second tag: every blob is already there and is not written again.
    layer = oci.blob_path(tmp_path / "store", pulled.layers[0].digest)
    before = layer.stat()
    skopeo.copy(Source("registry", f"{registry.host}/sandboxd/debian@{digest}"), tmp_path / "store", "again",
                plain_http=True)
    assert oci.read_image(tmp_path / "store", "again").manifest_digest == pulled.manifest_digest
    after = layer.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_pull_with_credentials(
    tiny: LayoutImage, auth_registry: Registry, tmp_path: Path, spy: Spy
) -> None:
    assert auth_registry.username and auth_registry.password
    creds = Credentials(auth_registry.username, auth_registry.password)
    push(tiny.transport, auth_registry, "private/tiny:1", (creds.username, creds.password))
    ref = f"{auth_registry.host}/private/tiny:1"
    skopeo.copy(Source("registry", ref), tmp_path, "t", credentials=creds, plain_http=True)
    assert oci.read_image(tmp_path, "t").env["TINY"] == "1"
    assert_secret_absent(spy, creds.password)
    assert str(spy.authfile).startswith("/proc/self/fd/")

    with pytest.raises(ImageError, match="needs credentials: give them with --credentials-file"):
        skopeo.copy(Source("registry", ref), tmp_path, "u", plain_http=True)
    assert str(spy.authfile).startswith("/proc/self/fd/")

    wrong = Credentials(creds.username, "not-" + creds.password)
    with pytest.raises(ImageError, match="refused the credentials") as refused:
        skopeo.copy(Source("registry", ref), tmp_path, "u", credentials=wrong, plain_http=True)
    assert wrong.password not in str(refused.value) and wrong.password not in repr(wrong)
    assert_secret_absent(spy, wrong.password)
    assert str(spy.authfile).startswith("/proc/self/fd/")
    assert oci.tags(tmp_path) == ["t"]


def test_wrong_digest_refused(tiny: LayoutImage, registry: Registry, tmp_path: Path) -> None:
    push(tiny.transport, registry, "sandboxd/tiny:1")
    with pytest.raises(ImageError, match=r"the registry .* has no image .*@sha256:0{64}"):
        skopeo.copy(Source("registry", f"{registry.host}/sandboxd/tiny@sha256:{'0' * 64}"), tmp_path, "x",
                    plain_http=True)
    assert oci.tags(tmp_path) == []


def test_tampered_manifest_refused(registry: Registry, tmp_path: Path) -> None:
    """The registry serves other bytes than the digest asked for: skopeo refuses them."""
    image = write_tiny_layout(tmp_path / "src", "t", {"marker": b"tamper me\n"})
    digest = push(image.transport, registry, "sandboxd/tampered:1")
    stored = registry.stored_blob(digest)
    manifest = json.loads(stored.read_bytes())
    manifest["annotations"] = {"evil": "1"}
    stored.write_bytes(json.dumps(manifest).encode())
    with pytest.raises(ImageError, match="(?i)digest"):
        skopeo.copy(Source("registry", f"{registry.host}/sandboxd/tampered@{digest}"), tmp_path / "store", "x",
                    plain_http=True)
    assert oci.tags(tmp_path / "store") == []


def test_tampered_layer_refused(registry: Registry, tmp_path: Path) -> None:
    image = write_tiny_layout(tmp_path / "src", "t", {"marker": b"tamper my layer\n"})
    digest = push(image.transport, registry, "sandboxd/badlayer:1")
    layer = json.loads(registry.stored_blob(digest).read_bytes())["layers"][0]  # gzipped by the push
    stored = registry.stored_blob(layer["digest"])
    data = bytearray(stored.read_bytes())
    data[-9] ^= 1  # the gzip trailer: same size, other digest
    stored.write_bytes(bytes(data))
    with pytest.raises(ImageError, match="(?i)digest"):
        skopeo.copy(Source("registry", f"{registry.host}/sandboxd/badlayer:1"), tmp_path / "store", "x",
                    plain_http=True)
    assert oci.tags(tmp_path / "store") == []


def test_plain_http_only_to_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_process(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("skopeo must not run")

    monkeypatch.setattr(skopeo.subprocess, "Popen", no_process)
    for ref in ("example.com:5000/x", "10.0.0.1:5000/x", "x/y", "localhost.example.com/x"):
        with pytest.raises(ImageError, match="plain HTTP is allowed only to a loopback registry"):
            skopeo.copy(Source("registry", ref), tmp_path, "x", plain_http=True)
    assert not (tmp_path / "index.json").exists()


def test_import_oci_dir_archive_and_docker_archive(tiny: LayoutImage, tmp_path: Path) -> None:
    expected = oci.read_image(tiny.layout, tiny.tag)
    oci_archive = tmp_path / "image.oci.tar"
    with tarfile.open(oci_archive, "w") as tar:
        for child in sorted(tiny.layout.iterdir()):
            tar.add(child, arcname=child.name)
    docker_archive = tmp_path / "image.docker.tar"
    subprocess.run(
        ["skopeo", "--insecure-policy", "copy", tiny.transport, f"docker-archive:{docker_archive}:tiny:1"],
        check=True, capture_output=True, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    colon_dir = tmp_path / "with:colon"
    write_tiny_layout(colon_dir, "only", {"marker": b"tiny image\n"})

    store = tmp_path / "store"
    for path, kind in ((tiny.layout, "oci-dir"), (oci_archive, "oci-archive"),
                       (docker_archive, "docker-archive"), (colon_dir, "oci-dir")):
        source = skopeo.detect_source(path)
        assert source.kind == kind
        skopeo.copy(source, store, kind)
        image = oci.read_image(store, kind)
        assert image.diff_ids == expected.diff_ids and image.env == expected.env
    assert sorted(oci.tags(store)) == ["docker-archive", "oci-archive", "oci-dir"]


def test_layout_with_several_images_needs_a_tag(tiny: LayoutImage, tmp_path: Path) -> None:
    source = tmp_path / "two"
    write_tiny_layout(source, "a", {"a": b"a"})
    write_tiny_layout(source, "b", {"b": b"b"})
    with pytest.raises(ImageError, match=r"holds 2 images; name one as PATH:TAG \(tags: a, b\)"):
        skopeo.copy(Source("oci-dir", str(source)), tmp_path / "store", "x")
    skopeo.copy(Source("oci-dir", str(source), "b"), tmp_path / "store", "x")
    assert oci.read_image(tmp_path / "store", "x").diff_ids == oci.read_image(source, "b").diff_ids


def test_prune_after_delete_keeps_shared_blobs(tiny: LayoutImage, tmp_path: Path) -> None:
    store = tmp_path / "store"
    skopeo.copy(Source("oci-dir", str(tiny.layout), tiny.tag), store, "one")
    write_tiny_layout(store, "two", {"other": b"other\n"})
    (store / "oci-put-blob123").write_bytes(b"left by a killed skopeo")
    (store / (oci.TEMP_PREFIX + "x")).mkdir()
    one = oci.read_image(store, "one")
    assert oci.remove_tag(store, "two") and not oci.remove_tag(store, "two")
    removed = oci.prune(store)
    assert len(removed) == 3  # the other image's manifest, config and layer
    assert oci.read_image(store, "one") == one
    assert sorted(p.name for p in store.iterdir()) == ["blobs", "index.json", "oci-layout"]
    assert sorted(os.listdir(store / "blobs" / "sha256")) == sorted(
        d.removeprefix("sha256:") for d in oci.referenced_blobs(store)
    )


def test_copy_over_a_tag_then_prune(tmp_path: Path) -> None:
    """skopeo leaves the image a tag named before as an untagged index entry; prune drops it."""
    a = write_tiny_layout(tmp_path / "a", "a", {"a": b"1"})
    b = write_tiny_layout(tmp_path / "b", "b", {"b": b"2"})
    store = tmp_path / "store"
    skopeo.copy(Source("oci-dir", str(a.layout)), store, "x")
    skopeo.copy(Source("oci-dir", str(b.layout)), store, "x")
    assert oci.read_image(store, "x").diff_ids == oci.read_image(b.layout, "b").diff_ids
    assert len(json.loads((store / "index.json").read_bytes())["manifests"]) == 2
    assert len(oci.prune(store)) == 3
    assert len(json.loads((store / "index.json").read_bytes())["manifests"]) == 1
    assert oci.read_image(store, "x").diff_ids == oci.read_image(b.layout, "b").diff_ids


def test_build_refuses_bad_package_names_without_running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sandboxd.images import debian

    def no_process(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("mmdebstrap must not run")

    monkeypatch.setattr(debian.subprocess, "Popen", no_process)
    for bad in ("--hook-dir=/tmp", "Bash", "a", "bash;rm", "pkg name"):
        with pytest.raises(ImageError, match="not a Debian package name"):
            debian.build_layout(["bash", bad], tmp_path, "x")
    with pytest.raises(ImageError, match="mirror must be"):
        debian.build_layout(["bash"], tmp_path, "x", mirror="file:///etc")


def test_build_failure_leaves_nothing(tmp_path: Path) -> None:
    from sandboxd.images import debian

    store = tmp_path / "store"
    with pytest.raises(ImageError, match="mmdebstrap could not build the image: E: .*no-such-package-xyz"):
        debian.build_layout(["no-such-package-xyz"], store, "x")
    assert oci.tags(store) == []
    assert sorted(p.name for p in store.iterdir()) == ["blobs", "index.json", "oci-layout"]
    assert os.listdir(store / "blobs" / "sha256") == []


def processes_mentioning(text: str) -> list[int]:
    """Live processes (not zombies) whose command line holds `text` (the unique store path of a test)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
                if state != "Z" and text.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


def test_killed_build_stops_mmdebstrap_and_prune_clears_it(tmp_path: Path) -> None:
    """kill -9 of the process building: mmdebstrap and all it started die too; prune removes the rest."""
    store = tmp_path / "store"
    script = "import sys, pathlib; from sandboxd.images import debian; " \
             "debian.build_layout(['bash'], pathlib.Path(sys.argv[1]), 't')"
    builder = subprocess.Popen([sys.executable, "-c", script, str(store)])
    deadline = time.monotonic() + 30
    while len(processes_mentioning(str(store))) < 3:  # the builder, unshare, mmdebstrap (and its forks)
        assert time.monotonic() < deadline and builder.poll() is None
        time.sleep(0.05)
    time.sleep(3)  # well into the build: apt and dpkg are running
    builder.kill()
    builder.wait()
    while survivors := processes_mentioning(str(store)):
        assert time.monotonic() < deadline + 15, f"outlived the killed builder: {survivors}"
        time.sleep(0.05)
    assert any(p.name.startswith(oci.TEMP_PREFIX) for p in store.iterdir())
    oci.prune(store)
    assert oci.tags(store) == []
    assert sorted(p.name for p in store.iterdir()) == ["blobs", "index.json", "oci-layout"]
