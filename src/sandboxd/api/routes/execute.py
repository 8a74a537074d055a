"""POST /v1/sandbox/execute, in its three delivery modes (spec §3.1).

`Prefer: respond-async` selects webhook mode; otherwise an `Accept` naming
`application/x-ndjson` selects streaming; otherwise inline (also for `*/*` or no Accept).
Every refusal (400, 401, 409, 429) is an ordinary HTTP error sent before any stream starts.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Header, Request
from fastapi.responses import JSONResponse, Response

from ...service import ExecuteRequest
from ..deps import PrincipalDep, ServicesDep
from ..ndjson import MEDIA_TYPE, ndjson_response
from ..schemas import AUTHENTICATED, NDJSON_CONTENT, SandboxResult, WebhookAccepted, error_responses

router = APIRouter()

Mode = Literal["inline", "streaming", "webhook"]

#: OpenAPI links: what a client (or schemathesis' stateful phase) can do with the trace id.
_TRACE_ID_LINKS = {
    name: {"operationRef": f"#/paths/{path}/{method}", "parameters": {"trace_id": "$response.body#/trace_id"}}
    for name, path, method in (
        ("GetExecution", "~1v1~1executions~1{trace_id}", "get"),
        ("FollowOutput", "~1v1~1executions~1{trace_id}~1output", "get"),
        ("CancelExecution", "~1v1~1executions~1{trace_id}~1cancel", "post"),
    )
}


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
            "description": "Inline: the result (JSON). Streaming (`Accept: application/x-ndjson`): "
            "one event a line, `status` first and `result` last.",
            "content": NDJSON_CONTENT,
            "links": _TRACE_ID_LINKS,
        },
        202: {
            "model": WebhookAccepted,
            "description": "Webhook mode (`Prefer: respond-async`)",
            "links": _TRACE_ID_LINKS,
        },
        **error_responses(
            400, *AUTHENTICATED, 403, 409, 413, 503,
            s403="The organization's thread limit, or a webhook_url that is not public (`forbidden`)",
            s503="Thread storage is not available on this server (`unavailable`)",
        ),
    },
    summary="Run code in a sandbox",
)
async def execute(
    request: Request,
    body: ExecuteRequest,
    principal: PrincipalDep,
    services: ServicesDep,
    prefer: Annotated[
        str | None, Header(description="`respond-async`: webhook mode, answered 202 at once.")
    ] = None,
    accept: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_client_id: Annotated[
        str | None, Header(description="Who is calling (the SDK sends e.g. baponi-python/langchain).")
    ] = None,
) -> Response:
    """Runs `code` and answers in one of three delivery modes, chosen by the request headers.

    A failing program is still a success at the HTTP level, with `success: false`.
    """
    mode = delivery_mode(prefer, accept)
    submission = await services.executions.submit(
        principal, body, delivery_mode=mode, client_id=x_client_id, base_url=str(request.base_url),
        client_ip=request.client.host if request.client else None,
    )
    if mode == "webhook":
        accepted = WebhookAccepted(trace_id=submission.trace_id, status="queued")
        return JSONResponse(accepted.model_dump(), status_code=202)
    if mode == "streaming":
        return ndjson_response(submission.log.follow(0))
    outcome = await submission.outcome()
    return JSONResponse(SandboxResult.of(outcome).model_dump())
