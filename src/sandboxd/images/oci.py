"""Read and keep the store's OCI image layout: index.json → manifest → config, digests verified.

Every image sandboxd knows lives in one shared OCI image layout directory (the layout spec:
`oci-layout`, `index.json`, `blobs/sha256/<hex>`). skopeo copies pulled and imported images into
it, `debian.py` writes built ones there, and layers shared between images are stored once. An
image is named in `index.json` by its `org.opencontainers.image.ref.name` annotation (the tag).

The manifest and config are small and read here; both are checked against the sha256 and size of
the descriptor that names them, so a layout edited behind our back is refused rather than
trusted. Layers are large: unpacking verifies them against their digest and diff_id.

Hand-written, not a library: three small JSON documents, each checked against a sha256, are
all we read here; skopeo and umoci offer no "read and verify" call short of copying or
unpacking the image.

Writing (`write_blob`, `set_tag`, `remove_tag`, `prune`) is not safe against concurrent writers:
the caller holds the store's lock around it and around any skopeo copy into the layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ImageError

REF_NAME = "org.opencontainers.image.ref.name"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
TEMP_PREFIX = ".tmp-"
"""Temporary files and directories inside the layout (same filesystem, so blobs move in by rename) start
with this; `prune` removes those an interrupted writer left behind."""

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"

INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({OCI_CONFIG, DOCKER_CONFIG})
LAYER_TYPES = frozenset({
    OCI_LAYER_TAR,
    "application/vnd.oci.image.layer.v1.tar+gzip",
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.docker.image.rootfs.diff.tar.gzip",
    # Deprecated, but still written by some registries' tooling; same content as their plain kin.
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
})

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
MAX_ENV = 256
MAX_ENV_BYTES = 64 * 1024
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_MAX_JSON = 16 * 1024 * 1024  # an index, manifest or config larger than this is refused
_MAX_NESTING = 2  # an index may point at an index once; deeper is refused

# `platform.machine()` → the GOARCH name OCI uses in platforms and configs.
_MACHINE_TO_OCI = {
    "x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64",
    "armv7l": "arm", "armv6l": "arm", "i686": "386", "i386": "386",
    "ppc64le": "ppc64le", "s390x": "s390x", "riscv64": "riscv64",
}


@dataclass(frozen=True)
class Layer:
    digest: str
    media_type: str
    size: int


@dataclass(frozen=True)
class OciImage:
    """What sandboxd needs of an image: its layers in order and the config's run environment."""

    manifest_digest: str
    config_digest: str
    layers: tuple[Layer, ...]
    diff_ids: tuple[str, ...]
    env: dict[str, str]
    path: str
    """The config's PATH, or the usual default when it sets none: where commands are found."""
    architecture: str
    os: str
    created: str | None


def host_architecture() -> str:
    """This machine's architecture as OCI names it (amd64, arm64, ...)."""
    machine = platform.machine()
    return _MACHINE_TO_OCI.get(machine, machine)


def check_tag(tag: str) -> None:
    """Refuse a tag skopeo or the layout could not take (it names the image in index.json)."""
    if not _TAG.fullmatch(tag):
        raise ImageError(f"not a valid image tag: {tag[:80]!r} (letters, digits, '.', '_', '-')")


def blob_path(layout: Path, digest: str) -> Path:
    """The file of a blob; the digest is checked so nothing taken from input names a path outside."""
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ImageError(f"not a sha256 digest: {str(digest)[:80]!r}")
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """OCI chain ids: a layer's identity including every layer below it (shareable unpacked trees).

    ChainID(L0) = DiffID(L0); ChainID(Ln) = sha256(ChainID(Ln-1) + " " + DiffID(Ln)).
    """
    chain: list[str] = []
    for diff_id in diff_ids:
        if not _DIGEST.fullmatch(diff_id):
            raise ImageError(f"not a sha256 diff_id: {diff_id[:80]!r}")
        if chain:
            diff_id = "sha256:" + hashlib.sha256(f"{chain[-1]} {diff_id}".encode()).hexdigest()
        chain.append(diff_id)
    return chain


