"""OCI layouts the tests write by hand: reading, digest checks, platform choice; skopeo's inputs."""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

from sandboxd.images import oci, skopeo
from sandboxd.errors import ImageError
from sandboxd.images.oci import REF_NAME
from sandboxd.images.skopeo import Credentials, Source

LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OTHER_ARCH = "s390x" if oci.host_architecture() != "s390x" else "riscv64"


def put(layout: Path, document: dict[str, Any] | bytes) -> dict[str, Any]:
    """Store a blob by hand (not through oci.write_blob); its descriptor without mediaType."""
    data = document if isinstance(document, bytes) else json.dumps(document).encode()
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_index(layout: Path, *entries: dict[str, Any]) -> None:
    (layout / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": list(entries)}))


def image(layout: Path, *, env: list[str] | None = None, layers: int = 2, diff_ids: int | None = None,
          layer_type: str = LAYER, arch: str | None = None) -> dict[str, Any]:
    """A manifest with its config and layers stored; returns the manifest's descriptor."""
    blobs = [put(layout, f"layer {i}".encode()) for i in range(layers)]
    config = {
        "architecture": arch or oci.host_architecture(), "os": "linux", "created": "2026-01-02T03:04:05Z",
        "config": {"Env": env if env is not None else ["PATH=/opt/conda/bin:/usr/bin", "A=b=c", "NOEQUALS"]},
        "rootfs": {"type": "layers",
                   "diff_ids": [f"sha256:{str(i) * 64}" for i in range(layers if diff_ids is None else diff_ids)]},
    }
    manifest = {
        "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, **put(layout, config)},
        "layers": [{"mediaType": layer_type, **b} for b in blobs],
    }
    return {"mediaType": oci.OCI_MANIFEST, **put(layout, manifest)}


def tagged(descriptor: dict[str, Any], tag: str) -> dict[str, Any]:
    return {**descriptor, "annotations": {REF_NAME: tag}}


def test_read_image(tmp_path: Path) -> None:
    m = image(tmp_path)
    write_index(tmp_path, tagged(image(tmp_path, layers=1), "other"), tagged(m, "mine"))
    got = oci.read_image(tmp_path, "mine")
    manifest = json.loads(oci.blob_path(tmp_path, m["digest"]).read_bytes())
    assert got.manifest_digest == m["digest"]
    assert got.config_digest == manifest["config"]["digest"]
    assert got.layers == tuple(oci.Layer(d["digest"], LAYER, d["size"]) for d in manifest["layers"])
    assert got.diff_ids == ("sha256:" + "0" * 64, "sha256:" + "1" * 64)
    assert got.env == {"PATH": "/opt/conda/bin:/usr/bin", "A": "b=c"}
    assert got.path == "/opt/conda/bin:/usr/bin"
    assert (got.architecture, got.os, got.created) == (oci.host_architecture(), "linux", "2026-01-02T03:04:05Z")
    assert oci.tags(tmp_path) == ["other", "mine"]


def test_default_path_when_the_config_sets_none(tmp_path: Path) -> None:
    write_index(tmp_path, tagged(image(tmp_path, env=["LANG=C.UTF-8"]), "t"))
    assert oci.read_image(tmp_path, "t").path == oci.DEFAULT_PATH


def test_missing_tag_and_missing_layout(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="not an OCI image layout"):
        oci.read_image(tmp_path, "t")
    write_index(tmp_path, tagged(image(tmp_path), "t"))
    with pytest.raises(ImageError, match="no image tagged 'u'"):
        oci.read_image(tmp_path, "u")


@pytest.mark.parametrize("which", ["manifest", "config"])
@pytest.mark.parametrize("same_size", [True, False])
def test_tampered_blob_refused(tmp_path: Path, which: str, same_size: bool) -> None:
    m = image(tmp_path)
    write_index(tmp_path, tagged(m, "t"))
    digest = m["digest"]
    if which == "config":
        digest = json.loads(oci.blob_path(tmp_path, digest).read_bytes())["config"]["digest"]
    path = oci.blob_path(tmp_path, digest)
    original = path.read_bytes()
    tampered = original.replace(b'"linux"', b'"Linux"') if which == "config" else original.replace(b"2", b"3", 1)
    assert tampered != original and len(tampered) == len(original)
    path.write_bytes(tampered if same_size else tampered + b" ")
    expected = "does not match its digest" if same_size else r"is \d+ bytes, its descriptor says"
    with pytest.raises(ImageError, match=f"the {which} .*{expected}"):
        oci.read_image(tmp_path, "t")


def test_document_of_another_type_than_its_descriptor_refused(tmp_path: Path) -> None:
    write_index(tmp_path, tagged({**image(tmp_path), "mediaType": oci.DOCKER_MANIFEST}, "t"))
    with pytest.raises(ImageError, match="is described as"):
        oci.read_image(tmp_path, "t")


def test_layer_and_diff_id_counts_must_agree(tmp_path: Path) -> None:
    write_index(tmp_path, tagged(image(tmp_path, layers=2, diff_ids=1), "t"))
    with pytest.raises(ImageError, match="2 layers but the config 1 diff_ids"):
        oci.read_image(tmp_path, "t")


def test_unknown_layer_type_refused(tmp_path: Path) -> None:
    write_index(tmp_path, tagged(image(tmp_path, layer_type="application/x-evil"), "t"))
    with pytest.raises(ImageError, match="layer of type 'application/x-evil'"):
        oci.read_image(tmp_path, "t")


@pytest.mark.parametrize("index_type", [oci.OCI_INDEX, oci.DOCKER_LIST])
def test_platform_picked_from_an_index(tmp_path: Path, index_type: str) -> None:
    ours = image(tmp_path, layers=1)
    theirs = image(tmp_path, layers=2, arch=OTHER_ARCH)
    index = {"schemaVersion": 2, "mediaType": index_type, "manifests": [
        {**theirs, "platform": {"os": "linux", "architecture": OTHER_ARCH}},
        {**image(tmp_path, layers=3), "platform": {"os": "windows", "architecture": oci.host_architecture()}},
        {**ours, "platform": {"os": "linux", "architecture": oci.host_architecture()}},
    ]}
    only_theirs = {**index, "manifests": index["manifests"][:2]}
    write_index(tmp_path, tagged({"mediaType": index_type, **put(tmp_path, index)}, "multi"),
                tagged({"mediaType": index_type, **put(tmp_path, only_theirs)}, "foreign"))
    assert oci.read_image(tmp_path, "multi").manifest_digest == ours["digest"]
    with pytest.raises(ImageError, match=rf"no linux/{oci.host_architecture()} variant .*linux/{OTHER_ARCH}, windows/"):
        oci.read_image(tmp_path, "foreign")


def test_chain_ids_known_values() -> None:
    a, b, c = (f"sha256:{x * 64}" for x in "abc")
    assert oci.chain_ids([]) == []
    assert oci.chain_ids([a]) == [a]
    # sha256("sha256:aaa… sha256:bbb…"), then sha256(that + " sha256:ccc…"), computed apart from the code.
    assert oci.chain_ids([a, b, c]) == [
        a,
        "sha256:ccd722928bd92476ba1745586fed6e45a102504185ad88cd89e01ff116fd146c",
        "sha256:c1377126441fb2f5ec2c21ae2a60255331d639e830f0ee1b40a36e52d4c40588",
    ]


def test_blob_path_refuses_bad_digests(tmp_path: Path) -> None:
    good = "sha256:" + "ab" * 32
    assert oci.blob_path(tmp_path, good) == tmp_path / "blobs" / "sha256" / ("ab" * 32)
    for bad in ["sha256:../../../etc/passwd", "sha512:" + "a" * 128, "sha256:" + "A" * 64,
                "sha256:" + "a" * 63, good + "\n", good + "/x", "/etc/passwd", ""]:
        with pytest.raises(ImageError, match="not a sha256 digest"):
            oci.blob_path(tmp_path, bad)


def test_remove_tag_and_prune(tmp_path: Path) -> None:
    one, two = image(tmp_path, layers=1), image(tmp_path, layers=2)  # "layer 0" is shared
    write_index(tmp_path, tagged(one, "one"), tagged(two, "two"), two)  # the last entry is untagged
    kept = oci.read_image(tmp_path, "one")
    assert oci.remove_tag(tmp_path, "two") and not oci.remove_tag(tmp_path, "two")
    removed = oci.prune(tmp_path)
    assert len(removed) == 3  # two's manifest, config and its own layer; the shared layer stays
    assert oci.read_image(tmp_path, "one") == kept
    assert [d["digest"] for d in json.loads((tmp_path / "index.json").read_bytes())["manifests"]] == [one["digest"]]


def test_write_blob_set_tag_round_trip(tmp_path: Path) -> None:
    oci.ensure_layout(tmp_path)
    assert oci.tags(tmp_path) == []
    config = json.dumps({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})
    manifest = json.dumps({"schemaVersion": 2, "config": {
        "mediaType": oci.OCI_CONFIG, "digest": oci.write_blob(tmp_path, config.encode()), "size": len(config)},
        "layers": []}).encode()
    digest = oci.write_blob(tmp_path, manifest)
    oci.set_tag(tmp_path, "t", oci.OCI_MANIFEST, digest, len(manifest))
    oci.set_tag(tmp_path, "t", oci.OCI_MANIFEST, digest, len(manifest))  # replaces, never duplicates
    assert oci.tags(tmp_path) == ["t"] and oci.read_image(tmp_path, "t").layers == ()
    with pytest.raises(ImageError, match="not a valid image tag"):
        oci.set_tag(tmp_path, "../x", oci.OCI_MANIFEST, digest, len(manifest))


def tar_with(path: Path, names: list[str], mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for name in names:
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"{}"))
    return path


