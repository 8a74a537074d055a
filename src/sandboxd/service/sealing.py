"""Secrets the server must use again later (a registry's password), encrypted at rest.

Unlike an API key, which is only ever compared (HMAC digest), these must be read back: they
are sealed with Fernet (AES-128-CBC + HMAC-SHA256) under a key derived from the data dir's
server secret, one key per purpose, so the database alone reveals nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from cryptography.fernet import Fernet, InvalidToken


class Sealer:
    def __init__(self, server_secret: bytes, purpose: str) -> None:
        key = hmac.new(server_secret, f"sandboxd seal: {purpose}".encode(), hashlib.sha256).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(key))

    def seal(self, plain: bytes) -> bytes:
        return self._fernet.encrypt(plain)

    def open(self, sealed: bytes) -> bytes | None:
        """The plain bytes, or None when they were sealed under another secret (or tampered)."""
        try:
            return self._fernet.decrypt(sealed)
        except InvalidToken:
            return None
