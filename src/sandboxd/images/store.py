"""Images on this node: the shared OCI layout skopeo copies into, and the unpacked trees.

Layout (one per data dir):

    <data dir>/images/oci/            one OCI image layout, every image tagged by its id:
                                      blobs are stored once, and a pull skips blobs it has
    <data dir>/images/lock            flock: one import, delete or clean-up at a time
    <storage>/images/layers/<chain>   a layer applied on its parent's snapshot, read-only
    <storage>/images/roots/<image id> the image's root: a snapshot of its top layer with the
                                      mount points bubblewrap needs, read-only

Layers are btrfs snapshots keyed by chain id (the digest of a layer *and everything under
it*), so two images on one base share its blocks. Everything is built under a `.tmp-` name
and renamed into place when complete: a killed import leaves only `.tmp-` entries and tags
that no image row names, which `clean` removes at the next images command or server start.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..errors import ImageError, SandboxSetupError
from ..runtime import INTERPRETERS, Language
from ..runtime.bwrap import IMAGE_MOUNT_DIRS, IMAGE_MOUNT_FILES
from ..storage import Btrfs
from . import oci
from .inroot import ensure_mount_points, find_command
from .unpack import UnpackLimits, Usage, apply_layer

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
_TMP = ".tmp-"
_SIZE = ".size"


@dataclass(frozen=True)
class Unpacked:
    """An image's tree, ready to run on, and what was found in it."""

    root: Path
    #: Chain ids of its layers, base first (what keeps them from being collected).
    layers: tuple[str, ...]
    #: Bytes of its files, every layer counted (what the size limit counts).
    size_bytes: int
    binaries: dict[Language, str]


