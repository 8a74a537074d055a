"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ..deps import ServicesDep
from ..errors import error_response
from ..schemas import error_responses

router = APIRouter()


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    languages: list[str]


@router.get("/health", response_model=Health, summary="The process is up")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    response_model=Ready,
    responses=error_responses(503, s503="The sandbox self-check has not passed (`unavailable`)"),
    summary="Ready to run code: the sandbox self-check passed",
)
async def ready(services: ServicesDep) -> JSONResponse:
    if not services.ready:
        return error_response(503, "unavailable", "sandbox runtime not ready")
    return JSONResponse({"status": "ready", "languages": sorted(services.executions.languages)})
