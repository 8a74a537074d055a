"""The console's cookies and its CSRF tokens.

- The session cookie holds the token `MemberService.open_session` made (its digest is the
  database row): HttpOnly, SameSite=Lax, Secure when the console is served over https, and it
  expires with the session.
- Before sign-in, a "pre-session" cookie binds the sign-in forms' CSRF token and the OpenID
  Connect round trip (state, nonce, PKCE verifier, sealed in a short-lived cookie). A fresh one
  is issued with every sign-in form, sealed by the server with an expiry and the address it was
  issued to: a value planted in a browser (cookie injection from a sibling host) is refused
  unless the server issued it to that browser's address, so a login CSRF cannot sign a victim
  in to the attacker's account with a pair the attacker obtained elsewhere.
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

    def pre_binding(self, ip: str | None, max_age_s: int = 3600) -> str:
        """A fresh pre-session value, bound to the address it is issued to."""
        return self.seal({"n": new_binding(), "ip": _address_tag(ip)}, max_age_s)

    def check_pre(self, binding: str | None, ip: str | None, presented: str | None) -> None:
        """403 unless `binding` is one this server issued to `ip`, unexpired, and `presented`
        is its CSRF token."""
        sealed = self.unseal(binding)
        if sealed is None or not hmac.compare_digest(str(sealed.get("ip")), _address_tag(ip)):
            raise Forbidden("missing or invalid CSRF token: reload the page and submit it again")
        self.check_csrf("pre:" + binding if binding else None, presented)

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


def _address_tag(ip: str | None) -> str:
    return hashlib.sha256((ip or "unknown").encode()).hexdigest()[:24]
