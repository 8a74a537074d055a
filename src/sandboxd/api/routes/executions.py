"""The executions of your organization: status, output replay, cancel (spec §4)."""

from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from ...errors import NotFound
from ...ids import TRACE_ID_PATTERN
from ...service.documents import execution_document
from ..deps import PrincipalDep, ServicesDep
from ..ndjson import ndjson_response
from ..schemas import (
    AUTHENTICATED,
    NDJSON_CONTENT,
    CancelResponse,
    ExecutionStatus,
    error_responses,
)

router = APIRouter()
_TRACE_ID = re.compile(TRACE_ID_PATTERN)
#: The largest `seq` there can be (the event tables store it as a 32-bit integer).
MAX_SEQ = 2**31 - 1
_ERRORS = error_responses(*AUTHENTICATED, 404, s404="No execution of your organization has this trace id")


def _checked(trace_id: str) -> str:
    if not _TRACE_ID.match(trace_id):
        raise NotFound(f"no execution {trace_id[:40]!r}")
    return trace_id


@router.get(
    "/v1/executions/{trace_id}",
    response_model=ExecutionStatus,
    responses=_ERRORS,
    summary="Status and result of one execution",
)
async def get_execution(trace_id: str, principal: PrincipalDep, services: ServicesDep) -> ExecutionStatus:
    execution = await services.executions.get(principal, _checked(trace_id))
    message = await services.executions.error_message(execution)
    return ExecutionStatus(**execution_document(execution, message))


@router.get(
    "/v1/executions/{trace_id}/output",
    response_class=StreamingResponse,
    responses={
        200: {"description": "Events after after_seq, then live ones until the result",
              "content": NDJSON_CONTENT},
        **_ERRORS,
        **error_responses(400, 403, s403="Following a running execution is streaming, which the plan does not allow (`forbidden`)"),
    },
    summary="Replay and follow an execution's events (NDJSON)",
)
async def execution_output(
    trace_id: str,
    principal: PrincipalDep,
    services: ServicesDep,
    after_seq: Annotated[int, Query(ge=0, le=MAX_SEQ, description="Only events with a larger seq")] = 0,
) -> StreamingResponse:
    events = await services.executions.events(principal, _checked(trace_id), after_seq)
    return ndjson_response(events)


@router.post(
    "/v1/executions/{trace_id}/cancel",
    response_model=CancelResponse,
    responses=_ERRORS,
    summary="Cancel a running execution",
)
async def cancel_execution(trace_id: str, principal: PrincipalDep, services: ServicesDep) -> CancelResponse:
    """Answers `cancelling` for a running execution, or the final status of a finished one."""
    status = await services.executions.cancel(principal, _checked(trace_id))
    return CancelResponse(trace_id=trace_id, status=status)
