"""The admin API's dependencies: the caller's `AdminPrincipal` from its admin token, and AdminOps.

Admin tokens (`sda-...`, service/members.py) only; an API key (`sk-...`) is refused here as
an admin token is on /v1. A failed authentication counts toward the same failed-auth lockout
as /v1's (service/lockout.py), for the same client address (the peer, or what a trusted proxy
forwarded: server.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ...errors import Unauthorized
from ...service.admin import AdminOps
from ...service.roles import AdminPrincipal

if TYPE_CHECKING:
    from ...app import Services

MISSING_TOKEN = "missing admin token: send 'Authorization: Bearer sda-...'"

_bearer = HTTPBearer(
    auto_error=False, scheme_name="AdminToken", description="An admin token: `sda-...` (`sandboxd members token`)"
)


def _services(request: Request) -> Services:
    services: Services = request.app.state.services  # app.state is untyped
    return services


def client_address(request: Request) -> str:
    """As /v1 takes it (api/deps.py): the peer, or the client a trusted proxy forwarded."""
    return request.client.host if request.client else "unknown"


async def get_admin(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> AdminPrincipal:
    services = _services(request)
    failures = services.auth_failures
    address = client_address(request)
    token = credentials.credentials if credentials is not None else None
    # an opaque name for the token in the lockout's memory (never stored)
    digest = services.keys.digest(token) if token is not None else None
    failures.check(address, digest)
    if token is None or digest is None:
        failures.failed(address)
        raise Unauthorized(MISSING_TOKEN)
    try:
        principal = await services.members.authenticate(token, address)
    except Unauthorized:
        failures.failed(address, digest)
        raise
    failures.succeeded(address, digest)
    return principal


def get_ops(request: Request) -> AdminOps:
    return _services(request).ops


AdminDep = Annotated[AdminPrincipal, Depends(get_admin)]
OpsDep = Annotated[AdminOps, Depends(get_ops)]
OrgQuery = Annotated[
    str | None,
    Query(description="Another organization's name (operators: owners of the `default` organization)."),
]
