"""The Files API (spec §5): list, signed upload/download URLs, delete, and the blob endpoints.

The JSON endpoints take a Bearer key. `PUT`/`GET /v1/files/blob/{token}` take none: the signed
token is the authority (spec §5.4), so any HTTP client can use the URL as it is, for as long as
the key that asked for it stays active and allowed (403 `forbidden` once it is revoked).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictStr
from pydantic.config import JsonDict
from starlette.requests import ClientDisconnect

from ...errors import InvalidRequest
from ...ids import THREAD_ID_PATTERN, VOLUME_ID_PATTERN
from ...service.files import CHUNK_BYTES, CONTENT_TYPE_PATTERN, MAX_FILE_BYTES, Download
from ...service.paths import MAX_PATH_CHARS, UNSAFE_PATH_PATTERN
from ...service.requests import JsonInt
from ...service.storage_kind import StorageKind, StorageKindParam
from ..deps import PrincipalDep, ServicesDep
from ..schemas import AUTHENTICATED, error_responses

router = APIRouter()
#: Signed file URLs: no Bearer key, the token is the authority.
BLOB_PREFIX = "/v1/files/blob/"

_S403 = (
    "A read-only volume, or a file URL that is invalid, expired, or signed for an API key since "
    "revoked (`forbidden`)"
)
_S404 = "No such thread, volume or file (`not_found`)"
_S409 = "The thread is busy with an execution, or a directory is not empty (`conflict`)"
_S503 = "Thread and volume storage is not available on this server (`unavailable`)"
_READ_ERRORS = error_responses(400, *AUTHENTICATED, 404, 413, 503, s404=_S404, s503=_S503)
_WRITE_ERRORS = error_responses(
    400, *AUTHENTICATED, 403, 404, 409, 413, 503, s403=_S403, s404=_S404, s409=_S409, s503=_S503
)

# The rules of service/files.py and service/paths.py as JSON Schema, for the OpenAPI document (validation stays in the
# service). A path is documented in its relative form, components of at most 255 characters
# (bytes, in fact); the server also takes the absolute form under the storage root.
_COMPONENTS = "^([^/]{1,255}(/[^/]{0,255})*)?$"
_NAMES_A_FILE = r"(^|/)([^/.]|\.[^/.]|\.\.[^/])"
_PATH_SCHEMA: JsonDict = {"maxLength": MAX_PATH_CHARS, "pattern": _COMPONENTS, "not": {"pattern": UNSAFE_PATH_PATTERN}}
_FILE_PATH_SCHEMA: JsonDict = {**_PATH_SCHEMA, "allOf": [{"pattern": _NAMES_A_FILE}]}
#: A thread_id for `source: thread`, a volume slug (which may also hold dots) for `volume`.
_ID_BY_SOURCE: JsonDict = {
    "if": {"properties": {"source": {"const": StorageKind.VOLUME.value}}, "required": ["source"]},
    "then": {"properties": {"id": {"pattern": VOLUME_ID_PATTERN}}},
    "else": {"properties": {"id": {"pattern": THREAD_ID_PATTERN}}},
}

# Any: a FieldInfo shared by two models (pydantic types Field(default=x) as x's type).
SourceField: Any = Field(default=StorageKind.THREAD, description="'thread' (id = thread_id) or 'volume' (id = slug).")
IdField = Field(
    description="The thread_id or the volume slug.",
    json_schema_extra={"pattern": VOLUME_ID_PATTERN, "maxLength": 128},
)
PathField = Field(
    description="Relative to the storage root ('x/y.txt'; '/home/baponi/x/y.txt' is the same file), "
    "each name at most 255 bytes of UTF-8.",
    json_schema_extra=_FILE_PATH_SCHEMA,
)


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, json_schema_extra=_ID_BY_SOURCE)


class ListFilesRequest(_Body):
    source: StorageKindParam = SourceField
    id: StrictStr = IdField
    path: StrictStr | None = Field(
        default=None,
        description="A directory (or file) to list, relative to the storage root; "
        "default: everything.",
        json_schema_extra={"anyOf": [{"type": "string", **_PATH_SCHEMA}, {"type": "null"}]},
    )


class FileRequest(_Body):
    source: StorageKindParam = SourceField
    id: StrictStr = IdField
    path: StrictStr = PathField


class UploadUrlRequest(FileRequest):
    content_length: JsonInt = Field(
        description="The exact size of the upload in bytes.",
        json_schema_extra={"minimum": 0, "maximum": MAX_FILE_BYTES},
    )
    content_type: StrictStr | None = Field(
        default=None,
        description="Default application/octet-stream.",
        json_schema_extra={"anyOf": [{"type": "string", "pattern": CONTENT_TYPE_PATTERN}, {"type": "null"}]},
    )


class FileEntry(BaseModel):
    name: str = Field(description="The file's or directory's name (the last component of `path`).")
    path: str = Field(
        description="Relative to the listed directory (the request's `path`; the storage root when "
        "there is none), as Baponi answers: prefix the request's `path` to download it. "
        "Listing one file gives its name."
    )
    size: int = Field(description="Bytes; 0 for directories.")
    modified: str = Field(description="ISO 8601, UTC.")
    is_directory: bool


class FileList(BaseModel):
    files: list[FileEntry]


class SignedUrlHeader(BaseModel):
    name: str
    value: str


class SignedUrl(BaseModel):
    url: str
    method: str
    headers: list[SignedUrlHeader]
    expires_at: str


class UploadDone(BaseModel):
    path: str
    size: int


@router.post("/v1/files/list", response_model=FileList, responses=_READ_ERRORS, summary="List files")
async def list_files(body: ListFilesRequest, principal: PrincipalDep, services: ServicesDep) -> FileList:
    """Everything below `path` (recursively; directories included), or the one file `path`.

    Entry paths are relative to `path`: listing `_plots` answers `a.png` (download `_plots/a.png`).
    """
    entries = await services.files.list(principal, body.source, body.id, body.path)
    return FileList(files=[FileEntry(**e) for e in entries])


@router.post(
    "/v1/files/upload_url", response_model=SignedUrl, responses=_WRITE_ERRORS, summary="A signed upload URL"
)
async def upload_url(
    body: UploadUrlRequest, request: Request, principal: PrincipalDep, services: ServicesDep
) -> SignedUrl:
    """PUT exactly `content_length` bytes to the URL, with the returned headers, before `expires_at`."""
    signed = await services.files.upload_url(
        principal, body.source, body.id, body.path, body.content_length, body.content_type,
        base_url=str(request.base_url),
    )
    return SignedUrl(**signed)


@router.post(
    "/v1/files/download_url", response_model=SignedUrl, responses=_READ_ERRORS, summary="A signed download URL"
)
async def download_url(
    body: FileRequest, request: Request, principal: PrincipalDep, services: ServicesDep
) -> SignedUrl:
    signed = await services.files.download_url(
        principal, body.source, body.id, body.path, base_url=str(request.base_url)
    )
    return SignedUrl(**signed)


@router.api_route(
    "/v1/files",
    methods=["DELETE"],
    status_code=204,
    response_class=Response,
    responses=_WRITE_ERRORS,
    summary="Delete a file or an empty directory",
)
async def delete_file(body: FileRequest, request: Request, principal: PrincipalDep, services: ServicesDep) -> Response:
    await services.files.delete(principal, body.source, body.id, body.path, ip=_ip(request))
    return Response(status_code=204)


@router.put(
    BLOB_PREFIX + "{token}",
    response_model=UploadDone,
    responses=error_responses(
        400, 403, 404, 409, 413, 500, 503,
        s400="The body's length or Content-Type is not the signed one (`validation_error`)",
        s403=_S403, s404=_S404, s409=_S409, s503=_S503,
        s413="The storage quota is exhausted (`payload_too_large`)",
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "Exactly the signed `content_length` bytes, with the signed Content-Type.",
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        }
    },
    summary="Upload to a signed URL (no Authorization: the token is the authority)",
)
async def put_blob(token: str, request: Request, services: ServicesDep) -> UploadDone:
    try:
        claims = await services.files.receive_upload(
            token,
            request.stream(),
            declared_length=request.headers.get("content-length"),
            content_type=request.headers.get("content-type"),
            ip=_ip(request),
        )
    except ClientDisconnect:
        raise InvalidRequest("the upload was interrupted; nothing was written") from None
    return UploadDone(path=claims.path, size=claims.content_length or 0)


def _ip(request: Request) -> str | None:
    """The client's address (the peer, or what a trusted proxy forwarded: server.py), for the audit row."""
    return request.client.host if request.client else None