def test_detect_source(tmp_path: Path) -> None:
    layout = tmp_path / "layout"
    layout.mkdir()
    (layout / "oci-layout").write_text("{}")
    assert skopeo.detect_source(layout) == Source("oci-dir", str(layout))
    assert skopeo.detect_source(tar_with(tmp_path / "a.tar", ["./oci-layout", "index.json"])).kind == "oci-archive"
    assert skopeo.detect_source(tar_with(tmp_path / "b.tgz", ["oci-layout"], "w:gz")).kind == "oci-archive"
    assert skopeo.detect_source(tar_with(tmp_path / "c.tar", ["manifest.json", "abc/layer.tar"])).kind == (
        "docker-archive"
    )
    both = tar_with(tmp_path / "d.tar", ["manifest.json", "index.json", "oci-layout"])
    assert skopeo.detect_source(both).kind == "oci-archive"
    with pytest.raises(ImageError, match="not an OCI image layout"):
        skopeo.detect_source(tmp_path)
    random = tmp_path / "random.bin"
    random.write_bytes(os.urandom(4096))
    with pytest.raises(ImageError, match="not a tar archive; an image to import is an OCI image layout directory"):
        skopeo.detect_source(random)
    with pytest.raises(ImageError, match="tar archive but not an image"):
        skopeo.detect_source(tar_with(tmp_path / "f.tar", ["etc/passwd"]))


