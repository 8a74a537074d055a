"""GET /v1/artifacts/{trace_id}/{path}: download a file a run left in /data/outputs.

No Bearer key: the signature in the URL is the authority (service/artifacts.py), as for the
Files API's signed URLs. Always an attachment, never rendered by a browser on this origin.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from ...errors import NotFound
from ...service.artifacts import ROUTE
from ..deps import ServicesDep
from ..schemas import error_responses
from .files import attachment, chunks

router = APIRouter()


@router.get(
    ROUTE + "{trace_id}/{path:path}",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The file's bytes (Content-Disposition: attachment)",
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
        },
        **error_responses(
            400, 403, 404, 500,
            s400="`expires` or `signature` missing or malformed (`validation_error`)",
            s403="An artifact URL that is invalid, was changed, or has expired (`forbidden`)",
            s404="No such execution or artifact, or it was deleted after its retention (`not_found`)",
        ),
    },
    summary="Download an artifact from its signed URL (no Authorization: the signature is the authority)",
)
async def get_artifact(
    trace_id: str,
    path: str,
    services: ServicesDep,
    expires: Annotated[int, Query(description="Unix seconds, as listed.")],
    signature: Annotated[str, Query(max_length=128, description="As listed.")],
) -> StreamingResponse:
    if services.artifacts is None:
        raise NotFound("this server keeps no artifacts")
    download = await services.artifacts.open(trace_id, path, expires, signature)
    return StreamingResponse(
        chunks(download),
        media_type=download.content_type,
        headers={
            "Content-Length": str(download.size),
            "Content-Disposition": attachment(download.name),
            "X-Content-Type-Options": "nosniff",
        },
    )
