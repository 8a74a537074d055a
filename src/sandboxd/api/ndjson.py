"""NDJSON responses: one event a line, flushed as it is written."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi.responses import StreamingResponse

from ..bus import Event

MEDIA_TYPE = "application/x-ndjson"


async def _lines(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    async for event in events:
        yield json.dumps(event.to_json(), separators=(",", ":")).encode() + b"\n"


def ndjson_response(events: AsyncIterator[Event]) -> StreamingResponse:
    return StreamingResponse(
        _lines(events),
        media_type=MEDIA_TYPE,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )
