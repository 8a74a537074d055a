"""Authenticating a request's API key: one procedure for every surface (REST, MCP).

The failed-auth limiter is consulted before the key is looked at, so a locked-out address is
refused (429) even with a valid key, and every missing or wrong key counts against it.
"""

from __future__ import annotations

from ..errors import Unauthorized
from .admission import AuthFailureLimiter
from .keys import KeyService, Principal

MISSING_KEY = "missing API key: send 'Authorization: Bearer <key>'"
INVALID_KEY = "invalid or revoked API key"


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header; None for an absent or other one.

    Parsed as FastAPI's HTTPBearer does (scheme case-insensitive, split at the first space).
    """
    if not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return token


async def authenticate(
    keys: KeyService, failures: AuthFailureLimiter, ip: str, token: str | None
) -> Principal:
    """The caller's principal; RateLimited while `ip` is locked out, Unauthorized otherwise."""
    failures.check(ip)
    if token is None:
        failures.failed(ip)
        raise Unauthorized(MISSING_KEY)
    principal = await keys.authenticate(token)
    if principal is None:
        failures.failed(ip)
        raise Unauthorized(INVALID_KEY)
    return principal
