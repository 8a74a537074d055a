"""The Files API (spec §5): list, signed upload/download URLs, and delete, on threads and volumes.

Paths that name a file (upload, download, delete, and the `path` to list) are relative to the
storage root: `/home/baponi` for a thread, the volume's directory (`/data/<slug>` in a sandbox)
for a volume. `/home/baponi/x` and `x` name the same file, as in the SDK's deep-agents
`_to_relative_path`. The `path` of a listed entry is **relative to the listed directory**, as
Baponi answers (spec §5.1, observed live): listing `_plots` gives `a.png`, and clients download
`f"_plots/{entry.path}"` (the Biomni agent's integration does). Listing a file gives its name.
`name` is the last component, as before.

Signed URLs name the key that asked for them (service/signing.py). At use, the blob handlers
look that key up again (`KeyLookup`, the cached `KeyService.principal_of`): a revoked key's
URLs are refused at once (403 `forbidden`, like any URL that no longer grants anything), and the
key must still be allowed what the URL does: the thread of its organization, the volume as
`VolumeResolver.access` allows it now (an upload needs a read-write binding).

Bytes do not pass through the JSON API: `upload_url`/`download_url` answer a URL to
`/v1/files/blob/<token>` on this server, where the signed token (service/signing.py) is the
only authority. The blob handlers stream: an upload goes to a temporary file created next to
the target and is renamed into place only when exactly the signed number of bytes arrived.

Security. The trees are written by untrusted code and this server runs as root: every file
operation goes through `storage/tree.py`, which never follows a link; `..`, NUL, backslashes
and percent-encoded separators are refused before that (service/paths.py).

Threads: an upload or delete holds the thread's execution lock (409 while an execution runs,
and an execution that starts meanwhile gets 409), so a snapshot never sees a half-written
file and a commit never discards an upload. Reads use the committed home. An upload (its URL, or
MCP's inline `write`) to a thread that has not run yet creates the thread and an empty home,
as its first run would (`ThreadService.claim`: the organization's thread limit and storage
cap); listing or downloading from it stays 404 until then.
"""

from __future__ import annotations

import asyncio
import logging
import mimetypes
import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Protocol

from ..errors import Forbidden, InvalidRequest, NotFound
from ..ids import THREAD_ID_PATTERN, THREAD_ID_RULE, VOLUME_ID_PATTERN
from ..storage.tree import Owner, Upload, iso, open_regular, open_root, remove, stat_target, walk
from .paths import normalize_path
from .signing import Claims, Signer
from .storage_kind import StorageKind

if TYPE_CHECKING:
    from ..store import Thread
    from .audit import AuditLog
    from .keys import Principal
    from .threads import ThreadService, WorkingCopy
    from .volumes import VolumeAccess

log = logging.getLogger("sandboxd.files")

GIB = 1024**3
MAX_FILE_BYTES = 10 * GIB
DEFAULT_CONTENT_TYPE = "application/octet-stream"
CHUNK_BYTES = 1024 * 1024
BLOB_PATH = "v1/files/blob/"

CONTENT_TYPE_PATTERN = r"^[\x21-\x7e][\x20-\x7e]{0,254}$"
_THREAD_ID = re.compile(THREAD_ID_PATTERN)
_SLUG = re.compile(VOLUME_ID_PATTERN)
_CONTENT_TYPE = re.compile(CONTENT_TYPE_PATTERN)



class VolumeResolver(Protocol):
    async def access(self, principal: Principal, slug: str) -> VolumeAccess: ...