def test_detect_source_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="does not exist"):
        skopeo.detect_source(tmp_path / "nope")


def test_parse_credentials() -> None:
    assert skopeo.parse_credentials("alice:s3:cr:et\n") == Credentials("alice", "s3:cr:et")
    assert skopeo.parse_credentials("alice\npass word\n") == Credentials("alice", "pass word")
    assert skopeo.parse_credentials("alice\r\npw\r\n") == Credentials("alice", "pw")
    for bad in ["", "\n", "alice", "alice:", ":pw", "alice\n", "a\nb\nc", "a:b\nc"]:
        with pytest.raises(ImageError, match="credentials must be"):
            skopeo.parse_credentials(bad)
    assert "s3cret" not in repr(Credentials("alice", "s3cret"))


def test_registry_host_and_loopback() -> None:
    assert skopeo.registry_host("python:3.12") == "docker.io"
    assert skopeo.registry_host("library/python") == "docker.io"
    assert skopeo.registry_host("ghcr.io/org/img:1") == "ghcr.io"
    assert skopeo.registry_host("localhost/x") == "localhost"
    assert skopeo.registry_host(f"127.0.0.1:5000/x@sha256:{'0' * 64}") == "127.0.0.1:5000"
    assert skopeo.registry_host("[::1]:5000/x:t") == "[::1]:5000"
    for bad in ["", "-x", "docker://x", "x y", "X/Y", "a/b:t@sha256:short", "a/b\n"]:
        with pytest.raises(ImageError, match="not an image reference"):
            skopeo.registry_host(bad)
    assert all(skopeo.is_loopback_host(h) for h in ["127.0.0.1:5000", "127.1.2.3", "[::1]:80", "localhost:1"])
    assert not any(skopeo.is_loopback_host(h) for h in
                   ["example.com:5000", "10.0.0.1", "[::2]:5", "localhost.example.com", "0.0.0.0", "docker.io"])


class FakeSkopeo:
    """Stands in for subprocess.Popen: records argv/env and what the auth file held while it ran."""

    def __init__(self, returncode: int = 0, stderr: str = "") -> None:
        self.returncode_to_give = returncode
        self.stderr_text = stderr
        self.seen: dict[str, Any] = {}

    def __call__(self, argv: list[str], **kwargs: Any) -> Any:
        authfile = argv[argv.index("--src-authfile") + 1]
        fd = int(authfile.removeprefix("/proc/self/fd/"))
        self.seen = {
            "argv": argv, "env": kwargs["env"], "authfile": authfile, "fd": fd,
            "auth": json.loads(Path(f"/proc/self/fd/{fd}").read_text()),
            "passed": kwargs.get("pass_fds"),
            "on_disk": os.readlink(f"/proc/self/fd/{fd}"),
        }
        fake = self

        class Proc:
            stdout = io.StringIO("Getting image source signatures\nCopying blob sha256:abc\n")
            stderr = io.StringIO(fake.stderr_text)
            returncode = fake.returncode_to_give

            def wait(self) -> int:
                return self.returncode

            def poll(self) -> int:
                return self.returncode

            def kill(self) -> None:
                pass

        return Proc()


