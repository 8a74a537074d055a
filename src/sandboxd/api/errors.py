"""One table from service errors to HTTP, and handlers so every error body is `{error, message}`.

No stack trace ever reaches a client: unexpected errors are answered 500 by
`middleware.CatchAll`.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .. import errors as e
from ..service import validation_message

log = logging.getLogger("sandboxd.api")

STATUS: dict[type[e.SandboxdError], int] = {
    e.InvalidRequest: 400,
    e.Unauthorized: 401,
    e.Forbidden: 403,
    e.NotFound: 404,
    e.Conflict: 409,
    e.PayloadTooLarge: 413,
    e.RateLimited: 429,
    e.SandboxSetupError: 500,
    e.Unavailable: 503,
}

_HTTP_CODES = {
    400: "validation_error",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
    503: "unavailable",
    504: "gateway_timeout",
}


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def status_of(exc: e.SandboxdError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def response_for(exc: e.SandboxdError) -> JSONResponse:
    """The HTTP answer to a service error (also for surfaces outside FastAPI's handlers)."""
    status = status_of(exc)
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, e.RateLimited) else None
    if isinstance(exc, e.Unavailable):  # expected (a drain, no thread storage): not a fault here
        log.warning("request refused: %s", exc.message)
    elif status >= 500:
        log.error("request failed: %s", exc.message)
    return error_response(status, exc.code, exc.message, headers)


async def _sandboxd_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, e.SandboxdError)
    return response_for(exc)


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, "validation_error", validation_message(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    if exc.status_code == 404:
        message = f"no such endpoint: {request.method} {request.url.path}"
    elif exc.status_code == 405:
        message = f"method {request.method} is not allowed on {request.url.path}"
        headers["Allow"] = _allowed_methods(request)
    elif exc.status_code == 400 and exc.__cause__ is not None:
        message = _unparsable_body(exc.__cause__)  # FastAPI's "error parsing the body"
    else:
        message = str(exc.detail)
    code = _HTTP_CODES.get(exc.status_code, "internal_error" if exc.status_code >= 500 else "error")
    return error_response(exc.status_code, code, message, headers)


def _allowed_methods(request: Request) -> str:
    """Every method some route takes on this path (Starlette's Allow names the first route's)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in _METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]
    return ", ".join(allowed)


def _unparsable_body(cause: BaseException) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return "request body is not valid UTF-8"
    if isinstance(cause, RecursionError):
        return "request body is nested too deeply"
    return "request body is not valid JSON"


def install(app: FastAPI) -> None:
    app.add_exception_handler(e.SandboxdError, _sandboxd_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
