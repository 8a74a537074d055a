"""Signing in (OpenID Connect, or an admin token) and out."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import RedirectResponse, Response

from ..errors import RateLimited, SandboxdError
from ..store import Member
from .security import OIDC_COOKIE, PRE_COOKIE, SESSION_COOKIE
from .web import PREFIX, CheckedDep, Console, ConsoleDep, FormErrors, client_ip, pre_checked, render

router = APIRouter()
_OIDC_COOKIE_AGE_S = 600


def _next(value: str | None) -> str:
    """Only a path of the console itself (no open redirect)."""
    if value and value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return PREFIX + "/"


def _set_cookie(request: Request, console: Console, response: Response, name: str, value: str, max_age: int) -> None:
    """HttpOnly, SameSite=Lax, the console's path only; Secure over https (the public URL's, or
    the request's as a trusted proxy forwarded it)."""
    secure = console.secure_cookies or request.url.scheme == "https"
    response.set_cookie(name, value, max_age=max_age, path=PREFIX, httponly=True, samesite="lax", secure=secure)


@router.get("/sign-in")
async def sign_in_page(request: Request, console: ConsoleDep, next: str | None = None) -> Response:
    return _sign_in_form(request, console, _next(next))


def _sign_in_form(
    request: Request, console: Console, next_path: str, errors: FormErrors | None = None, status: int = 200
) -> Response:
    # Always a fresh value, never the one the request carried (it may have been planted).
    binding = console.secrets.pre_binding(client_ip(request))
    response = render(
        request, console, "sign_in.html", None, status=status, csrf=console.secrets.csrf_token("pre:" + binding),
        next=next_path, oidc=console.oidc is not None, errors=errors,
    )
    _set_cookie(request, console, response, PRE_COOKIE, binding, 3600)
    return response


@router.post("/sign-in", dependencies=[Depends(pre_checked)])
async def sign_in_with_token(
    request: Request, console: ConsoleDep, token: Annotated[str, Form()] = "", next: Annotated[str, Form()] = ""
) -> Response:
    services = console.services
    address, token = client_ip(request) or "unknown", token.strip()
    # Guessing is counted as on the APIs (service/lockout.py): too many failures, 429 for a while.
    digest = services.keys.digest(token) if token else None
    try:
        services.auth_failures.check(address, digest)
    except RateLimited as exc:
        return _sign_in_form(request, console, _next(next), FormErrors(fields={"token": exc.message}), 429)
    try:
        principal = await services.members.authenticate(token, address)
        member = await services.members.get(principal.org, principal.actor.name)
    except SandboxdError as exc:
        services.auth_failures.failed(address, digest)
        return _sign_in_form(request, console, _next(next), FormErrors(fields={"token": exc.message}), 401)
    if digest is not None:
        services.auth_failures.succeeded(address, digest)
    # The session ends with the token it was opened with (revoked or expired).
    return await _open_session(request, console, member, _next(next), admin_token_id=principal.credential_id)


async def _open_session(
    request: Request, console: Console, member: Member, next_path: str, *, admin_token_id: str | None = None
) -> Response:
    members = console.services.members
    token = await members.open_session(member, client_ip(request), admin_token_id=admin_token_id)
    expires = await members.session_expires(token)
    max_age = int((expires - datetime.now(timezone.utc)).total_seconds()) if expires else 3600
    response = RedirectResponse(next_path, status_code=303)
    _set_cookie(request, console, response, SESSION_COOKIE, token, max(max_age, 1))
    response.delete_cookie(PRE_COOKIE, path=PREFIX)
    response.delete_cookie(OIDC_COOKIE, path=PREFIX)
    return response


def _redirect_uri(request: Request, console: Console) -> str:
    return console.public_base(request) + PREFIX + "/auth/callback"


@router.post("/auth/oidc", dependencies=[Depends(pre_checked)])
async def oidc_start(request: Request, console: ConsoleDep, next: Annotated[str, Form()] = "") -> Response:
    if console.oidc is None:
        return _sign_in_form(request, console, _next(next), FormErrors(form="no identity provider is configured"), 404)
    try:
        started = await console.oidc.start(_redirect_uri(request, console))
    except SandboxdError as exc:
        return _sign_in_form(request, console, _next(next), FormErrors(form=exc.message), 503)
    response = RedirectResponse(started.url, status_code=303)
    sealed = console.secrets.seal(
        {"state": started.state, "nonce": started.nonce, "verifier": started.verifier, "next": _next(next)},
        _OIDC_COOKIE_AGE_S,
    )
    _set_cookie(request, console, response, OIDC_COOKIE, sealed, _OIDC_COOKIE_AGE_S)
    return response


@router.get("/auth/callback")
async def oidc_callback(
    request: Request, console: ConsoleDep, code: str | None = None, state: str | None = None,
    error: str | None = None, error_description: str | None = None,
) -> Response:
    pending = console.secrets.unseal(request.cookies.get(OIDC_COOKIE))
    next_path = _next(pending.get("next") if pending else None)

    def refused(message: str) -> Response:
        return _sign_in_form(request, console, next_path, FormErrors(form=message), 403)

    if console.oidc is None:
        return refused("no identity provider is configured")
    if pending is None or not state or state != pending.get("state"):
        return refused("the sign-in took too long or did not start here; try again")
    if error or not code:
        return refused(f"the identity provider refused the sign-in: {error_description or error or 'no code'}")
    try:
        identity = await console.oidc.finish(
            _redirect_uri(request, console), code, nonce=pending["nonce"], verifier=pending["verifier"]
        )
        member = await console.services.members.oidc_sign_in(
            identity.subject, identity.email, identity.org, identity.role, email_verified=identity.email_verified
        )
    except SandboxdError as exc:
        return refused(exc.message)
    return await _open_session(request, console, member, next_path)


@router.post("/sign-out")
async def sign_out(console: ConsoleDep, who: CheckedDep) -> Response:
    await console.services.members.close_session(who.session_token)
    response = RedirectResponse(PREFIX + "/sign-in", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response