class StoreLock:
    """The image store's flock, held until `release` (the kernel drops it if we die)."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class ImageStore:
    def __init__(self, fs: Btrfs, home: Path, limits: UnpackLimits) -> None:
        self._fs = fs
        self._home = home
        self.limits = limits
        self.layout = home / "oci"
        #: Images this process holds a `use` lock on (fd by id).
        self._using: dict[str, int] = {}

    @property
    def _trees(self) -> Path:
        return self._fs.root / "images"

    def root_of(self, image_id: str) -> Path:
        return self._trees / "roots" / image_id

    @property
    def used(self) -> bool:
        """False until the first images command on this data dir (nothing to mount or clean)."""
        return (self._home / "lock").exists()

    def mount(self) -> None:
        """The storage filesystem, which holds the trees, mounted for this process."""
        self._fs.mount()

    def use(self, image_id: str) -> None:
        """This process may run sandboxes on the image from now until it exits: a shared flock
        on `<home>/use/<id>` that `clean` checks before deleting a root no image row names
        (a deleted image's tree then stays until the last server that ran it has stopped)."""
        if image_id in self._using:
            return
        use = self._home / "use"
        use.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(use / image_id, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(fd, fcntl.LOCK_SH)
        if not self.root_of(image_id).is_dir():
            os.close(fd)
            raise SandboxSetupError("image", f"the tree of image {image_id} is gone (deleted meanwhile)")
        self._using[image_id] = fd

    def _in_use(self, image_id: str) -> bool:
        """Whether a live process may run on the image (its `use` lock is held); if not, the lock
        file goes too."""
        path = self._home / "use" / image_id
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            os.unlink(path)
            return False
        finally:
            os.close(fd)

    def lock(self) -> StoreLock:
        """The store to oneself (other commands and servers on this data dir wait): whatever
        changes the layout or the trees runs under it, and what a killed one left goes first."""
        held = self._take(blocking=True)
        assert held is not None  # a blocking flock returns only once taken
        return held

    def try_lock(self) -> StoreLock | None:
        """The lock if no one holds it now, else None."""
        return self._take(blocking=False)

    def _take(self, *, blocking: bool) -> StoreLock | None:
        self._fs.mount()
        self._home.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._home / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return None
            for kind in ("layers", "roots"):
                (self._trees / kind).mkdir(parents=True, exist_ok=True)
            for path in (self._trees, self._trees / "roots"):
                os.chmod(path, 0o711)  # bubblewrap, as a sandbox's host uid, reaches the roots
            self._drop_leftovers()
        except BaseException:
            os.close(fd)
            raise
        return StoreLock(fd)

    def _drop_leftovers(self) -> None:
        for kind in ("layers", "roots"):
            for entry in (self._trees / kind).iterdir():
                if entry.name.startswith(_TMP) and entry.is_dir():
                    log.info("images: removing %s left by an interrupted import", entry.name)
                    self._delete(entry)

    def clean(self, images: dict[str, tuple[str, ...]]) -> None:
        """Remove what no image holds (call under `lock`): roots and tags of ids not in
        `images` (id → chain ids), layers none of them uses, blobs no tag references."""
        used = {chain for chains in images.values() for chain in chains}
        for root in (self._trees / "roots").iterdir():
            if root.name in images:
                continue
            if self._in_use(root.name):
                log.info("images: %s is deleted but a live server may still run on it: kept for now", root.name)
                continue
            self._delete(root)
        for layer in (self._trees / "layers").iterdir():
            if layer.suffix == _SIZE:
                if layer.stem not in used:
                    layer.unlink()
            elif layer.name not in used:
                self._delete(layer)
        if (self.layout / "index.json").exists():
            for tag in oci.tags(self.layout):
                if tag not in images:
                    oci.remove_tag(self.layout, tag)
            oci.prune(self.layout)

    def _delete(self, tree: Path) -> None:
        """Delete a tree no image holds; a failure is logged and the next clean-up tries again."""
        try:
            self._fs.delete(tree)
        except SandboxSetupError as exc:
            log.warning("images: %s stays for now: %s", tree.name, exc.message)

    def unpack(self, image: oci.OciImage, image_id: str, progress: Progress) -> Unpacked:
        """Build the image's root from its layers (reusing the ones present), under `lock`."""
        usage = Usage()
        chains = oci.chain_ids(image.diff_ids)
        parent: Path | None = None
        for n, (layer, chain) in enumerate(zip(image.layers, chains), 1):
            done = self._trees / "layers" / _name(chain)
            if done.exists():
                progress(f"layer {n}/{len(chains)} {layer.digest[:19]}: already unpacked")
                # counted against this image's limits as if unpacked again
                size, files = self._layer_size(done)
                usage.bytes += size
                usage.files += files
                if usage.bytes > self.limits.max_bytes or usage.files > self.limits.max_files:
                    raise ImageError(
                        f"the image is larger than the limits of {self.limits.max_bytes // 2**20} MiB and "
                        f"{self.limits.max_files} files (SANDBOXD_MAX_IMAGE_SIZE_MIB, SANDBOXD_MAX_IMAGE_FILES)"
                    )
            else:
                progress(f"layer {n}/{len(chains)} {layer.digest[:19]}: unpacking {layer.size / 2**20:.1f} MiB")
                self._build_layer(image, n - 1, parent, done, usage)
            parent = done
        root = self.root_of(image_id)
        work = root.with_name(f"{_TMP}{image_id}")
        if parent is None:
            self._fs.create(work, None)
        else:
            self._fs.snapshot(parent, work)
        ensure_mount_points(work, IMAGE_MOUNT_DIRS, IMAGE_MOUNT_FILES)
        binaries: dict[Language, str] = {}
        for language, interpreter in INTERPRETERS.items():
            found = find_command(work, image.path, interpreter.command)
            if found is not None:
                binaries[language] = found
        os.chmod(work, 0o755)
        self._fs.set_read_only(work)
        os.rename(work, root)
        return Unpacked(root, tuple(_name(c) for c in chains), usage.bytes, binaries)

    def _build_layer(self, image: oci.OciImage, index: int, parent: Path | None, done: Path, usage: Usage) -> None:
        layer = image.layers[index]
        work = done.with_name(f"{_TMP}{done.name}-{secrets.token_hex(4)}")
        before = usage.bytes, usage.files
        if parent is None:
            self._fs.create(work, None)
        else:
            self._fs.snapshot(parent, work)
        try:
            with open(oci.blob_path(self.layout, layer.digest), "rb") as blob:
                apply_layer(
                    blob, work, media_type=layer.media_type, digest=layer.digest,
                    diff_id=image.diff_ids[index], limits=self.limits, usage=usage,
                )
            # The layer's own size (beside it, not in the image), so a later image reusing it
            # counts it against its limit.
            _size_file(done).write_text(f"{usage.bytes - before[0]} {usage.files - before[1]}")
            self._fs.set_read_only(work)
            os.rename(work, done)
        except BaseException:
            with contextlib.suppress(Exception):
                self._fs.delete(work)
            raise

    def _layer_size(self, layer: Path) -> tuple[int, int]:
        """The bytes and files the layer's own tar held."""
        try:
            size, files = _size_file(layer).read_text().split()
            return int(size), int(files)
        except (OSError, ValueError):
            return 0, 0

    def disk_bytes(self, image_id: str) -> int:
        """What the image's tree holds on disk (blocks shared with other images included)."""
        return self._fs.referenced_bytes(self.root_of(image_id))


def _name(chain_id: str) -> str:
    algorithm, _, hexdigest = chain_id.partition(":")
    if algorithm != "sha256" or len(hexdigest) != 64:
        raise ImageError(f"unsupported chain id {chain_id[:80]!r}")
    return hexdigest


def _size_file(layer: Path) -> Path:
    return layer.with_name(layer.name + _SIZE)