def read_image(layout: Path, tag: str) -> OciImage:
    """The image tagged `tag` in `layout`, for linux on this machine's architecture.

    Raises ImageError when the tag is absent, a digest or size does not match, the image has no
    variant for this platform, or a document is not what the OCI spec says.
    """
    descriptor = _tagged(_read_index(layout), tag)
    architecture = host_architecture()
    for _ in range(_MAX_NESTING + 1):
        media_type = _media_type(descriptor)
        if media_type not in INDEX_TYPES:
            break
        index = _read_json_blob(layout, descriptor, "image index")
        _same_type(index, media_type, tag)
        descriptor = _pick_platform(index, architecture, tag)
    else:
        raise ImageError(f"image {tag!r}: image indexes nested more than {_MAX_NESTING} deep")
    if media_type not in MANIFEST_TYPES:
        raise ImageError(f"image {tag!r}: unsupported manifest type {media_type!r}")
    manifest = _read_json_blob(layout, descriptor, "manifest")
    _same_type(manifest, media_type, tag)
    config_descriptor = _dict(manifest.get("config"), "the manifest's config")
    if _media_type(config_descriptor) not in CONFIG_TYPES:
        raise ImageError(f"image {tag!r}: unsupported config type {_media_type(config_descriptor)!r}")
    layers = tuple(_layer(d, tag) for d in _list(manifest.get("layers"), "the manifest's layers"))
    config = _read_json_blob(layout, config_descriptor, "config")
    rootfs = _dict(config.get("rootfs"), "the config's rootfs")
    diff_ids = tuple(_digest(d, "a diff_id") for d in _list(rootfs.get("diff_ids"), "rootfs.diff_ids"))
    if len(diff_ids) != len(layers):
        raise ImageError(
            f"image {tag!r}: the manifest has {len(layers)} layers but the config {len(diff_ids)} diff_ids"
        )
    env = _env(config.get("config"))
    created = config.get("created")
    return OciImage(
        manifest_digest=_digest(descriptor.get("digest"), "the manifest digest"),
        config_digest=_digest(config_descriptor.get("digest"), "the config digest"),
        layers=layers,
        diff_ids=diff_ids,
        env=env,
        path=env.get("PATH") or DEFAULT_PATH,
        architecture=str(config.get("architecture", "")),
        os=str(config.get("os", "")),
        created=created if isinstance(created, str) else None,
    )


def tags(layout: Path) -> list[str]:
    """Every tag in the layout's index, in index order."""
    names = [_annotations(d).get(REF_NAME) for d in _manifests(_read_index(layout))]
    return [n for n in names if isinstance(n, str)]