async def chunks(download: Download) -> AsyncIterator[bytes]:
    """The file in chunks, never more than the Content-Length announced (a volume file may grow)."""
    left = download.size
    try:
        while left > 0:
            chunk = await asyncio.to_thread(download.file.read, min(CHUNK_BYTES, left))
            if not chunk:
                break
            left -= len(chunk)
            yield chunk
    finally:
        download.file.close()


def attachment(name: str) -> str:
    plain = "".join(c for c in name if " " <= c <= "~" and c not in '"\\') or "download"
    return f'attachment; filename="{plain}"; filename*=UTF-8\'\'{quote(name, safe="")}'


@router.get(
    BLOB_PREFIX + "{token}",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The file's bytes, with the signed (or guessed) Content-Type",
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
        },
        **error_responses(403, 404, 500, 503, s403=_S403, s404=_S404, s503=_S503),
    },
    summary="Download from a signed URL (no Authorization: the token is the authority)",
)
async def get_blob(token: str, request: Request, services: ServicesDep) -> StreamingResponse:
    download = await services.files.open_download(token, ip=_ip(request))
    return StreamingResponse(
        chunks(download),
        media_type=download.content_type,
        headers={
            "Content-Length": str(download.size),
            "Content-Disposition": attachment(download.name),
        },
    )
