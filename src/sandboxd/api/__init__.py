"""The REST surface: thin routes over the service layer, errors in the spec's format."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from .. import __version__
from ..runtime import INTERPRETERS, spoken
from . import admin, errors, openapi
from .disconnect import CallerGone
from .middleware import BodySizeLimit, CatchAll
from .routes import artifacts, execute, executions, files, health, metrics
from .telemetry import RequestTelemetry

if TYPE_CHECKING:
    from ..app import Services

__all__ = ["create_api"]


def create_api(services: Services) -> FastAPI:
    app = FastAPI(
        title="sandboxd",
        version=__version__,
        description=f"Runs untrusted {spoken((i.title for i in INTERPRETERS.values()), 'and')} in isolated "
        "sandboxes (Baponi API).",
    )
    app.state.services = services
    errors.install(app)
    openapi.install(app)
    for module in (execute, executions, files, artifacts, health):
        app.include_router(module.router)
    if services.settings.metrics_enabled and not services.settings.metrics_port:
        app.include_router(metrics.router)
    app.mount(admin.PREFIX, admin.create_admin_api(services))
    app.add_middleware(CallerGone, paths=("/v1/sandbox/execute",))  # innermost: a waiter whose client left
    app.add_middleware(CatchAll)
    app.add_middleware(
        BodySizeLimit,
        max_bytes=services.settings.max_body_bytes,
        exempt_prefixes=(files.BLOB_PREFIX,),
    )
    app.add_middleware(RequestTelemetry, metrics=services.metrics)  # outermost: sees every answer
    return app
