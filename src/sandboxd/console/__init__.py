"""The web console at /console: server-rendered pages (Jinja2), a little plain JavaScript, no
build step. Sign-in by OpenID Connect (console/oidc.py) or an admin token; sessions are
MemberService's (service/members.py); CSRF tokens bound to the session (console/security.py).

It is a sub-application mounted on the API's app: the API's middleware (body limit, request
telemetry, the catch-all) wraps it too, and its errors have the API's format.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from ..api import errors as api_errors
from ..service.history import HistoryService
from ..service.keys import load_or_create_secret
from .security import Secrets
from .web import HERE, PREFIX, Console, SignInRequired, environment, sign_in_url

if TYPE_CHECKING:
    from ..app import Services

log = logging.getLogger("sandboxd.console")

__all__ = ["PREFIX", "create_console", "mount_console"]


def create_console(services: Services) -> FastAPI:
    from . import activity, auth, configuration, governance
    from .oidc import OidcClient

    settings = services.settings
    if bool(settings.oidc_issuer) != bool(settings.oidc_client_id):
        log.warning("console: OpenID Connect sign-in needs both oidc_issuer and oidc_client_id; it is off")
    app = FastAPI(title="sandboxd console", openapi_url=None, docs_url=None, redoc_url=None)
    app.state.services = services
    app.state.console = Console(
        services=services,
        secrets=Secrets(load_or_create_secret(settings.data_dir)),
        oidc=OidcClient(settings) if settings.oidc_issuer and settings.oidc_client_id else None,
        templates=environment(),
        history=HistoryService(services.store),
    )
    api_errors.install(app)
    app.add_exception_handler(SignInRequired, _sign_in_required)
    app.include_router(auth.router)
    for pages in (activity, configuration, governance):
        app.include_router(pages.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app


async def _sign_in_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SignInRequired)
    if request.method in ("GET", "HEAD"):
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse(sign_in_url(target), status_code=303)
    return api_errors.error_response(401, "unauthorized", exc.message)


def mount_console(app: FastAPI, services: Services) -> None:
    async def to_console() -> Response:
        return RedirectResponse(PREFIX + "/", status_code=308)

    app.add_api_route(PREFIX, to_console, methods=["GET"], include_in_schema=False)
    app.mount(PREFIX, create_console(services))
