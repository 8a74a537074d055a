"""Authenticating a request's API key: one procedure for every surface (REST, MCP).

The failed-auth lockout is consulted before the key is looked up: a locked-out client is
refused (429) unless it presents a key that already authenticated from it (service/lockout.py),
and every missing or wrong key counts against it.
"""

from __future__ import annotations

from ..errors import Unauthorized
from .keys import KeyService, Principal
from .lockout import AuthFailureLimiter

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
    keys: KeyService, failures: AuthFailureLimiter, address: str, token: str | None
) -> Principal:
    """The caller's principal; RateLimited while `address` is locked out, Unauthorized otherwise.

    `address` is the client's: the TCP peer, or what a trusted proxy forwarded (server.py).
    """
    digest = keys.digest(token) if token is not None else None
    failures.check(address, digest)
    if token is None or digest is None:
        failures.failed(address)
        raise Unauthorized(MISSING_KEY)
    principal = await keys.authenticate(token)
    if principal is None:
        failures.failed(address, digest)
        raise Unauthorized(INVALID_KEY)
    failures.succeeded(address, digest)
    return principal
