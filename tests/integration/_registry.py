"""A real OCI registry on loopback for the image tests, and the images to push to it.

`registry` and `auth_registry` (session) run Debian's `docker-registry` (the CNCF distribution
registry) on 127.0.0.1 at a free port, plain HTTP, storing in a temp dir; `auth_registry` asks
for htpasswd (bcrypt) credentials `auth_registry.username` / `.password`. Both are stopped at
teardown. `push` copies an image to one with skopeo, credentials through an auth file only.

`debian_image_layout` (session) builds the minimal Debian image (python3-minimal, bash) once
with `sandboxd.images.debian`, into an OCI layout under the session's tmp dir.
`write_tiny_layout` writes a one-layer image of a few files, for tests that need any image.

Import what a test module needs: `from _registry import registry, push, ...` (fixtures too).
A missing binary fails the test, never skips it: `scripts/bootstrap test` installs them.
"""

from __future__ import annotations

import base64
import io
import json
import os
import secrets
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import httpx
import pytest

from _debian import DEBIAN_TAG, debian_layout

from sandboxd.images import oci

REGISTRY_BIN = "/usr/bin/docker-registry"
DEBIAN_PACKAGES = ("python3-minimal", "bash")
INSTALL_HINT = "run scripts/bootstrap test (Debian: apt-get install docker-registry skopeo mmdebstrap)"


@dataclass
class Registry:
    host: str  # 127.0.0.1:PORT
    root: Path
    proc: subprocess.Popen[bytes]
    username: str | None = None
    password: str | None = None

    @property
    def storage(self) -> Path:
        """Where the registry keeps blobs and manifests (tests tamper with them here)."""
        return self.root / "data"

    def stored_blob(self, digest: str) -> Path:
        hex_ = digest.removeprefix("sha256:")
        return self.storage / "docker/registry/v2/blobs/sha256" / hex_[:2] / hex_ / "data"


@dataclass(frozen=True)
class LayoutImage:
    layout: Path
    tag: str

    @property
    def transport(self) -> str:
        """The image as skopeo names it."""
        return f"oci:{self.layout}:{self.tag}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_registry(*, auth: tuple[str, str] | None = None) -> Registry:
    """A registry on a free loopback port, ready to answer; stop it with `stop_registry`."""
    if not os.access(REGISTRY_BIN, os.X_OK):
        pytest.fail(f"{REGISTRY_BIN} is missing: {INSTALL_HINT}")
    root = Path(tempfile.mkdtemp(prefix="sandboxd-registry-"))
    host = f"127.0.0.1:{_free_port()}"
    config = [
        "version: 0.1",
        "log:",
        "  level: warn",
        "  accesslog:",
        "    disabled: true",
        "storage:",
        "  filesystem:",
        f"    rootdirectory: {root / 'data'}",
        "  delete:",
        "    enabled: true",
        "http:",
        f"  addr: {host}",
        f"  secret: {secrets.token_hex(16)}",
    ]
    if auth is not None:
        user, password = auth
        hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=5)).decode()
        (root / "htpasswd").write_text(f"{user}:{hashed}\n")
        config += ["auth:", "  htpasswd:", "    realm: sandboxd-test", f"    path: {root / 'htpasswd'}"]
    (root / "config.yml").write_text("\n".join(config) + "\n")
    log = open(root / "registry.log", "wb")
    proc = subprocess.Popen(
        [REGISTRY_BIN, "serve", str(root / "config.yml")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(root)},
    )
    log.close()
    registry = Registry(host, root, proc, *(auth or (None, None)))
    deadline = time.monotonic() + 20
    while True:
        if proc.poll() is not None:
            stop_registry(registry, keep=True)
            pytest.fail(f"docker-registry exited: {(root / 'registry.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"http://{host}/v2/", timeout=1).status_code in (200, 401):
                return registry
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            stop_registry(registry)
            pytest.fail("docker-registry did not answer on /v2/ within 20 s")
        time.sleep(0.05)


def stop_registry(registry: Registry, *, keep: bool = False) -> None:
    if registry.proc.poll() is None:
        registry.proc.terminate()
        try:
            registry.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            registry.proc.kill()
            registry.proc.wait()
    if not keep:
        shutil.rmtree(registry.root, ignore_errors=True)


@pytest.fixture(scope="session")
def registry() -> Iterator[Registry]:
    reg = start_registry()
    yield reg
    stop_registry(reg)


@pytest.fixture(scope="session")
def auth_registry() -> Iterator[Registry]:
    reg = start_registry(auth=("sandboxd-test", "pw-" + secrets.token_hex(12)))
    yield reg
    stop_registry(reg)


def push(source: str, registry: Registry, name_tag: str, creds: tuple[str, str] | None = None) -> str:
    """Copy `source` (a skopeo name, e.g. `LayoutImage.transport`) to `registry` as `name_tag`.

    Returns the pushed manifest's digest. Credentials go through `--dest-authfile`, never argv.
    """
    private = Path(tempfile.mkdtemp(prefix="sandboxd-push-"))
    try:
        auths = {}
        if creds is not None:
            auths[registry.host] = {"auth": base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()}
        authfile = private / "auth.json"
        fd = os.open(authfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"auths": auths}, f)
        (private / "policy.json").write_text('{"default": [{"type": "insecureAcceptAnything"}]}')
        digest_file = private / "digest"
        result = subprocess.run(
            ["skopeo", "--policy", str(private / "policy.json"), "copy", "--dest-tls-verify=false",
             "--dest-authfile", str(authfile), "--digestfile", str(digest_file),
             source, f"docker://{registry.host}/{name_tag}"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True,
            env={"PATH": "/usr/bin:/bin", "HOME": str(private)},
        )
        if result.returncode != 0:
            pytest.fail(f"skopeo push of {source} failed: {result.stderr[-2000:]}")
        return digest_file.read_text().strip()
    finally:
        shutil.rmtree(private, ignore_errors=True)


def write_tiny_layout(layout: Path, tag: str, files: dict[str, bytes]) -> LayoutImage:
    """A one-layer image of `files` (uncompressed tar), in the OCI layout `layout`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    oci.ensure_layout(layout)
    layer = buffer.getvalue()
    diff_id = oci.write_blob(layout, layer)
    config = json.dumps({
        "architecture": oci.host_architecture(), "os": "linux",
        "config": {"Env": ["PATH=/bin:/usr/bin", "TINY=1"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": oci.write_blob(layout, config), "size": len(config)},
        "layers": [{"mediaType": oci.OCI_LAYER_TAR, "digest": diff_id, "size": len(layer)}],
    }).encode()
    oci.set_tag(layout, tag, oci.OCI_MANIFEST, oci.write_blob(layout, manifest), len(manifest))
    return LayoutImage(layout, tag)


@pytest.fixture(scope="session")
def debian_image_layout(tmp_path_factory: pytest.TempPathFactory) -> LayoutImage:
    """The minimal Debian image (python3-minimal, bash), built once per session."""
    return LayoutImage(debian_layout(DEBIAN_PACKAGES, tmp_path_factory), DEBIAN_TAG)

