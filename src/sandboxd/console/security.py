"""The console's cookies and its CSRF tokens.

- The session cookie holds the token `MemberService.open_session` made (its digest is the
  database row): HttpOnly, SameSite=Lax, Secure when the console is served over https, and it
  expires with the session.
- Before sign-in, a random "pre-session" cookie binds the sign-in forms' CSRF token and the
  OpenID Connect round trip (state, nonce, PKCE verifier, sealed in a short-lived cookie).
- A CSRF token is an HMAC of what it is bound to (the session token, or the pre-session
  value) under a key derived from the server's secret: a page from another site cannot read
  it, so a form post or fetch without it is refused (403) before anything changes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

from ..errors import Forbidden

SESSION_COOKIE = "sandboxd_console"
PRE_COOKIE = "sandboxd_console_pre"
OIDC_COOKIE = "sandboxd_console_oidc"
CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"


class Secrets:
    """Keys derived from the server's secret (service/keys.py `load_or_create_secret`)."""

    def __init__(self, pepper: bytes) -> None:
        self._csrf = hmac.new(pepper, b"console:csrf", hashlib.sha256).digest()
        self._seal = hmac.new(pepper, b"console:seal", hashlib.sha256).digest()

    def csrf_token(self, binding: str) -> str:
        return hmac.new(self._csrf, binding.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, binding: str | None, presented: str | None) -> None:
        if not binding or not presented or not hmac.compare_digest(self.csrf_token(binding), presented):
            raise Forbidden("missing or invalid CSRF token: reload the page and submit it again")

    def seal(self, data: dict[str, Any], max_age_s: int) -> str:
        """`data` signed (not encrypted: it holds nothing secret from its own browser) with an expiry."""
        body = base64.urlsafe_b64encode(json.dumps({**data, "exp": int(time.time()) + max_age_s}).encode())
        mac = hmac.new(self._seal, body, hashlib.sha256).hexdigest()
        return f"{body.decode()}.{mac}"

    def unseal(self, value: str | None) -> dict[str, Any] | None:
        if not value or "." not in value:
            return None
        body, mac = value.rsplit(".", 1)
        if not hmac.compare_digest(hmac.new(self._seal, body.encode(), hashlib.sha256).hexdigest(), mac):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(body.encode()))
        except ValueError:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("exp"), int) or data["exp"] < time.time():
            return None
        return data


def new_binding() -> str:
    return secrets.token_urlsafe(32)
