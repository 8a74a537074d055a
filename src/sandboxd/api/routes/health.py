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
    responses=error_responses(
        503,
        s503="Not ready (`unavailable`, the message says why): starting, shutting down, or "
        "repeated platform errors until a fresh sandbox self-check passes",
    ),
    summary="Ready to run code: the sandbox self-check passed",
)
async def ready(services: ServicesDep) -> JSONResponse:
    if (reason := services.unready_reason()) is not None:
        return error_response(503, "unavailable", reason)
    return JSONResponse({"status": "ready", "languages": sorted(services.executions.languages)})
