"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from ..deps import ServicesDep
from ..errors import error_response

router = APIRouter()


@router.get("/health", summary="The process is up")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/ready", summary="Ready to run code: the sandbox self-check passed")
async def ready(services: ServicesDep) -> JSONResponse:
    if not services.ready:
        return error_response(503, "unavailable", "sandbox runtime not ready")
    return JSONResponse({"status": "ready", "languages": sorted(services.executions.languages)})
