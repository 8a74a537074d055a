"""GET /v1/executions/{trace_id}."""

from __future__ import annotations

import re

from fastapi import APIRouter

from ...errors import NotFound
from ...ids import TRACE_ID_PATTERN
from ..deps import PrincipalDep, ServicesDep
from ..schemas import ERROR_RESPONSES, ExecutionStatus

router = APIRouter()
_TRACE_ID = re.compile(TRACE_ID_PATTERN)


@router.get(
    "/v1/executions/{trace_id}",
    response_model=ExecutionStatus,
    responses={**ERROR_RESPONSES, 404: ERROR_RESPONSES[400] | {"description": "No such execution"}},
    summary="Status and result of one execution",
)
async def get_execution(trace_id: str, principal: PrincipalDep, services: ServicesDep) -> ExecutionStatus:
    if not _TRACE_ID.match(trace_id):
        raise NotFound(f"no execution {trace_id[:40]!r}")
    return ExecutionStatus.of(await services.executions.get(principal, trace_id))
