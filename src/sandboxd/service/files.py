"""The Files API (spec §5): list, signed upload/download URLs, and delete, on threads and volumes.

Paths are relative to the storage root: `/home/baponi` for a thread, the volume's directory
(`/data/<slug>` in a sandbox) for a volume. `/home/baponi/x` and `x` name the same file, as in
the SDK's deep-agents `_to_relative_path`. Every `path` this service returns (in a listing) is
**relative to the storage root**, never to the `path` argument, so it can be passed straight to
`download_url` (spec §5.1 leaves this open; this is the documented choice).

Bytes do not pass through the JSON API: `upload_url`/`download_url` answer a URL to
`/v1/files/blob/<token>` on this server, where the signed token (service/signing.py) is the
only authority. The blob handlers stream: an upload goes to a temporary file created next to
the target and is renamed into place only when exactly the signed number of bytes arrived.

Security. The trees are written by untrusted code and this server runs as root, so nothing
here ever resolves a path string: every component is opened from the root with
`O_NOFOLLOW | O_DIRECTORY` relative to its parent's descriptor, the final file with
`O_NOFOLLOW`, and only regular files are read. A symbolic link anywhere is refused, never
followed; `..`, NUL, backslashes and percent-encoded separators never get that far.

Threads: an upload or delete holds the thread's execution lock (409 while an execution runs,
and an execution that starts meanwhile gets 409), so a snapshot never sees a half-written
file and a commit never discards an upload. Reads use the committed home.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import mimetypes
import os
import re
import secrets
import stat
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal, Protocol

from ..errors import Conflict, Forbidden, InvalidRequest, NotFound, PayloadTooLarge
from .signing import Claims, Signer

if TYPE_CHECKING:
    from ..store import Thread
    from .keys import Principal
    from .threads import ThreadService, WorkingCopy
    from .volumes import VolumeAccess

log = logging.getLogger("sandboxd.files")

Source = Literal["thread", "volume"]
SOURCES: tuple[str, ...] = ("thread", "volume")
THREAD_ROOT = "/home/baponi"
VOLUME_MOUNT = "/data"
GIB = 1024**3
DEFAULT_CONTENT_TYPE = "application/octet-stream"
MAX_PATH_CHARS = 4096
MAX_NAME_BYTES = 255
MAX_LIST_DEPTH = 128
CHUNK_BYTES = 1024 * 1024
BLOB_PATH = "v1/files/blob/"

_ENCODED = ("%2e", "%2f", "%5c", "%00", "%25", "%c0", "%c1")
_THREAD_ID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,127}$")
_SLUG = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$")
_CONTENT_TYPE = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,254}$")
_TMP_PREFIX = ".sandboxd-upload-"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK  # NONBLOCK: a FIFO never hangs us
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class VolumeResolver(Protocol):
    async def access(self, principal: Principal, slug: str) -> VolumeAccess: ...
    async def path_of(self, org_id: str, slug: str) -> Path: ...


# --------------------------------------------------------------------------- path rules


def normalize_path(raw: str, *, source: str, id: str, allow_root: bool = False) -> str:
    """The path as `a/b/c` relative to the storage root ("" is the root); InvalidRequest if unsafe.

    Accepted: `x/y`, `./x//y/`, and for a thread `/home/baponi/x/y` (for a volume
    `/data/<slug>/x/y`). Refused: other absolute paths, `..`, NUL, backslashes, and
    percent-encoded dots, slashes, backslashes, NULs and percents in any case.
    """
    if not isinstance(raw, str):
        raise InvalidRequest("path must be a string")
    if len(raw) > MAX_PATH_CHARS:
        raise InvalidRequest(f"path must be at most {MAX_PATH_CHARS} characters")
    if "\x00" in raw:
        raise InvalidRequest("path must not contain a NUL character")
    if "\\" in raw:
        raise InvalidRequest("path must not contain a backslash; use '/' between directories")
    lowered = raw.lower()
    if any(bad in lowered for bad in _ENCODED):
        raise InvalidRequest("path must not contain percent-encoded characters such as %2e or %2f")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("path contains invalid Unicode (a lone surrogate)") from None
    rel = raw
    if raw.startswith("/"):
        root = THREAD_ROOT if source == "thread" else f"{VOLUME_MOUNT}/{id}"
        if raw == root or raw.startswith(root + "/"):
            rel = raw[len(root):]
        else:
            raise InvalidRequest(
                f"path {raw[:80]!r} is outside the storage root: use a path relative to {root} "
                f"(e.g. 'data/file.txt') or an absolute path under {root}/"
            )
    parts = []
    for part in rel.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise InvalidRequest("path must not contain '..'")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise InvalidRequest(f"each path component must be at most {MAX_NAME_BYTES} bytes")
        parts.append(part)
    if not parts and not allow_root:
        raise InvalidRequest("path must name a file, not the storage root")
    return "/".join(parts)


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


class _Upload:
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


# --------------------------------------------------------------------------- the service


@dataclass(frozen=True)
class Download:
    """An open regular file to stream; the caller closes `file`."""

    file: BinaryIO
    size: int
    name: str
    content_type: str


class FilesService:
    def __init__(
        self,
        threads: ThreadService,
        volumes: VolumeResolver | None,
        signer: Signer,
        *,
        url_ttl_s: int = 3600,
        max_file_bytes: int = 10 * GIB,
        max_list_entries: int = 10_000,
    ) -> None:
        self._threads = threads
        self._volumes = volumes
        self._signer = signer
        self._ttl = int(url_ttl_s)
        self._max_file_bytes = max_file_bytes
        self._max_list_entries = max_list_entries

    # ---- resolving a source

    @staticmethod
    def _check_source(source: str, id: str) -> None:
        if source not in SOURCES:
            raise InvalidRequest("source must be 'thread' or 'volume'")
        if source == "thread" and not _THREAD_ID.fullmatch(id):
            raise InvalidRequest(
                "id must be a thread_id: 1-128 characters of letters, digits, '_' or '-', "
                "starting with a letter or digit"
            )
        if source == "volume" and not _SLUG.fullmatch(id):
            raise InvalidRequest("id must be a volume slug")

    async def _thread_home(self, org_id: str, thread_id: str) -> tuple[Thread, Path | None]:
        thread = await self._threads.get(org_id, thread_id)
        home = await asyncio.to_thread(self._threads.home, thread)  # may mount the filesystem
        return thread, home

    async def _volume(self, principal: Principal, slug: str) -> VolumeAccess:
        if self._volumes is None:
            raise NotFound(f"no volume {slug!r}")
        return await self._volumes.access(principal, slug)

    async def _volume_path(self, org_id: str, slug: str) -> Path:
        if self._volumes is None:
            raise NotFound(f"no volume {slug!r}")
        return await self._volumes.path_of(org_id, slug)

    async def _root(self, principal: Principal, source: str, id: str) -> Path | None:
        if source == "thread":
            return (await self._thread_home(principal.org.id, id))[1]
        return (await self._volume(principal, id)).path

    @staticmethod
    def _thread_owner(home_fd: int, thread: Thread) -> Owner:
        st = os.fstat(home_fd)
        return Owner(uid=thread.uid, gid=st.st_gid, file_mode=0o600, dir_mode=0o700)

    @staticmethod
    def _volume_owner(root_fd: int) -> Owner:
        st = os.fstat(root_fd)
        return Owner(uid=st.st_uid, gid=st.st_gid, file_mode=0o660, dir_mode=0o2770)

    async def _in_root(self, root: Path, fn: Callable[[int], Any]) -> Any:
        def run() -> Any:
            fd = open_root(root)
            try:
                return fn(fd)
            finally:
                os.close(fd)

        return await asyncio.to_thread(run)

    async def _lock(self, org_id: str, thread_id: str, why: str) -> WorkingCopy:
        """The thread's execution lock (409 while an execution runs); the thread must exist."""
        await self._threads.get(org_id, thread_id)
        return await self._threads.claim(org_id, thread_id, why)

    def _url(self, base_url: str, claims: Claims) -> dict[str, Any]:
        token = self._signer.sign(claims)
        headers = []
        if claims.method == "PUT":
            headers.append({"name": "Content-Type", "value": claims.content_type or DEFAULT_CONTENT_TYPE})
        return {
            "url": base_url.rstrip("/") + "/" + BLOB_PATH + token,
            "method": claims.method,
            "headers": headers,
            "expires_at": iso(claims.expires),
        }

    def _expiry(self) -> int:
        return int(self._signer.now()) + self._ttl

    # ---- the JSON API

    async def list(
        self, principal: Principal, source: str, id: str, path: str | None = None
    ) -> list[dict[str, Any]]:
        self._check_source(source, id)
        rel = normalize_path(path or "", source=source, id=id, allow_root=True)
        root = await self._root(principal, source, id)
        if root is None:  # a thread whose first execution never got as far as its home
            if rel:
                raise NotFound(f"no such file or directory: {rel!r}")
            return []
        result: list[dict[str, Any]] = await self._in_root(
            root, lambda fd: walk(fd, rel, self._max_list_entries)
        )
        return result

    async def upload_url(
        self,
        principal: Principal,
        source: str,
        id: str,
        path: str,
        content_length: int,
        content_type: str | None = None,
        *,
        base_url: str,
    ) -> dict[str, Any]:
        self._check_source(source, id)
        rel = normalize_path(path, source=source, id=id)
        if isinstance(content_length, bool) or not isinstance(content_length, int):
            raise InvalidRequest("content_length must be an integer")
        if not 0 <= content_length <= self._max_file_bytes:
            raise InvalidRequest(f"content_length must be between 0 and {self._max_file_bytes} bytes")
        content_type = DEFAULT_CONTENT_TYPE if content_type is None else content_type
        if not _CONTENT_TYPE.fullmatch(content_type):
            raise InvalidRequest("content_type must be 1-255 printable ASCII characters")
        if source == "thread":
            _, root = await self._thread_home(principal.org.id, id)
            if self._threads.busy(principal.org.id, id):
                raise Conflict(f"thread {id!r} is busy with an execution; upload when it has finished")
            if root is None:
                raise NotFound(f"thread {id!r} has no files yet; run code in it first")
        else:
            access = await self._volume(principal, id)
            if access.read_only:
                raise Forbidden(f"volume {id!r} is bound read-only to this API key")
            root = access.path
        await self._in_root(root, lambda fd: stat_target(fd, rel))
        claims = Claims(
            method="PUT", source=source, org_id=principal.org.id, id=id, path=rel,
            expires=self._expiry(), content_length=content_length, content_type=content_type,
        )
        return self._url(base_url, claims)

    async def download_url(
        self, principal: Principal, source: str, id: str, path: str, *, base_url: str
    ) -> dict[str, Any]:
        self._check_source(source, id)
        rel = normalize_path(path, source=source, id=id)
        root = await self._root(principal, source, id)
        if root is None:
            raise NotFound(f"no such file: {rel!r}")

        def check(fd: int) -> None:
            file_fd, _ = open_regular(fd, rel)
            os.close(file_fd)

        await self._in_root(root, check)
        claims = Claims(
            method="GET", source=source, org_id=principal.org.id, id=id, path=rel,
            expires=self._expiry(),
        )
        return self._url(base_url, claims)

    async def delete(self, principal: Principal, source: str, id: str, path: str) -> None:
        self._check_source(source, id)
        rel = normalize_path(path, source=source, id=id)
        if source == "volume":
            access = await self._volume(principal, id)
            if access.read_only:
                raise Forbidden(f"volume {id!r} is bound read-only to this API key")
            await self._in_root(access.path, lambda fd: remove(fd, rel))
            return
        copy = await self._lock(principal.org.id, id, "files:delete")
        try:
            root = await asyncio.to_thread(self._threads.home, copy.thread)
            if root is None:
                raise NotFound(f"no such file or directory: {rel!r}")
            await self._in_root(root, lambda fd: remove(fd, rel))
        finally:
            await self._threads.close(copy, keep=False)

    # ---- the blob handlers (authority: the token)

    def verify(self, token: str, method: str) -> Claims:
        return self._signer.verify(token, method)

    async def open_download(self, token: str) -> Download:
        claims = self.verify(token, "GET")
        if claims.source == "thread":
            _, root = await self._thread_home(claims.org_id, claims.id)
        else:
            root = await self._volume_path(claims.org_id, claims.id)
        if root is None:
            raise NotFound(f"no such file: {claims.path!r}")
        fd, st = await self._in_root(root, lambda rfd: open_regular(rfd, claims.path))
        name = claims.path.rsplit("/", 1)[-1]
        guessed = mimetypes.guess_type(name)[0]
        return Download(
            file=os.fdopen(fd, "rb", buffering=0), size=st.st_size, name=name,
            content_type=guessed or DEFAULT_CONTENT_TYPE,
        )

    async def receive_upload(
        self,
        token: str,
        body: AsyncIterator[bytes],
        *,
        declared_length: str | None,
        content_type: str | None,
    ) -> Claims:
        """Stream `body` into the signed file; exactly `content_length` bytes or nothing changes."""
        claims = self.verify(token, "PUT")
        expected = claims.content_length if claims.content_length is not None else -1
        if declared_length is not None and declared_length.strip() != str(expected):
            raise InvalidRequest(
                f"Content-Length {declared_length.strip()[:20]} does not match the signed content_length {expected}"
            )
        if content_type is not None and claims.content_type is not None:
            if content_type.split(";")[0].strip().lower() != claims.content_type.split(";")[0].strip().lower():
                raise InvalidRequest(
                    f"Content-Type {content_type[:80]!r} does not match the signed {claims.content_type!r}"
                )
        if claims.source == "thread":
            copy = await self._lock(claims.org_id, claims.id, "files:upload")
            try:
                home = await asyncio.to_thread(self._threads.home, copy.thread)
                if home is None:
                    raise NotFound(f"thread {claims.id!r} has no files yet")
                thread = copy.thread
                await self._stream(home, claims, body, lambda fd: self._thread_owner(fd, thread))
            finally:
                await self._threads.close(copy, keep=False)
        else:
            root = await self._volume_path(claims.org_id, claims.id)
            await self._stream(root, claims, body, self._volume_owner)
        return claims

    async def _stream(
        self, root: Path, claims: Claims, body: AsyncIterator[bytes], owner_of: Callable[[int], Owner]
    ) -> None:
        expected = claims.content_length if claims.content_length is not None else -1

        def begin(fd: int) -> _Upload:
            return _Upload(fd, claims.path, owner_of(fd))

        upload: _Upload = await self._in_root(root, begin)
        try:
            received = 0
            pending: list[bytes] = []
            pending_bytes = 0
            async for chunk in body:
                if not chunk:
                    continue
                received += len(chunk)
                if received > expected:
                    raise InvalidRequest(f"the upload is longer than the signed content_length {expected}")
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= CHUNK_BYTES:
                    await asyncio.to_thread(upload.write, b"".join(pending))
                    pending, pending_bytes = [], 0
            if pending:
                await asyncio.to_thread(upload.write, b"".join(pending))
            if received != expected:
                raise InvalidRequest(
                    f"the upload has {received} bytes, but the signed content_length is {expected}"
                )
            await asyncio.to_thread(upload.commit)
        finally:
            await asyncio.to_thread(upload.abort)