class KeyLookup(Protocol):
    async def principal_of(self, key_id: str) -> Principal | None: ...


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
        keys: KeyLookup,
        *,
        url_ttl_s: int = 3600,
        max_file_bytes: int = MAX_FILE_BYTES,
        max_list_entries: int = 10_000,
        audit: AuditLog | None = None,
    ) -> None:
        self._audit = audit
        self._threads = threads
        self._volumes = volumes
        self._signer = signer
        self._keys = keys
        self._ttl = int(url_ttl_s)
        self._max_file_bytes = max_file_bytes
        self._max_list_entries = max_list_entries

    # ---- resolving a source

    @staticmethod
    def _check_source(source: StorageKind, id: str) -> None:
        try:
            source = StorageKind(source)
        except ValueError:
            raise InvalidRequest(
                "source must be " + " or ".join(f"'{kind.value}'" for kind in StorageKind)
            ) from None
        if source == StorageKind.THREAD and not _THREAD_ID.fullmatch(id):
            raise InvalidRequest(f"id must be a thread_id: {THREAD_ID_RULE}")
        if source == StorageKind.VOLUME and not _SLUG.fullmatch(id):
            raise InvalidRequest("id must be a volume slug")

    async def _thread_home(self, org_id: str, thread_id: str) -> tuple[Thread, Path | None]:
        thread = await self._threads.get(org_id, thread_id)
        home = await asyncio.to_thread(self._threads.home, thread)  # may mount the filesystem
        return thread, home

    async def _volume(self, principal: Principal, slug: str) -> VolumeAccess:
        if self._volumes is None:
            raise NotFound(f"no volume {slug!r}")
        return await self._volumes.access(principal, slug)

    async def _root(self, principal: Principal, source: StorageKind, id: str) -> Path | None:
        if source == StorageKind.THREAD:
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

    @staticmethod
    def _signing_key(principal: Principal) -> str:
        """The key a URL is signed for; a principal without one (a local CLI run) gets no URL."""
        if principal.key_id is None:
            raise Forbidden("file URLs are signed for an API key; this caller has none")
        return principal.key_id

    async def _holder(self, claims: Claims) -> Principal:
        """The key a URL was signed for, looked up now: still active, in the URL's org."""
        principal = await self._keys.principal_of(claims.key_id)
        if principal is None or principal.org.id != claims.org_id:
            raise Forbidden(
                "the API key this file URL was signed for has been revoked; "
                "request a new URL with an active key"
            )
        return principal

    async def _audited(
        self, action: str, principal: Principal, source: StorageKind | str, id: str, path: str, size: int | None,
        ip: str | None,
    ) -> None:
        """One audit row for a transfer or a deletion (service/audit.py)."""
        if self._audit is not None:
            await self._audit.files(
                action, org_id=principal.org.id, key_id=principal.key_id,
                key_prefix=principal.key.display_prefix if principal.key is not None else None,
                source=str(StorageKind(source).value), id=id, path=path, size=size, ip=ip,
            )

    # ---- the JSON API

    async def list(
        self, principal: Principal, source: StorageKind, id: str, path: str | None = None
    ) -> list[dict[str, Any]]:
        self._check_source(source, id)
        rel = normalize_path(path or "", source=source, id=id, allow_root=True)
        root = await self._root(principal, source, id)
        if root is None:  # a thread whose first execution never got as far as its home
            if rel:
                raise NotFound(f"no such file or directory: {rel!r}")
            return []
        entries: list[dict[str, Any]] = await self._in_root(
            root, lambda fd: walk(fd, rel, self._max_list_entries)
        )
        return [_relative_to(rel, e) for e in entries]

    async def upload_url(
        self,
        principal: Principal,
        source: StorageKind,
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
        if source == StorageKind.THREAD:
            # A thread that has not run yet is created here, under the rules of a first run
            # (409 while busy, 403 at the organization's thread limit or storage cap).
            copy = await self._threads.claim(principal.org.id, id, "files:upload_url")
            try:
                root = await self._threads.create_home(copy, principal.org.gid)
                await self._in_root(root, lambda fd: stat_target(fd, rel))
            finally:
                await self._threads.release(copy)
        else:
            root = await self._writable_volume(principal, id)
            await self._in_root(root, lambda fd: stat_target(fd, rel))
        claims = Claims(
            method="PUT", source=source, org_id=principal.org.id, id=id, path=rel,
            key_id=self._signing_key(principal), expires=self._expiry(),
            content_length=content_length, content_type=content_type,
        )
        return self._url(base_url, claims)

    async def write(
        self, principal: Principal, source: StorageKind, id: str, path: str, data: bytes, *, ip: str | None = None
    ) -> str:
        """Write a small file given whole (MCP files_upload's inline content): the checks of
        `upload_url`, then what an upload to its URL does. Returns the normalized path."""
        self._check_source(source, id)
        rel = normalize_path(path, source=source, id=id)
        if len(data) > self._max_file_bytes:
            raise InvalidRequest(f"the file must be at most {self._max_file_bytes} bytes")
        claims = Claims(
            method="PUT", source=source, org_id=principal.org.id, id=id, path=rel,
            key_id=principal.key_id or "", expires=0, content_length=len(data),
        )
        await self._receive(principal, claims, _once(data), create=True)
        await self._audited("files.upload", principal, source, id, rel, len(data), ip)
        return rel

    async def _writable_volume(self, principal: Principal, slug: str) -> Path:
        access = await self._volume(principal, slug)
        if access.read_only:
            raise Forbidden(f"volume {slug!r} is bound read-only to this API key")
        return access.path

    async def download_url(
        self, principal: Principal, source: StorageKind, id: str, path: str, *, base_url: str
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
            key_id=self._signing_key(principal), expires=self._expiry(),
        )
        return self._url(base_url, claims)

    async def read_head(
        self, principal: Principal, source: StorageKind, id: str, path: str, max_bytes: int, *, ip: str | None = None
    ) -> tuple[int, bytes]:
        """A file's size and its first `max_bytes` bytes, for a surface that shows small files
        inline (MCP files_download); the same checks as `download_url`."""
        self._check_source(source, id)
        rel = normalize_path(path, source=source, id=id)
        root = await self._root(principal, source, id)
        if root is None:
            raise NotFound(f"no such file: {rel!r}")

        def read(fd: int) -> tuple[int, bytes]:
            file_fd, st = open_regular(fd, rel)
            with os.fdopen(file_fd, "rb") as f:
                return st.st_size, f.read(max_bytes)

        result: tuple[int, bytes] = await self._in_root(root, read)
        await self._audited("files.download", principal, source, id, rel, len(result[1]), ip)
        return result

    async def delete(
        self, principal: Principal, source: StorageKind, id: str, path: str, *, ip: str | None = None
    ) -> None:
        self._check_source(source, id)
        rel = normalize_path(path, source=source, id=id)
        await self._delete(principal, source, id, rel)
        await self._audited("files.delete", principal, source, id, rel, None, ip)

    async def _delete(self, principal: Principal, source: StorageKind, id: str, rel: str) -> None:
        if source == StorageKind.VOLUME:
            access = await self._volume(principal, id)
            if access.read_only:
                raise Forbidden(f"volume {id!r} is bound read-only to this API key")
            await self._in_root(access.path, lambda fd: remove(fd, rel))
            return
        copy = await self._lock(principal.org.id, id, "files:delete")
        try:
            home = await asyncio.to_thread(self._threads.home, copy.thread)
            if home is None:
                raise NotFound(f"no such file or directory: {rel!r}")
            async with self._threads.changing(copy, home) as root:
                await self._in_root(root, lambda fd: remove(fd, rel))
        finally:
            await self._threads.release(copy)

    # ---- the blob handlers (authority: the token)

    def verify(self, token: str, method: str) -> Claims:
        return self._signer.verify(token, method)

    async def open_download(self, token: str, *, ip: str | None = None) -> Download:
        """The signed file, opened (its audit row is written here: a download that is cut off
        is recorded whole)."""
        claims = self.verify(token, "GET")
        principal = await self._holder(claims)
        if claims.source == StorageKind.THREAD:
            _, root = await self._thread_home(claims.org_id, claims.id)
        else:
            root = (await self._volume(principal, claims.id)).path
        if root is None:
            raise NotFound(f"no such file: {claims.path!r}")
        fd, st = await self._in_root(root, lambda rfd: open_regular(rfd, claims.path))
        try:
            await self._audited("files.download", principal, claims.source, claims.id, claims.path, st.st_size, ip)
        except BaseException:
            os.close(fd)
            raise
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
        ip: str | None = None,
    ) -> Claims:
        """Stream `body` into the signed file; exactly `content_length` bytes or nothing changes."""
        claims = self.verify(token, "PUT")
        principal = await self._holder(claims)
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
        await self._receive(principal, claims, body, create=False)
        await self._audited("files.upload", principal, claims.source, claims.id, claims.path, claims.content_length, ip)
        return claims

    async def _receive(
        self, principal: Principal, claims: Claims, body: AsyncIterator[bytes], *, create: bool
    ) -> None:
        """Write `body` to the file `claims` names, as `principal`; `create`: a thread that does
        not exist yet is created (else 404: its URL outlived it)."""
        if claims.source == StorageKind.THREAD:
            if create:
                copy = await self._threads.claim(claims.org_id, claims.id, "files:upload")
            else:
                copy = await self._lock(claims.org_id, claims.id, "files:upload")
            try:
                home = await self._threads.create_home(copy, principal.org.gid)
                thread = copy.thread
                async with self._threads.changing(copy, home) as root:
                    await self._stream(root, claims, body, lambda fd: self._thread_owner(fd, thread))
            finally:
                await self._threads.release(copy)
        else:
            if not create:
                access = await self._volume(principal, claims.id)
                if access.read_only:
                    raise Forbidden(
                        f"volume {claims.id!r} is now bound read-only to the API key this upload URL "
                        "was signed for"
                    )
                root = access.path
            else:
                root = await self._writable_volume(principal, claims.id)
            await self._stream(root, claims, body, self._volume_owner)

    async def _stream(
        self, root: Path, claims: Claims, body: AsyncIterator[bytes], owner_of: Callable[[int], Owner]
    ) -> None:
        expected = claims.content_length if claims.content_length is not None else -1

        def begin(fd: int) -> Upload:
            return Upload(fd, claims.path, owner_of(fd))

        upload: Upload = await self._in_root(root, begin)
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


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _relative_to(listed: str, entry: dict[str, Any]) -> dict[str, Any]:
    """A listed entry with its path relative to the directory `listed` (its name when `listed`
    is the file itself); `listed` is relative to the storage root, "" for the root."""
    path = entry["path"]
    if not listed:
        return entry
    if path.startswith(listed + "/"):
        return {**entry, "path": path[len(listed) + 1:]}
    return {**entry, "path": entry["name"]}  # `listed` names this one file
