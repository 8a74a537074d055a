"""GET /metrics: Prometheus text format, unauthenticated (as Prometheus scrapes expect).

On the main port by default (`metrics_enabled`); with `metrics_port` set, only on a listener
of its own (`standalone`), so the API port can be public while metrics stay private.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import APIRouter, FastAPI
from fastapi.responses import Response

from ...observability.metrics import CONTENT_TYPE
from .. import errors
from ..deps import ServicesDep

if TYPE_CHECKING:
    from ...app import Services

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(services: ServicesDep) -> Response:
    return Response(await services.metrics.render(), media_type=CONTENT_TYPE)


def standalone(services: Services) -> FastAPI:
    """The app of the separate metrics listener: /metrics and nothing else."""
    app = FastAPI(openapi_url=None, docs_url=None, redoc_url=None)
    app.state.services = services
    errors.install(app)
    app.include_router(router)
    return app
