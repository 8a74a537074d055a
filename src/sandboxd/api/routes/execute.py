"""POST /v1/sandbox/execute, in its three delivery modes (spec §3.1).

`Prefer: respond-async` selects webhook mode; otherwise an `Accept` naming
`application/x-ndjson` selects streaming; otherwise inline (also for `*/*` or no Accept).
Every refusal (400, 401, 409, 429) is an ordinary HTTP error sent before any stream starts.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response

from ...service import ExecuteRequest
from ..deps import PrincipalDep, ServicesDep
from ..ndjson import MEDIA_TYPE, ndjson_response
from ..schemas import ERROR_RESPONSES, EVENT_SCHEMA, SandboxResult, WebhookAccepted

router = APIRouter()

Mode = Literal["inline", "streaming", "webhook"]


def delivery_mode(prefer: str | None, accept: str | None) -> Mode:
    if prefer and any(p.split("=")[0].strip().lower() == "respond-async" for p in prefer.split(",")):
        return "webhook"
    if accept and MEDIA_TYPE in accept.lower():
        return "streaming"
    return "inline"


@router.post(
    "/v1/sandbox/execute",
    response_model=SandboxResult,
    responses={
        200: {
            "description": "Inline: the result. Streaming (Accept: application/x-ndjson): events.",
            "content": {MEDIA_TYPE: {"itemSchema": EVENT_SCHEMA}},
        },
        202: {"model": WebhookAccepted, "description": "Webhook mode (Prefer: respond-async)"},
        **ERROR_RESPONSES,
    },
    summary="Run code in a sandbox",
)
async def execute(
    body: ExecuteRequest,
    principal: PrincipalDep,
    services: ServicesDep,
    prefer: Annotated[str | None, Header()] = None,
    accept: Annotated[str | None, Header()] = None,
    x_client_id: Annotated[str | None, Header()] = None,
) -> Response:
    """A failing program is still a success at the HTTP level, with `success: false`."""
    mode = delivery_mode(prefer, accept)
    submission = await services.executions.submit(
        principal, body, delivery_mode=mode, client_id=x_client_id
    )
    if mode == "webhook":
        accepted = WebhookAccepted(trace_id=submission.trace_id, status="queued")
        return JSONResponse(accepted.model_dump(), status_code=202)
    if mode == "streaming":
        return ndjson_response(submission.log.follow(0))
    outcome = await submission.outcome()
    return JSONResponse(SandboxResult.of(outcome).model_dump())
