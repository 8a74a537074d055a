"""The admin API at /admin/v1: every admin operation over HTTP, with its own OpenAPI document.

A sub-application mounted on the main one (so /openapi.json stays the Baponi API's and
/admin/v1/openapi.json is this one's), behind admin tokens (api/admin/deps.py). The routes are
thin: each parses its body, calls one AdminOps operation (service/admin.py, which checks the
role, acts in the caller's organization and records the change in the audit log) and returns
its view.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fastapi import FastAPI

from ... import __version__
from .. import errors, openapi
from . import audit, keys, orgs, resources

if TYPE_CHECKING:
    from ...app import Services

__all__ = ["PREFIX", "create_admin_api"]

PREFIX = "/admin/v1"


def create_admin_api(services: Services) -> FastAPI:
    app = FastAPI(
        title="sandboxd admin API",
        version=__version__,
        description="Configure sandboxd: organizations, members, API keys, sandbox configs, images, volumes, "
        "storage connections, connectors, the webhook secret; the audit log. Every change is audited. Authenticate with "
        "an admin token (`Authorization: Bearer sda-...`); API keys are not accepted here.",
        docs_url="/docs",
        redoc_url=None,
        generate_unique_id_function=lambda route: route.name,  # operationIds: the functions' names
    )
    app.state.services = services
    errors.install(app)
    openapi.install(app, extra_models={})
    for module in (orgs, keys, resources, audit):
        app.include_router(module.router)
    return app
