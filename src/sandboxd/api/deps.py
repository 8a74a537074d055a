"""Request dependencies: the services, and the caller's principal from the Bearer key."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..service import Principal
from ..service.auth import authenticate

if TYPE_CHECKING:
    from ..app import Services

_bearer = HTTPBearer(auto_error=False, description="An API key: `sk-<region>-...`")


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services  # app.state is untyped
    return services


ServicesDep = Annotated["Services", Depends(get_services)]


async def get_principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    services: Services = request.app.state.services
    # the peer, or the client a trusted proxy forwarded (server.py)
    address = request.client.host if request.client else "unknown"
    token = credentials.credentials if credentials is not None else None
    return await authenticate(services.keys, services.auth_failures, address, token)


PrincipalDep = Annotated[Principal, Depends(get_principal)]