def ensure_layout(layout: Path) -> None:
    """Make `layout` an empty OCI image layout if it is not one yet."""
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    if not (layout / "oci-layout").exists():
        _write_atomic(layout, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
    if not (layout / "index.json").exists():
        _write_index(layout, {"schemaVersion": 2, "manifests": []})


def write_blob(layout: Path, data: bytes) -> str:
    """Store `data` as a blob (once: an existing blob is kept) and return its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    target = blob_path(layout, digest)
    if not target.exists():
        _write_atomic(target.parent, target.name, data)
    return digest


def set_tag(layout: Path, tag: str, media_type: str, digest: str, size: int) -> None:
    """Point `tag` at a manifest already stored in the layout, replacing what it named before."""
    check_tag(tag)
    blob_path(layout, digest)  # checks the digest
    index = _read_index(layout)
    entries = [d for d in _manifests(index) if _annotations(d).get(REF_NAME) != tag]
    entries.append({"mediaType": media_type, "digest": digest, "size": size, "annotations": {REF_NAME: tag}})
    index["manifests"] = entries
    _write_index(layout, index)


def remove_tag(layout: Path, tag: str) -> bool:
    """Forget `tag` (its blobs stay until `prune`); False when the layout had no such tag."""
    index = _read_index(layout)
    entries = _manifests(index)
    kept = [d for d in entries if _annotations(d).get(REF_NAME) != tag]
    if len(kept) == len(entries):
        return False
    index["manifests"] = kept
    _write_index(layout, index)
    return True


def referenced_blobs(layout: Path) -> set[str]:
    """The digests of every blob a tagged entry of the index reaches (indexes, manifests, configs, layers).

    A document that cannot be read keeps its own digest but cannot protect what it would name:
    only an image already broken loses blobs that way.
    """
    found: set[str] = set()
    todo = [d for d in _manifests(_read_index(layout)) if isinstance(_annotations(d).get(REF_NAME), str)]
    while todo:
        descriptor = todo.pop()
        digest = descriptor.get("digest")
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest) or digest in found:
            continue
        found.add(digest)
        media_type = descriptor.get("mediaType")
        if media_type not in INDEX_TYPES and media_type not in MANIFEST_TYPES:
            continue
        try:
            document = _read_json_blob(layout, descriptor, "document")
        except ImageError:
            continue
        children = document.get("manifests") if media_type in INDEX_TYPES else (
            [document.get("config"), *(document.get("layers") or [])]
        )
        todo.extend(c for c in children or [] if isinstance(c, dict))
    return found


def prune(layout: Path) -> list[str]:
    """Delete blobs no tagged image reaches, untagged index entries and leftovers of interrupted writers.

    Only under the caller's lock: a copy in progress has written blobs its tag does not name yet.
    Returns the digests deleted.
    """
    index = _read_index(layout)
    entries = _manifests(index)
    tagged = [d for d in entries if isinstance(_annotations(d).get(REF_NAME), str)]
    if len(tagged) != len(entries):
        index["manifests"] = tagged
        _write_index(layout, index)
    keep = referenced_blobs(layout)
    removed: list[str] = []
    blobs = layout / "blobs" / "sha256"
    for entry in os.scandir(blobs) if blobs.is_dir() else []:
        digest = f"sha256:{entry.name}"
        if _DIGEST.fullmatch(digest) and digest not in keep and entry.is_file(follow_symlinks=False):
            os.unlink(entry.path)
            removed.append(digest)
    _remove_leftovers(layout)
    if blobs.is_dir():
        _remove_leftovers(blobs)
    return removed


def _remove_leftovers(directory: Path) -> None:
    """Temporary files and directories of interrupted writers: skopeo's ("oci-put-blob*") and ours."""
    for entry in os.scandir(directory):
        if entry.is_dir(follow_symlinks=False) and entry.name.startswith(TEMP_PREFIX):
            shutil.rmtree(entry.path, ignore_errors=True)
        elif entry.is_file(follow_symlinks=False) and entry.name.startswith(("oci-put-blob", TEMP_PREFIX)):
            os.unlink(entry.path)


def _read_index(layout: Path) -> dict[str, Any]:
    if not (layout / "oci-layout").is_file():
        raise ImageError(f"{layout} is not an OCI image layout (no oci-layout file)")
    index = _parse(_read_limited(layout / "index.json"), "index.json")
    _manifests(index)
    return index


def _tagged(index: dict[str, Any], tag: str) -> dict[str, Any]:
    matches = [d for d in _manifests(index) if _annotations(d).get(REF_NAME) == tag]
    if not matches:
        raise ImageError(f"no image tagged {tag!r} in the image layout")
    if len(matches) > 1:
        raise ImageError(f"the image layout tags {len(matches)} images {tag!r}")
    return matches[0]


def _pick_platform(index: dict[str, Any], architecture: str, tag: str) -> dict[str, Any]:
    seen: list[str] = []
    for descriptor in _manifests(index):
        platform_ = descriptor.get("platform")
        if not isinstance(platform_, dict):
            continue
        os_, arch = platform_.get("os"), platform_.get("architecture")
        if os_ == "linux" and arch == architecture:
            return descriptor
        seen.append(f"{os_}/{arch}")
    have = ", ".join(seen) or "none named"
    raise ImageError(f"image {tag!r} has no linux/{architecture} variant for this machine (it has: {have})")


def _same_type(document: dict[str, Any], media_type: str, tag: str) -> None:
    """A document that says it is of another type than its descriptor is refused, not guessed at."""
    own = document.get("mediaType")
    if own is not None and own != media_type:
        raise ImageError(f"image {tag!r}: a document of type {own!r} is described as {media_type!r}")


def _layer(descriptor: object, tag: str) -> Layer:
    d = _dict(descriptor, "a layer descriptor")
    media_type = _media_type(d)
    if media_type not in LAYER_TYPES:
        raise ImageError(f"image {tag!r} has a layer of type {media_type!r}, which sandboxd cannot unpack")
    return Layer(_digest(d.get("digest"), "a layer digest"), media_type, _size(d))


def _env(config: object) -> dict[str, str]:
    """The config's `Env`, checked: it becomes the sandbox's environment through bubblewrap's
    NUL-separated options, so a NUL (or any control character but tab) in it is refused, as are
    names that are not shell names, and more than MAX_ENV variables or MAX_ENV_BYTES in all."""
    env: dict[str, str] = {}
    if not isinstance(config, dict):
        return env
    items = config.get("Env") or []
    if not isinstance(items, list) or len(items) > MAX_ENV:
        raise ImageError(f"the image config's Env must be a list of at most {MAX_ENV} variables")
    if sum(len(item) for item in items if isinstance(item, str)) > MAX_ENV_BYTES:
        raise ImageError(f"the image config's Env is larger than {MAX_ENV_BYTES} bytes")
    for item in items:
        if not isinstance(item, str) or "=" not in item:
            continue
        name, value = item.split("=", 1)
        if not _ENV_NAME.fullmatch(name):
            raise ImageError(f"the image config's Env has a variable named {name[:64]!r}, not a shell name")
        if _CONTROL.search(value):
            raise ImageError(f"the image config's Env variable {name} holds a control character")
        env[name] = value
    return env


def _read_json_blob(layout: Path, descriptor: dict[str, Any], what: str) -> dict[str, Any]:
    digest = _digest(descriptor.get("digest"), f"the {what} digest")
    size = _size(descriptor)
    if size > _MAX_JSON:
        raise ImageError(f"the {what} {digest} is {size} bytes, more than sandboxd reads")
    data = _read_limited(blob_path(layout, digest))
    if len(data) != size:
        raise ImageError(f"the {what} {digest} is {len(data)} bytes, its descriptor says {size}")
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise ImageError(f"the {what} does not match its digest {digest}: the image layout was altered")
    return _parse(data, f"the {what} {digest}")


def _read_limited(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ImageError(f"the image layout is missing {path.name}") from None
    except OSError as e:
        raise ImageError(f"cannot read {path.name} of the image layout: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        data = f.read(_MAX_JSON + 1)
    if len(data) > _MAX_JSON:
        raise ImageError(f"{path.name} of the image layout is larger than sandboxd reads")
    return data


def _parse(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise ImageError(f"{what} is not valid JSON") from None
    return _dict(value, what)


def _dict(value: object, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ImageError(f"{what} is not a JSON object")
    return value


def _list(value: object, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise ImageError(f"{what} is not a JSON list")
    return value


def _manifests(index: dict[str, Any]) -> list[dict[str, Any]]:
    return [_dict(d, "an index entry") for d in _list(index.get("manifests"), "the index's manifests")]


def _annotations(descriptor: dict[str, Any]) -> dict[str, Any]:
    annotations = descriptor.get("annotations")
    return annotations if isinstance(annotations, dict) else {}


def _media_type(descriptor: dict[str, Any]) -> str:
    return str(descriptor.get("mediaType", ""))


def _digest(value: object, what: str) -> str:
    if not isinstance(value, str) or not _DIGEST.fullmatch(value):
        raise ImageError(f"{what} is not a sha256 digest")
    return value


def _size(descriptor: dict[str, Any]) -> int:
    size = descriptor.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise ImageError("a descriptor has no valid size")
    return size


def _write_index(layout: Path, index: dict[str, Any]) -> None:
    _write_atomic(layout, "index.json", json.dumps(index, separators=(",", ":")).encode())


def _write_atomic(directory: Path, name: str, data: bytes) -> None:
    """Write `directory/name` whole or not at all (temp file, fsync, rename, fsync of the directory)."""
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f"{TEMP_PREFIX}{name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, directory / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
