"""Signed tokens for file URLs: the token in `/v1/files/blob/<token>` is the whole authority.

    token = base64url(JSON claims) "." base64url(HMAC-SHA256(key, DOMAIN + base64url(claims)))

A token binds the method (GET or PUT), the source and id, the organization, the API key that
asked for it (its id, never the key), the path and an expiry; an upload token also binds the
exact byte count and the content type. The key id lets the blob handlers check at use that the
key is still active and still allowed (service/files.py), so a revocation ends its URLs at
once instead of after their hour. Tokens of version 1 named no key and are refused. The MAC is
checked (in constant time) before anything in the payload is trusted or even decoded, so a
tampered, expired or wrong-method token is refused with the same 403 and no detail leaks.
The payload is signed, not encrypted: it holds nothing the holder of the URL may not know.

Artifact URLs (service/artifacts.py) are signed by the same key under another domain, so no
file token can pass for an artifact signature or the other way round: the signature covers the
organization, the trace id, the path and the expiry, and the URL carries the last three in the
clear (`/v1/artifacts/<trace_id>/<path>?expires=<unix>&signature=<mac>`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import Forbidden
from .storage_kind import StorageKind

_DOMAIN = b"sandboxd-files-v1."
_ARTIFACT_DOMAIN = b"sandboxd-artifacts-v1."
_VERSION = 2  # 2: the key id is a claim
_B64 = re.compile(r"^[A-Za-z0-9_-]+$")
MAX_TOKEN_CHARS = 8192
METHODS = ("GET", "PUT")


@dataclass(frozen=True)
class Claims:
    """What a file URL allows: one method on one file of one thread or volume, until `expires`,
    for as long as the key `key_id` may do it."""

    method: str  # "GET" or "PUT"
    source: StorageKind
    org_id: str
    key_id: str  # the API key that asked for the URL
    id: str  # the thread_id or the volume slug
    path: str  # normalized, relative to the storage root
    expires: int  # Unix seconds
    content_length: int | None = None  # PUT: the exact byte count
    content_type: str | None = None  # PUT


def files_signing_key(server_secret: bytes) -> bytes:
    """The file-URL key, derived from the server secret (so it is never the key-hashing pepper itself)."""
    return hmac.new(server_secret, b"sandboxd file URL signing v1", hashlib.sha256).digest()


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Signer:
    def __init__(self, key: bytes, *, clock: Callable[[], float] = time.time) -> None:
        if not isinstance(key, bytes) or len(key) < 16:
            raise ValueError("the signing key must be at least 16 bytes")
        self._key = key
        self._clock = clock

    def now(self) -> float:
        return self._clock()

    def _mac(self, payload: str) -> str:
        return _b64encode(hmac.new(self._key, _DOMAIN + payload.encode("ascii"), hashlib.sha256).digest())

    def sign(self, claims: Claims) -> str:
        if claims.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}")
        if not claims.key_id:
            raise ValueError("a file URL is signed for an API key")
        body = {"v": _VERSION, **{k: v for k, v in asdict(claims).items() if v is not None}}
        payload = _b64encode(json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8"))
        return f"{payload}.{self._mac(payload)}"

    def verify(self, token: str, method: str) -> Claims:
        """The claims of a genuine, unexpired token for `method`; Forbidden otherwise."""
        refused = Forbidden("this file URL is invalid or has expired; request a new one")
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
            raise refused
        payload, dot, mac = token.partition(".")
        if not dot or not _B64.fullmatch(payload) or not _B64.fullmatch(mac):
            raise refused
        if not hmac.compare_digest(mac.encode("ascii"), self._mac(payload).encode("ascii")):
            raise refused
        try:
            body: Any = json.loads(_b64decode(payload))
            if not isinstance(body, dict) or body.pop("v", None) != _VERSION:
                raise refused
            claims = Claims(**{**body, "source": StorageKind(body.get("source", ""))})
        except (ValueError, TypeError, binascii.Error):  # only a key holder could get here
            raise refused from None
        if not isinstance(claims.key_id, str) or not claims.key_id:
            raise refused
        if not isinstance(claims.expires, int) or self._clock() >= claims.expires:
            raise refused
        if claims.method != method:
            raise Forbidden(f"this file URL is for {claims.method}, not {method}")
        return claims

    def artifact_signature(self, org_id: str, trace_id: str, path: str, expires: int) -> str:
        """The signature of an artifact URL (service/artifacts.py)."""
        fields = json.dumps([org_id, trace_id, path, int(expires)], separators=(",", ":"))
        return _b64encode(hmac.new(self._key, _ARTIFACT_DOMAIN + fields.encode("utf-8"), hashlib.sha256).digest())

    def verify_artifact(self, org_id: str, trace_id: str, path: str, expires: int, signature: str) -> None:
        """Forbidden unless `signature` is genuine for these values and `expires` is to come."""
        refused = Forbidden("this artifact URL is invalid or has expired")
        if not isinstance(signature, str) or len(signature) > 128 or not _B64.fullmatch(signature):
            raise refused
        expected = self.artifact_signature(org_id, trace_id, path, expires)
        if not hmac.compare_digest(signature.encode("ascii"), expected.encode("ascii")):
            raise refused
        if self._clock() >= expires:
            raise refused
