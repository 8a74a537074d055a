"""Request dependencies: the services, and the caller's principal from the Bearer key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..errors import Unauthorized
from ..service import Principal

if TYPE_CHECKING:
    from ..app import Services

_bearer = HTTPBearer(auto_error=False, description="An API key: `sk-<region>-...`")


def get_services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


ServicesDep = Annotated["Services", Depends(get_services)]


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    services: Services = request.app.state.services
    ip = request.client.host if request.client else "unknown"
    services.auth_failures.check(ip)
    if credentials is None:
        services.auth_failures.failed(ip)
        raise Unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    principal = await services.keys.authenticate(credentials.credentials)
    if principal is None:
        services.auth_failures.failed(ip)
        raise Unauthorized("invalid or revoked API key")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]