def test_copy_credentials_only_in_a_memfd_authfile(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSkopeo()
    monkeypatch.setattr(skopeo.subprocess, "Popen", fake)
    lines: list[str] = []
    creds = Credentials("alice", "hunter2-secret")
    skopeo.copy(Source("registry", "registry.example.com/team/img:1"), tmp_path / "store", "t",
                credentials=creds, progress=lines.append)
    argv, env = fake.seen["argv"], fake.seen["env"]
    assert lines == ["Getting image source signatures", "Copying blob sha256:abc"]
    assert argv[-2:] == ["docker://registry.example.com/team/img:1", f"oci:{tmp_path / 'store'}:t"]
    assert not any("tls-verify" in a for a in argv)
    assert not any("hunter2" in a or "alice" in a for a in argv)
    assert not any("hunter2" in v for v in env.values())
    assert set(env) <= {"PATH", "HOME", "XDG_RUNTIME_DIR", "TMPDIR", *skopeo._PROXY_VARS}
    token = base64.b64encode(b"alice:hunter2-secret").decode()
    assert fake.seen["auth"] == {"auths": {"registry.example.com": {"auth": token}}}
    assert fake.seen["passed"] == (fake.seen["fd"],)
    assert fake.seen["on_disk"].startswith("/memfd:sandboxd-registry-auth")  # never a file on a disk
    with pytest.raises(OSError):  # closed once the copy ended
        os.fstat(fake.seen["fd"])
    assert [p.name for p in (tmp_path / "store").iterdir()] != [] and not any(
        p.name.startswith(oci.TEMP_PREFIX) for p in (tmp_path / "store").iterdir()
    )


def test_copy_plain_http_flag_only_for_loopback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeSkopeo()
    monkeypatch.setattr(skopeo.subprocess, "Popen", fake)
    skopeo.copy(Source("registry", "127.0.0.1:5000/x:1"), tmp_path, "t", plain_http=True)
    assert "--src-tls-verify=false" in fake.seen["argv"]
    assert fake.seen["auth"] == {"auths": {}}
    fake.seen = {}
    with pytest.raises(ImageError, match="plain HTTP is allowed only to a loopback registry"):
        skopeo.copy(Source("registry", "registry.example.com:5000/x"), tmp_path, "t", plain_http=True)
    with pytest.raises(ImageError, match="only to a registry pull"):
        skopeo.copy(Source("oci-dir", str(tmp_path)), tmp_path / "s", "t", plain_http=True)
    assert fake.seen == {}


def test_copy_failure_message_has_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = 'time="x" level=fatal msg="reading blob: weird \\"hunter2-secret\\" echo"\n'
    monkeypatch.setattr(skopeo.subprocess, "Popen", FakeSkopeo(1, stderr))
    with pytest.raises(ImageError) as failed:
        skopeo.copy(Source("registry", "ghcr.io/x/y:1"), tmp_path, "t", credentials=Credentials("al", "hunter2-secret"))
    assert failed.value.message == 'could not copy the image from ghcr.io/x/y:1: reading blob: weird "***" echo'
    monkeypatch.setattr(skopeo.subprocess, "Popen", FakeSkopeo(1, 'level=fatal msg="x: unauthorized: nope"\n'))
    with pytest.raises(ImageError, match="the registry ghcr.io needs credentials"):
        skopeo.copy(Source("registry", "ghcr.io/x/y:1"), tmp_path, "t")


def test_gzip_is_not_an_archive_of_an_image(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    path.write_bytes(gzip.compress(b"not a tar at all" * 100))
    with pytest.raises(ImageError, match="not a tar archive"):
        skopeo.detect_source(path)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        # a NUL would split into bubblewrap options of its own: --ro-bind / /hostroot, --share-net
        (["X=y\0--ro-bind\0/\0/hostroot\0--share-net"], "control character"),
        (["X=line\nbreak"], "control character"),
        (["BAD NAME=1"], "not a shell name"),
        (["--share-net=1"], "not a shell name"),
        ([f"V{i}=x" for i in range(oci.MAX_ENV + 1)], f"at most {oci.MAX_ENV} variables"),
        ([f"V={'x' * oci.MAX_ENV_BYTES}"], f"larger than {oci.MAX_ENV_BYTES} bytes"),
    ],
)
def test_hostile_env_in_the_config_refused(tmp_path: Path, env: list[str], message: str) -> None:
    write_index(tmp_path, tagged(image(tmp_path, env=env), "t"))
    with pytest.raises(ImageError, match=message):
        oci.read_image(tmp_path, "t")


def test_tab_and_unicode_in_env_values_are_fine(tmp_path: Path) -> None:
    write_index(tmp_path, tagged(image(tmp_path, env=["A=x\ty", "B=naïve ✓"]), "t"))
    assert oci.read_image(tmp_path, "t").env == {"A": "x\ty", "B": "naïve ✓"}
