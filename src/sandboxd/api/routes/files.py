"""The Files API (spec §5): list, signed upload/download URLs, delete, and the blob endpoints.

The JSON endpoints take a Bearer key. `PUT`/`GET /v1/files/blob/{token}` take none: the signed
token is the authority (spec §5.4), so any HTTP client can use the URL as it is.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Literal
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr
from starlette.requests import ClientDisconnect

from ...errors import InvalidRequest
from ...service.files import CHUNK_BYTES, Download
from ..deps import PrincipalDep, ServicesDep
from ..schemas import ERROR_RESPONSES, ErrorBody

router = APIRouter()
#: Signed file URLs: no Bearer key, the token is the authority.
BLOB_PREFIX = "/v1/files/blob/"

_ERRORS: dict[int | str, dict[str, object]] = {
    **ERROR_RESPONSES,
    403: {"model": ErrorBody, "description": "Read-only volume, or an invalid/expired file URL (`forbidden`)"},
    404: {"model": ErrorBody, "description": "No such thread, volume or file (`not_found`)"},
    409: {"model": ErrorBody, "description": "The thread is busy with an execution (`conflict`)"},
}

SourceField = Field(default="thread", description="'thread' (id = thread_id) or 'volume' (id = slug).")
PathField = Field(description="Relative to the storage root; '/home/baponi/x' and 'x' are the same.")


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class ListFilesRequest(_Body):
    source: Literal["thread", "volume"] = SourceField
    id: StrictStr = Field(description="The thread_id or the volume slug.")
    path: StrictStr | None = Field(default=None, description="A directory (or file) to list; default: everything.")


class FileRequest(_Body):
    source: Literal["thread", "volume"] = SourceField
    id: StrictStr
    path: StrictStr = PathField


class UploadUrlRequest(FileRequest):
    content_length: StrictInt = Field(description="The exact size of the upload in bytes (0 to 10 GiB).")
    content_type: StrictStr | None = Field(default=None, description="Default application/octet-stream.")


class FileEntry(BaseModel):
    name: str
    path: str = Field(description="Relative to the storage root (not to the `path` argument).")
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


@router.post("/v1/files/list", response_model=FileList, responses=_ERRORS, summary="List files")
async def list_files(body: ListFilesRequest, principal: PrincipalDep, services: ServicesDep) -> FileList:
    """Everything below `path` (recursively; directories included), or the one file `path`."""
    entries = await services.files.list(principal, body.source, body.id, body.path)
    return FileList(files=[FileEntry(**e) for e in entries])


@router.post(
    "/v1/files/upload_url", response_model=SignedUrl, responses=_ERRORS, summary="A signed upload URL"
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
    "/v1/files/download_url", response_model=SignedUrl, responses=_ERRORS, summary="A signed download URL"
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
    responses=_ERRORS,
    summary="Delete a file or an empty directory",
)
async def delete_file(body: FileRequest, principal: PrincipalDep, services: ServicesDep) -> Response:
    await services.files.delete(principal, body.source, body.id, body.path)
    return Response(status_code=204)


@router.put(
    BLOB_PREFIX + "{token}",
    response_model=UploadDone,
    responses=_ERRORS,
    summary="Upload to a signed URL (no Authorization: the token is the authority)",
)
async def put_blob(token: str, request: Request, services: ServicesDep) -> UploadDone:
    try:
        claims = await services.files.receive_upload(
            token,
            request.stream(),
            declared_length=request.headers.get("content-length"),
            content_type=request.headers.get("content-type"),
        )
    except ClientDisconnect:
        raise InvalidRequest("the upload was interrupted; nothing was written") from None
    return UploadDone(path=claims.path, size=claims.content_length or 0)


async def _chunks(download: Download) -> AsyncIterator[bytes]:
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


def _attachment(name: str) -> str:
    plain = "".join(c for c in name if " " <= c <= "~" and c not in '"\\') or "download"
    return f'attachment; filename="{plain}"; filename*=UTF-8\'\'{quote(name, safe="")}'


@router.get(
    BLOB_PREFIX + "{token}",
    response_class=StreamingResponse,
    responses={200: {"description": "The file's bytes", "content": {"application/octet-stream": {}}}, **_ERRORS},
    summary="Download from a signed URL (no Authorization: the token is the authority)",
)
async def get_blob(token: str, services: ServicesDep) -> StreamingResponse:
    download = await services.files.open_download(token)
    return StreamingResponse(
        _chunks(download),
        media_type=download.content_type,
        headers={
            "Content-Length": str(download.size),
            "Content-Disposition": _attachment(download.name),
        },
    )
