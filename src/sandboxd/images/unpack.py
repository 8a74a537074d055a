"""Apply one OCI layer (a tar stream, plain or gzip) onto a directory, as host root, safely.

Why by hand: each layer is applied onto a btrfs snapshot of the tree below it, so images that
share a base share its layers on disk. umoci and similar tools unpack a whole image into one
fresh tree, and Python's `tarfile` extraction filters refuse the absolute symbolic links real
images are full of. So this module reads the tar as a stream and applies each entry itself:

- Every path is resolved inside the root (`inroot.open_in_root`): an entry written "through"
  a link the image planted (`evil -> /etc`, then `evil/passwd`) lands inside the root.
  Symbolic links are created verbatim: their targets are data, resolved only in the sandbox.
- Nothing created can mean anything on the host: every entry is owned by root:root,
  setuid/setgid/sticky bits are dropped, device nodes, FIFOs and sockets are skipped, and
  no extended attribute (file capabilities, ACLs, SELinux labels) is applied.
- The compressed bytes are hashed against the layer digest and the tar bytes against its
  diff_id while they stream; both are checked only at the end, so a layer that fails them
  leaves a half-applied tree, which the caller deletes.
- Size and entry-count limits run over a whole image (`Usage` is carried across its layers)
  and stop the stream as soon as they are crossed, so a decompression bomb never fills the disk.
  The count includes the directories made for an entry's missing parents: otherwise a 3 KB
  layer of deep paths makes 100,000 directories past the limit.
- Everything else an entry costs is capped too, since a tiny layer can otherwise ask for a
  lot: a path is at most PATH_MAX (4096) bytes and each name NAME_MAX (255), as on Linux; an
  entry at most 512 components deep; one resolution walks at most `inroot.MAX_COMPONENTS`
  (links included); and the per-layer record of what was written (for whiteouts) at most
  256 MiB. Malformed input (a NUL byte in a name, an impossible mtime, a garbled header)
  ends as an `ImageError`, like every other refusal.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import stat
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar, cast

from ..errors import ImageError
from .inroot import dir_identity, open_in_root, open_parent, remove_entry, shown

__all__ = ["UnpackLimits", "Usage", "apply_layer"]

log = logging.getLogger(__name__)
_T = TypeVar("_T")

MEDIA_TAR = "application/vnd.oci.image.layer.v1.tar"
MEDIA_TAR_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
MEDIA_DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
# the deprecated non-distributable / "foreign" layer types are the same formats
_TAR_TYPES = {MEDIA_TAR, "application/vnd.oci.image.layer.nondistributable.v1.tar"}
_GZIP_TYPES = {
    MEDIA_TAR_GZIP,
    MEDIA_DOCKER_GZIP,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
}
_ZSTD_TYPES = {
    "application/vnd.oci.image.layer.v1.tar+zstd",
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
}

_CHUNK = 1 << 20
_MIB = 1 << 20
_MAX_HEADER_BYTES = 1 << 20  # a pax header or GNU long name is read into memory whole
_MAX_DEPTH = 512  # path components of an entry; real images stay far below
_MAX_PATH_BYTES = 4096  # PATH_MAX: an entry's path or a link's target; no longer one can be used
_MAX_NAME_BYTES = 255  # NAME_MAX: one component
# What `_Applier` remembers of one layer's paths (each path's bytes plus _RECORD_OVERHEAD, about
# what a str in a set costs). Paths of 4096 bytes and their ancestors would otherwise cost ~1 MB
# an entry; a real layer of a million files averaging 100-byte paths needs ~180 MiB.
_MAX_RECORD_BYTES = 256 * _MIB
_RECORD_OVERHEAD = 80
# seconds either side of 1970 (~35,000 years): no real file is dated beyond, and inf, NaN or
# a value past time_t (a pax mtime can be any number) would fail in utime, not as an ImageError
_MAX_MTIME = 1 << 40
_WHITEOUT = ".wh."
_OPAQUE = ".wh..wh..opq"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_HEADER_TYPES = (
    tarfile.GNUTYPE_LONGNAME,
    tarfile.GNUTYPE_LONGLINK,
    tarfile.XHDTYPE,
    tarfile.XGLTYPE,
    tarfile.SOLARIS_XHDTYPE,
)


@dataclass(frozen=True)
class UnpackLimits:
    """The most one image may hold once unpacked (SANDBOXD_MAX_IMAGE_SIZE_MIB / _FILES)."""

    max_bytes: int
    max_files: int


@dataclass
class Usage:
    """What the layers applied so far hold: carried across one image's layers, so a bomb
    split over many layers is caught on the total. `bytes` counts the uncompressed tar
    stream (file contents plus the tar's own headers); `files` every entry, and every
    directory made for an entry's missing parents, so `max_files` bounds all that is made."""

    bytes: int = 0
    files: int = 0


def apply_layer(
    blob: BinaryIO,
    root: Path,
    *,
    media_type: str,
    digest: str,
    diff_id: str | None,
    limits: UnpackLimits,
    usage: Usage,
) -> None:
    """Apply the layer read from `blob` onto the tree `root`, with OCI whiteout semantics.

    `digest` ("sha256:<hex>") must match the bytes of `blob`, read to their end, and
    `diff_id`, when given, the uncompressed tar. Raises `ImageError` for a mismatch, an
    unsafe or malformed entry, or an exceeded limit; the tree is then half-applied and the
    caller must delete it.
    """
    raw = _HashingReader(blob, _hasher(digest))
    if media_type in _ZSTD_TYPES:
        raise ImageError(f"layer {digest}: zstd layers are not supported")
    if media_type in _GZIP_TYPES:
        inner: BinaryIO = cast(BinaryIO, gzip.GzipFile(fileobj=cast(BinaryIO, raw), mode="rb"))
    elif media_type in _TAR_TYPES:
        inner = cast(BinaryIO, raw)
    else:
        raise ImageError(f"layer {digest}: unsupported media type {media_type!r}")
    tar_stream = _HashingReader(inner, _hasher(diff_id) if diff_id else None, limits, usage)
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        try:
            _Applier(digest, root_fd, limits, usage).run(tar_stream)
            while tar_stream.read(_CHUNK):  # the tar's trailing padding, then the gzip trailer
                pass
            while raw.read(_CHUNK):
                pass
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as err:
            raise ImageError(f"layer {digest} is not a valid {media_type} ({err})") from None
        except OSError as err:
            raise ImageError(f"layer {digest} could not be applied: {err.strerror or err}") from None
    finally:
        os.close(root_fd)
    if raw.hexdigest() != digest:
        raise ImageError(f"layer {digest}: its content does not match its digest ({raw.hexdigest()})")
    if diff_id and tar_stream.hexdigest() != diff_id:
        raise ImageError(
            f"layer {digest}: its uncompressed content does not match its diff_id {diff_id} "
            f"({tar_stream.hexdigest()})"
        )


def _hasher(digest: str) -> hashlib._Hash:
    algorithm, _, hexpart = digest.partition(":")
    if algorithm not in ("sha256", "sha512") or not hexpart:
        raise ImageError(f"unsupported or malformed digest {digest!r}")
    return hashlib.new(algorithm)


class _HashingReader:
    """Hashes what passes through; with limits, counts it into `usage` and stops at the limit."""

    def __init__(
        self,
        inner: BinaryIO,
        hasher: hashlib._Hash | None,
        limits: UnpackLimits | None = None,
        usage: Usage | None = None,
    ) -> None:
        self._inner = inner
        self._hasher = hasher
        self._limits = limits
        self._usage = usage

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(_CHUNK if size < 0 else min(size, _CHUNK))
        if self._hasher is not None:
            self._hasher.update(data)
        if self._limits is not None and self._usage is not None:
            self._usage.bytes += len(data)
            if self._usage.bytes > self._limits.max_bytes:
                raise ImageError(
                    f"the image is larger than the limit of {self._limits.max_bytes // _MIB} MiB "
                    "(SANDBOXD_MAX_IMAGE_SIZE_MIB)"
                )
        return data

    def hexdigest(self) -> str:
        assert self._hasher is not None
        return f"{self._hasher.name}:{self._hasher.hexdigest()}"


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses, before reading it, a pax header or GNU long name too big to hold in memory.

    `tarfile` reads those into memory whole; subclassing TarInfo to add `_proc_*` processing
    is the extension point its source documents.
    """

    def _proc_member(self, tf: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _HEADER_TYPES and self.size > _MAX_HEADER_BYTES:
            raise ImageError(f"a tar extended header of {self.size} bytes is larger than 1 MiB")
        return cast(tarfile.TarInfo, getattr(super(), "_proc_member")(tf))


def _check_path(name: str, what: str) -> None:
    """Refuse a path no kernel call could take: a NUL byte, or longer than PATH_MAX."""
    if "\0" in name:
        raise ImageError(f"{what} ({shown(name)}) contains a NUL byte")
    if len(os.fsencode(name)) > _MAX_PATH_BYTES:
        raise ImageError(f"{what} ({shown(name)}) is longer than {_MAX_PATH_BYTES} bytes")


def _normalise(name: str, what: str = "a layer entry's path") -> str:
    """`name` relative to the root: leading "/" and "./" dropped; ".." refused.

    Checked before it is split or used: at most PATH_MAX bytes, NAME_MAX a component and
    _MAX_DEPTH components, so what one entry costs in memory and work stays small.
    """
    _check_path(name, what)
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise ImageError(f"{what} contains '..': {shown(name)}")
    if len(parts) > _MAX_DEPTH:
        raise ImageError(f"{what} is deeper than {_MAX_DEPTH} directories: {shown(name)}")
    if any(len(os.fsencode(part)) > _MAX_NAME_BYTES for part in parts):
        raise ImageError(f"{what} has a name longer than {_MAX_NAME_BYTES} bytes: {shown(name)}")
    return "/".join(parts)


def _split(rel: str) -> tuple[str, str]:
    parent, _, base = rel.rpartition("/")
    return parent, base


@dataclass
class _Applier:
    digest: str
    root_fd: int
    limits: UnpackLimits
    usage: Usage
    # paths this layer wrote, and their ancestors: a whiteout or opaque marker of the same
    # layer hides only what lower layers put there (OCI image spec, "Whiteouts"). Each path
    # is stored once; `record_bytes` is what they cost, capped at _MAX_RECORD_BYTES.
    created: set[str] = field(default_factory=set)
    ancestors: set[str] = field(default_factory=set)
    record_bytes: int = 0
    skipped: int = 0

    def run(self, stream: _HashingReader) -> None:
        tf = self._parse(
            lambda: tarfile.open(fileobj=cast(BinaryIO, stream), mode="r|", tarinfo=_BoundedTarInfo)
        )
        while (member := self._parse(tf.next)) is not None:
            # stream mode would keep every member (typeshed does not declare the list)
            del tf.members[:]  # type: ignore[attr-defined]
            self._count_file()
            try:
                self._apply(tf, member)
            except gzip.BadGzipFile:
                raise
            except OSError as err:
                raise ImageError(
                    f"layer {self.digest}: entry {shown(member.name)} could not be applied "
                    f"({err.strerror or err})"
                ) from None
        if self.skipped:
            log.debug("skipped %d device nodes, FIFOs or sockets in a layer", self.skipped)

    def _parse(self, read: Callable[[], _T]) -> _T:
        """`read()` of the tar's headers (opening it reads the first): a header `tarfile` chokes
        on outside its own errors (a garbled GNU sparse map raises ValueError) is an
        `ImageError` like any other malformed layer."""
        try:
            return read()
        except (ValueError, OverflowError):
            raise ImageError(f"layer {self.digest}: a tar header is malformed") from None

    def _count_file(self) -> None:
        """Count one more entry or implicitly made directory; refuse past `max_files`."""
        self.usage.files += 1
        if self.usage.files > self.limits.max_files:
            raise ImageError(
                f"the image has more than {self.limits.max_files} files (SANDBOXD_MAX_IMAGE_FILES)"
            )

    def _open(self, rel: str, path: str, *, make_dirs: bool = False) -> int:
        """`path` in the root, for the entry `rel`: directories `make_dirs` makes are counted as
        files, and a refused walk (a link loop, over MAX_COMPONENTS) names the entry."""
        try:
            return open_in_root(
                self.root_fd, path, follow_final=True, make_dirs=make_dirs,
                on_mkdir=self._count_file if make_dirs else None,
            )
        except ImageError as err:
            raise ImageError(f"layer {self.digest}: entry {shown(rel)}: {err}") from None

    def _apply(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        rel = _normalise(member.name)
        if not rel:
            return  # the root itself: it keeps its own owner and mode
        parent_rel, base = _split(rel)
        if base.startswith(_WHITEOUT):
            self._whiteout(parent_rel, base)
            return
        if member.issparse():
            raise ImageError(f"{shown(rel)} is a sparse file; sparse files in layers are not supported")
        if member.issym():
            _check_path(member.linkname, f"the target of symbolic link {shown(rel)}")
        if not member.isdir() and not (math.isfinite(member.mtime) and abs(member.mtime) <= _MAX_MTIME):
            raise ImageError(f"entry {shown(rel)} has an impossible modification time ({member.mtime})")
        parent_fd = self._open(rel, parent_rel, make_dirs=True)
        try:
            if member.isdir():
                self._dir(parent_fd, base, member)
            elif member.isreg():
                self._file(parent_fd, base, member, tf)
            elif member.issym():
                remove_entry(parent_fd, base)
                os.symlink(member.linkname, base, dir_fd=parent_fd)
                os.chown(base, 0, 0, dir_fd=parent_fd, follow_symlinks=False)
            elif member.islnk():
                self._hardlink(parent_fd, base, rel, member.linkname)
            else:  # device node, FIFO, socket (or an unknown type): never made; what was there goes
                remove_entry(parent_fd, base)
                self.skipped += 1
                return
            if not member.isdir():
                os.utime(base, (member.mtime, member.mtime), dir_fd=parent_fd, follow_symlinks=False)
        finally:
            os.close(parent_fd)
        self._record(rel)

    def _record(self, rel: str) -> None:
        if rel not in self.created:
            self._charge(rel)
            self.created.add(rel)
        parent = _split(rel)[0]
        while parent and parent not in self.ancestors:
            self._charge(parent)
            self.ancestors.add(parent)
            parent = _split(parent)[0]

    def _charge(self, path: str) -> None:
        self.record_bytes += len(path) + _RECORD_OVERHEAD
        if self.record_bytes > _MAX_RECORD_BYTES:
            raise ImageError(
                f"layer {self.digest}: its paths are too many or too long to track "
                f"(over {_MAX_RECORD_BYTES // _MIB} MiB of bookkeeping in one layer)"
            )

    def _dir(self, parent_fd: int, base: str, member: tarfile.TarInfo) -> None:
        try:
            st: os.stat_result | None = os.stat(base, dir_fd=parent_fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISDIR(st.st_mode):
            remove_entry(parent_fd, base)
            os.mkdir(base, 0o700, dir_fd=parent_fd)
        fd = os.open(base, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            os.fchown(fd, 0, 0)
            os.fchmod(fd, member.mode & 0o777)
        finally:
            os.close(fd)

    def _file(self, parent_fd: int, base: str, member: tarfile.TarInfo, tf: tarfile.TarFile) -> None:
        remove_entry(parent_fd, base)
        source = tf.extractfile(member)
        assert source is not None  # a regular member always has a reader
        fd = os.open(base, _NEW_FILE_FLAGS, 0o600, dir_fd=parent_fd)
        try:
            os.fchown(fd, 0, 0)
            while chunk := source.read(_CHUNK):
                _write_all(fd, chunk)
            os.fchmod(fd, member.mode & 0o777)
        finally:
            os.close(fd)

    def _hardlink(self, parent_fd: int, base: str, rel: str, linkname: str) -> None:
        target = _normalise(linkname, f"the target of hard link {shown(rel)}")
        target_parent, target_base = _split(target)
        refused = ImageError(
            f"hard link {shown(rel)} -> {shown(linkname)}: the target is not a regular file already in the image"
        )
        if not target_base:
            raise refused
        try:
            tdir = self._open(rel, target_parent)
        except OSError:
            raise refused from None
        try:
            try:
                tst = os.stat(target_base, dir_fd=tdir, follow_symlinks=False)
            except OSError:
                raise refused from None
            if not stat.S_ISREG(tst.st_mode):
                raise refused
            try:
                here = os.stat(base, dir_fd=parent_fd, follow_symlinks=False)
                if (here.st_dev, here.st_ino) == (tst.st_dev, tst.st_ino):
                    return  # already this very file
            except FileNotFoundError:
                pass
            remove_entry(parent_fd, base)
            os.link(target_base, base, src_dir_fd=tdir, dst_dir_fd=parent_fd, follow_symlinks=False)
        finally:
            os.close(tdir)

    def _whiteout(self, parent_rel: str, base: str) -> None:
        if base == _OPAQUE:
            names: list[str] | None = None
        elif base.startswith(_WHITEOUT + _WHITEOUT):
            return  # aufs bookkeeping (.wh..wh.plnk and the like): not part of the image
        else:
            name = base[len(_WHITEOUT) :]
            if name in ("", ".", ".."):
                raise ImageError(f"invalid whiteout entry {shown(base)}")
            names = [name]
        try:
            parent_fd = self._open(f"{parent_rel}/{base}" if parent_rel else base, parent_rel)
        except OSError:
            return  # nothing there to hide
        try:
            if not stat.S_ISDIR(os.fstat(parent_fd).st_mode):
                return
            for name in os.listdir(parent_fd) if names is None else names:
                self._prune(parent_fd, name, f"{parent_rel}/{name}" if parent_rel else name)
        finally:
            os.close(parent_fd)

    def _prune(self, parent_fd: int, name: str, rel: str) -> None:
        """Remove `name` as far as lower layers made it, keeping what this layer wrote.

        Iterative, holding two descriptors at most (it climbs back by a checked `..`): what
        this layer wrote may be _MAX_DEPTH levels deep.
        """
        if not self._mine(rel):
            remove_entry(parent_fd, name)
            return
        if not _is_dir(parent_fd, name):
            return
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        try:
            # each frame: (the directory's identity, its path, the names left to look at)
            stack = [(dir_identity(fd), rel, os.listdir(fd))]
            while stack:
                _, drel, names = stack[-1]
                if not names:
                    stack.pop()
                    if stack:
                        up = open_parent(fd, stack[-1][0])
                        os.close(fd)
                        fd = up
                    continue
                child = names.pop()
                crel = f"{drel}/{child}"
                if not self._mine(crel):
                    remove_entry(fd, child)
                elif _is_dir(fd, child):
                    down = os.open(child, _DIR_FLAGS, dir_fd=fd)
                    os.close(fd)
                    fd = down
                    stack.append((dir_identity(fd), crel, os.listdir(fd)))
        finally:
            os.close(fd)

    def _mine(self, rel: str) -> bool:
        """Whether this layer wrote `rel` or something below it."""
        return rel in self.created or rel in self.ancestors


def _is_dir(parent_fd: int, name: str) -> bool:
    try:
        return stat.S_ISDIR(os.stat(name, dir_fd=parent_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return False


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
