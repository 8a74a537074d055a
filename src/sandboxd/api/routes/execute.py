"""POST /v1/sandbox/execute."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header

from ...service import ExecuteRequest
from ..deps import PrincipalDep, ServicesDep
from ..schemas import ERROR_RESPONSES, SandboxResult

router = APIRouter()


@router.post(
    "/v1/sandbox/execute",
    response_model=SandboxResult,
    responses=ERROR_RESPONSES,
    summary="Run code in a sandbox and return its output",
)
async def execute(
    body: ExecuteRequest,
    principal: PrincipalDep,
    services: ServicesDep,
    x_client_id: Annotated[str | None, Header()] = None,
) -> SandboxResult:
    """A failing program is still HTTP 200, with `success: false`."""
    outcome = await services.executions.execute(principal, body, client_id=x_client_id)
    return SandboxResult.of(outcome)
