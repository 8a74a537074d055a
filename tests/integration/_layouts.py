"""OCI image layouts written by the tests: an image on top of another, a layer of our own.

Written here by hand (a dozen lines of JSON and sha256), so the tests control every byte the
importer sees: extra layers, a config `Env` and PATH, a tampered digest.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"


@dataclass(frozen=True)
class Entry:
    """One tar member: a file (data), a directory, or a symlink (link)."""

    name: str
    data: bytes = b""
    mode: int = 0o644
    kind: str = "file"
    link: str = ""


def layer(*entries: Entry) -> bytes:
    """An uncompressed layer tar of `entries`."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode = e.mode
            if e.kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif e.kind == "symlink":
                info.type = tarfile.SYMTYPE
                info.linkname = e.link
                tar.addfile(info)
            else:
                info.size = len(e.data)
                tar.addfile(info, io.BytesIO(e.data))
    return buf.getvalue()


def _blob(layout: Path, data: bytes) -> str:
    digest = hashlib.sha256(data).hexdigest()
    path = layout / "blobs" / "sha256" / digest
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return f"sha256:{digest}"


def _read_json(layout: Path, digest: str) -> dict:  # type: ignore[type-arg]
    return json.loads((layout / "blobs" / "sha256" / digest.split(":", 1)[1]).read_bytes())  # type: ignore[no-any-return]


def extend(
    base: Path | None, dest: Path, tars: list[bytes], *, env: dict[str, str] | None = None, tag: str = "latest",
    architecture: str = "amd64",
) -> Path:
    """A layout at `dest`: `base`'s image (its first manifest) plus `tars` as gzip layers, with
    `env` merged into its config's Env."""
    if dest.exists():
        shutil.rmtree(dest)
    layers: list[dict] = []  # type: ignore[type-arg]
    config: dict = {"architecture": architecture, "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": []}}  # type: ignore[type-arg]
    if base is not None:
        shutil.copytree(base / "blobs", dest / "blobs")
        index = json.loads((base / "index.json").read_text())
        manifest = _read_json(base, index["manifests"][0]["digest"])
        layers = list(manifest["layers"])
        config = _read_json(base, manifest["config"]["digest"])
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    for tar in tars:
        packed = gzip.compress(tar, mtime=0)
        layers.append({"mediaType": LAYER_GZIP, "digest": _blob(dest, packed), "size": len(packed)})
        config["rootfs"]["diff_ids"].append(f"sha256:{hashlib.sha256(tar).hexdigest()}")
    if env:
        current = dict(item.split("=", 1) for item in config["config"].get("Env") or [])
        config["config"]["Env"] = [f"{k}={v}" for k, v in (current | env).items()]
    config_bytes = json.dumps(config).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": _blob(dest, config_bytes), "size": len(config_bytes)},
        "layers": layers,
    }
    manifest_bytes = json.dumps(manifest).encode()
    (dest / "index.json").write_text(json.dumps({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": MANIFEST, "digest": _blob(dest, manifest_bytes), "size": len(manifest_bytes),
            "annotations": {"org.opencontainers.image.ref.name": tag},
        }],
    }))
    return dest


def archive(layout: Path, dest: Path) -> Path:
    """An oci-archive: the layout as a tarball."""
    with tarfile.open(dest, "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout)), recursive=False)
    return dest
