"""What every console route shares: the templates, the signed-in visitor, CSRF, form errors."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import quote

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, FileSystemLoader, select_autoescape

from ..errors import SandboxdError, Unauthorized
from ..service.history import HistoryService
from ..service.roles import AUDIT, MEMBERS, READ, RUN, AdminPrincipal
from .security import CSRF_FIELD, CSRF_HEADER, PRE_COOKIE, SESSION_COOKIE, Secrets

if TYPE_CHECKING:
    from ..app import Services
    from .oidc import OidcClient

HERE = Path(__file__).parent
PREFIX = "/console"


@dataclass
class Console:
    services: Services
    secrets: Secrets
    oidc: OidcClient | None
    templates: Environment
    history: HistoryService

    @property
    def secure_cookies(self) -> bool:
        return (self.services.settings.public_url or "").startswith("https://")

    def public_base(self, request: Request) -> str:
        return (self.services.settings.public_url or str(request.base_url)).rstrip("/")


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["ms"] = _ms
    env.filters["pair"] = lambda value: (value, value)
    env.filters["iso"] = lambda value: _when(datetime.fromisoformat(value)) if value else "—"
    env.globals["PREFIX"] = PREFIX
    return env


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S UTC") if value is not None else "—"


def _ms(value: int | None) -> str:
    if value is None:
        return "—"
    return f"{value} ms" if value < 10_000 else f"{value / 1000:.1f} s"


class SignInRequired(Exception):
    """No valid session: a page redirects to sign-in; anything else is answered 401."""

    def __init__(self, message: str = "not signed in") -> None:
        self.message = message


@dataclass(frozen=True)
class Visitor:
    principal: AdminPrincipal
    session_token: str
    csrf: str

    def can(self, permission: str) -> bool:
        return self.principal.can(permission)


#: The navigation: (path, label, permission to see it).
NAV: tuple[tuple[str, str, str], ...] = (
    ("/", "Dashboard", READ),
    ("/executions", "Executions", READ),
    ("/try", "Try it", RUN),
    ("/keys", "API keys", READ),
    ("/sandboxes", "Sandbox configs", READ),
    ("/images", "Images", READ),
    ("/volumes", "Volumes", READ),
    ("/storage", "Storage", READ),
    ("/connectors", "Connectors", READ),
    ("/webhook", "Webhook secret", READ),
    ("/plan", "Plan & usage", READ),
    ("/members", "Members", MEMBERS),
    ("/audit", "Audit log", AUDIT),
)


def console_of(request: Request) -> Console:
    console: Console = request.app.state.console
    return console


ConsoleDep = Annotated[Console, Depends(console_of)]


def client_ip(request: Request) -> str | None:
    return request.client.host if request.client else None


async def visitor(request: Request, console: ConsoleDep) -> Visitor:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        raise SignInRequired()
    try:
        principal = await console.services.members.session(token, client_ip(request))
    except Unauthorized as exc:
        raise SignInRequired(exc.message) from None
    return Visitor(principal=principal, session_token=token, csrf=console.secrets.csrf_token("session:" + token))


VisitorDep = Annotated[Visitor, Depends(visitor)]


async def presented_csrf(request: Request) -> str | None:
    presented = request.headers.get(CSRF_HEADER)
    if presented is None and request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        value = (await request.form()).get(CSRF_FIELD)
        presented = value if isinstance(value, str) else None
    return presented


async def checked(request: Request, console: ConsoleDep, who: VisitorDep) -> Visitor:
    """A signed-in visitor whose request carries the session's CSRF token (403 otherwise)."""
    console.secrets.check_csrf("session:" + who.session_token, await presented_csrf(request))
    return who


CheckedDep = Annotated[Visitor, Depends(checked)]


async def pre_checked(request: Request, console: ConsoleDep) -> None:
    """A sign-in form: its CSRF token is bound to the pre-session cookie, which must be one
    the server issued to this client's address (security.py)."""
    console.secrets.check_pre(request.cookies.get(PRE_COOKIE), client_ip(request), await presented_csrf(request))


@dataclass
class FormErrors:
    """An API error placed next to the field it names (else above the form)."""

    fields: dict[str, str] = field(default_factory=dict)
    form: str | None = None

    @classmethod
    def of(cls, exc: SandboxdError, names: tuple[str, ...]) -> FormErrors:
        message = exc.message
        lowered = message.lower()
        if "name" in names and re.match(r"^[a-z ]+ name must", lowered):  # "sandbox name must be ..."
            return cls(fields={"name": message})
        for name in names:
            spoken = name.replace("_", " ")
            if lowered.startswith((name + " ", spoken + " ", name + ":")) or f"{name} must" in lowered:
                return cls(fields={name: message})
        return cls(form=message)

    def __bool__(self) -> bool:
        return bool(self.fields or self.form)


def render(
    request: Request, console: Console, template: str, who: Visitor | None, status: int = 200, **context: Any
) -> HTMLResponse:
    nav = [(PREFIX + path if path != "/" else PREFIX + "/", label) for path, label, need in NAV if who and who.can(need)]
    page = console.templates.get_template(template).render(
        request=request, who=who, nav=nav, path=request.url.path, csrf=who.csrf if who else context.pop("csrf", ""),
        errors=context.pop("errors", None) or FormErrors(), **context,
    )
    return HTMLResponse(page, status_code=status, headers=PAGE_HEADERS)


#: Every page: never cached (a key shown once stays once), never framed (clickjacking), and only
#: this server's own script and style (no inline script: a value that slipped past escaping
#: still cannot run).
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


def sign_in_url(next_path: str) -> str:
    return f"{PREFIX}/sign-in?next={quote(next_path, safe='/')}"
