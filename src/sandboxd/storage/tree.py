"""A directory tree written by untrusted code, handled as root without ever following a link.

Nothing here resolves a path string: every component is opened from the root with
`O_NOFOLLOW | O_DIRECTORY` relative to its parent's descriptor, the final file with
`O_NOFOLLOW`, and only regular files are read. A symbolic link anywhere is refused, never
followed, so a link the sandbox planted cannot make the server read or write a host file.
Uploads go to a temporary file next to the target and are renamed into place whole.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..errors import Conflict, InvalidRequest, NotFound, PayloadTooLarge

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO never hangs us
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_TMP_PREFIX = ".sandboxd-upload-"
MAX_LIST_DEPTH = 128


def _parts(rel: str) -> list[str]:
    return rel.split("/") if rel else []


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --------------------------------------------------------------------------- the walker


def _describe(err: OSError, rel: str) -> Exception:
    if err.errno == errno.ENOENT:
        return NotFound(f"no such file or directory: {rel!r}")
    if err.errno == errno.ELOOP:
        return InvalidRequest(f"{rel!r} is a symbolic link; the Files API does not follow links")
    if err.errno == errno.ENOTDIR:
        return InvalidRequest(f"{rel!r}: a component of the path is not a directory")
    if err.errno == errno.EISDIR:
        return InvalidRequest(f"{rel!r} is a directory")
    if err.errno in (errno.EDQUOT, errno.ENOSPC):
        return PayloadTooLarge("the file does not fit: the storage quota is exhausted")
    if err.errno == errno.ENAMETOOLONG:
        return InvalidRequest("path is too long")
    return err


def open_root(root: Path) -> int:
    """The storage root, opened without following a link in its last component."""
    try:
        return os.open(root, _DIR_FLAGS)
    except FileNotFoundError:
        raise NotFound("the storage of this thread or volume does not exist") from None


@dataclass(frozen=True)
class Owner:
    """Who a created file or directory belongs to, and its modes."""

    uid: int
    gid: int
    file_mode: int
    dir_mode: int


def open_dir(root_fd: int, parts: list[str], *, create: Owner | None = None) -> int:
    """A descriptor of the directory `parts` below `root_fd`, never through a symbolic link.

    With `create`, missing directories are made (owned by `create`). The caller closes it.
    """
    fd = os.dup(root_fd)
    done: list[str] = []
    try:
        for part in parts:
            done.append(part)
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if create is None:
                    raise
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                except FileExistsError:
                    pass
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)  # O_NOFOLLOW: a link raced in is refused
                os.fchown(child, create.uid, create.gid)
                os.fchmod(child, create.dir_mode)
            os.close(fd)
            fd = child
        return fd
    except OSError as err:
        if err.errno == errno.ENOTDIR and done:  # O_NOFOLLOW|O_DIRECTORY says ENOTDIR for a link
            try:
                if stat.S_ISLNK(os.stat(done[-1], dir_fd=fd, follow_symlinks=False).st_mode):
                    err = OSError(errno.ELOOP, "symbolic link")
            except OSError:
                pass
        os.close(fd)
        raise _describe(err, "/".join(done)) from None


def open_regular(root_fd: int, rel: str) -> tuple[int, os.stat_result]:
    """A read descriptor of the regular file `rel`, and its stat; never through a link."""
    parts = _parts(rel)
    dfd = open_dir(root_fd, parts[:-1])
    try:
        try:
            # look before opening: a device is never opened, a FIFO never waited on
            before = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISLNK(before.st_mode):
                raise OSError(errno.ELOOP, "symbolic link")
            if stat.S_ISDIR(before.st_mode):
                raise InvalidRequest(f"{rel!r} is a directory; list it, or download a file in it")
            if not stat.S_ISREG(before.st_mode):
                raise InvalidRequest(f"{rel!r} is not a regular file")
            fd = os.open(parts[-1], _READ_FLAGS, dir_fd=dfd)
        except OSError as err:
            raise _describe(err, rel) from None
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino):
            raise InvalidRequest(f"{rel!r} changed while it was being opened; try again")
        os.set_blocking(fd, True)
        return fd, st
    except BaseException:
        os.close(fd)
        raise


def _entry(rel: str, name: str, st: os.stat_result) -> dict[str, Any]:
    is_dir = stat.S_ISDIR(st.st_mode)
    return {
        "name": name,
        "path": rel,
        "size": 0 if is_dir else st.st_size,
        "modified": iso(st.st_mtime),
        "is_directory": is_dir,
    }


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # not UTF-8 on disk (surrogate-escaped): not addressable in JSON
        return False


def walk(root_fd: int, rel: str, max_entries: int) -> list[dict[str, Any]]:
    """Everything below directory `rel` (recursively, sorted, depth first), or the one file `rel`.

    Directories are entries too (size 0). Symbolic links, devices, FIFOs and sockets are not
    listed and never entered; neither are names that are not UTF-8 or our own upload temps.
    """
    parts = _parts(rel)
    if parts:
        parent = open_dir(root_fd, parts[:-1])
        try:
            try:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
            except OSError as err:
                raise _describe(err, rel) from None
        finally:
            os.close(parent)
        if stat.S_ISREG(st.st_mode):
            return [_entry(rel, parts[-1], st)]
        if not stat.S_ISDIR(st.st_mode):
            raise _describe(OSError(errno.ELOOP if stat.S_ISLNK(st.st_mode) else errno.ENOENT, ""), rel)
    out: list[dict[str, Any]] = []
    top = open_dir(root_fd, parts)
    stack: list[tuple[int, str, list[os.DirEntry[str]]]] = []

    def push(fd: int, prefix: str) -> None:
        try:
            with os.scandir(fd) as it:
                entries = sorted(it, key=lambda e: e.name, reverse=True)
        except BaseException:
            os.close(fd)
            raise
        stack.append((fd, prefix, entries))

    try:
        push(top, rel)
        while stack:
            fd, prefix, entries = stack[-1]
            if not entries:
                os.close(fd)
                stack.pop()
                continue
            e = entries.pop()
            if not _utf8(e.name) or e.name.startswith(_TMP_PREFIX):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                continue
            path = f"{prefix}/{e.name}" if prefix else e.name
            out.append(_entry(path, e.name, st))
            if len(out) > max_entries:
                raise InvalidRequest(
                    f"more than {max_entries} entries under {rel or 'the root'!r}; "
                    "list a subdirectory with 'path'"
                )
            if stat.S_ISDIR(st.st_mode):
                if len(stack) >= MAX_LIST_DEPTH:
                    raise InvalidRequest(f"directories nested deeper than {MAX_LIST_DEPTH} levels")
                try:
                    child = os.open(e.name, _DIR_FLAGS, dir_fd=fd)
                except OSError:  # replaced (by a link, say) since scandir: skip it
                    continue
                push(child, path)
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    return out


def stat_target(root_fd: int, rel: str) -> None:
    """Before signing an upload: the parents that exist are real directories, the target is no directory."""
    parts = _parts(rel)
    fd = os.dup(root_fd)
    try:
        for i, part in enumerate(parts):
            try:
                st = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return  # created on upload
            except OSError as err:
                raise _describe(err, rel) from None
            shown = "/".join(parts[: i + 1])
            if stat.S_ISLNK(st.st_mode):
                raise InvalidRequest(f"{shown!r} is a symbolic link; the Files API does not follow links")
            if i == len(parts) - 1:
                if stat.S_ISDIR(st.st_mode):
                    raise InvalidRequest(f"{shown!r} is a directory")
                return
            if not stat.S_ISDIR(st.st_mode):
                raise InvalidRequest(f"{shown!r} is not a directory")
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    finally:
        os.close(fd)


def remove(root_fd: int, rel: str) -> None:
    """Unlink a file (or a link, FIFO... the link itself) or remove an empty directory."""
    parts = _parts(rel)
    dfd = open_dir(root_fd, parts[:-1])
    try:
        try:
            st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(parts[-1], dir_fd=dfd)
            else:
                os.unlink(parts[-1], dir_fd=dfd)
        except OSError as err:
            if err.errno == errno.ENOTEMPTY:
                raise Conflict(f"directory {rel!r} is not empty; delete its files first") from None
            raise _describe(err, rel) from None
    finally:
        os.close(dfd)


# --------------------------------------------------------------------------- uploads


class Upload:
    """A temporary file next to the target; `commit` renames it into place, `abort` removes it."""

    def __init__(self, root_fd: int, rel: str, owner: Owner) -> None:
        parts = _parts(rel)
        self.name = parts[-1]
        self.rel = rel
        self.dir_fd = open_dir(root_fd, parts[:-1], create=owner)
        self.owner = owner
        self.tmp = f"{_TMP_PREFIX}{secrets.token_hex(8)}.tmp"
        self.renamed = False
        try:
            self.fd: int | None = os.open(self.tmp, _TMP_FLAGS, 0o600, dir_fd=self.dir_fd)
        except OSError as err:
            os.close(self.dir_fd)
            raise _describe(err, rel) from None

    def write(self, data: bytes) -> None:
        assert self.fd is not None
        view = memoryview(data)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError as err:
            raise _describe(err, self.rel) from None

    def commit(self) -> None:
        assert self.fd is not None
        try:
            os.fsync(self.fd)
            os.fchown(self.fd, self.owner.uid, self.owner.gid)
            os.fchmod(self.fd, self.owner.file_mode)
            os.close(self.fd)
            self.fd = None
            try:
                st = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and stat.S_ISDIR(st.st_mode):
                raise InvalidRequest(f"{self.rel!r} is a directory")
            if st is not None and stat.S_ISLNK(st.st_mode):  # as when signing: links are left alone
                raise InvalidRequest(f"{self.rel!r} is a symbolic link; the Files API does not follow links")
            # rename(2) never follows a link at the target (one raced in now would be replaced)
            os.rename(self.tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            self.renamed = True
        except OSError as err:
            raise _describe(err, self.rel) from None
        finally:
            self.abort()

    def abort(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.dir_fd >= 0:
            if not self.renamed:
                try:
                    os.unlink(self.tmp, dir_fd=self.dir_fd)
                except FileNotFoundError:
                    pass
            os.close(self.dir_fd)
            self.dir_fd = -1
