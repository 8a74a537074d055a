"""OpenID Connect sign-in with any standards-compliant provider (Authlib's OAuth 2 client).

Authorization code flow with PKCE (S256), a `state` and a `nonce`; the provider is found by
discovery (`<issuer>/.well-known/openid-configuration`); the ID token is verified against the
provider's JWKS (signature, `iss`, `aud`, `exp`, `nonce`) before any of its claims is believed.
The claims named by `oidc_org_claim` and `oidc_role_claim` give the member's organization and
role (MemberService.oidc_sign_in decides what they allow).
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.integrations.httpx_client import AsyncOAuth2Client
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from ..config import Settings
from ..errors import Forbidden, Unavailable

#: Discovery and keys are fetched again after this long (a provider rotates its keys).
_METADATA_TTL_S = 600
_ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]


@dataclass(frozen=True)
class Identity:
    #: "<issuer> <sub>": a `sub` is unique only at its provider.
    subject: str
    email: str
    org: str | None
    role: str | None
    #: The provider says it verified `email` (the `email_verified` claim).
    email_verified: bool = False


@dataclass(frozen=True)
class Started:
    """Where to send the browser, and what the callback must find again (kept in a sealed cookie)."""

    url: str
    state: str
    nonce: str
    verifier: str


class OidcClient:
    def __init__(self, settings: Settings) -> None:
        assert settings.oidc_issuer and settings.oidc_client_id
        self.issuer = settings.oidc_issuer.rstrip("/")
        self.client_id = settings.oidc_client_id
        self._secret: str | None = None
        if settings.oidc_client_secret_file is not None:
            try:
                self._secret = settings.oidc_client_secret_file.read_text().strip()
            except OSError as exc:
                raise RuntimeError(f"oidc_client_secret_file {settings.oidc_client_secret_file}: {exc.strerror}") from None
        self._scopes = settings.oidc_scopes
        self._org_claim = settings.oidc_org_claim
        self._role_claim = settings.oidc_role_claim
        self._metadata: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._fetched_at = 0.0
        self._lock = asyncio.Lock()

    def _client(self, redirect_uri: str) -> AsyncOAuth2Client:
        return AsyncOAuth2Client(
            client_id=self.client_id,
            client_secret=self._secret,
            scope=self._scopes,
            redirect_uri=redirect_uri,
            code_challenge_method="S256",
            token_endpoint_auth_method="client_secret_basic" if self._secret else "none",
            timeout=10,
        )

    async def _discover(self, *, refresh: bool = False) -> tuple[dict[str, Any], KeySet]:
        async with self._lock:
            fresh = time.monotonic() - self._fetched_at < _METADATA_TTL_S
            if self._metadata is None or self._keys is None or refresh or not fresh:
                try:
                    async with httpx.AsyncClient(timeout=10) as http:
                        answer = await http.get(f"{self.issuer}/.well-known/openid-configuration")
                        answer.raise_for_status()
                        metadata = answer.json()
                        if metadata.get("issuer", "").rstrip("/") != self.issuer:
                            raise Unavailable("the identity provider's discovery document names another issuer")
                        keys = await http.get(metadata["jwks_uri"])
                        keys.raise_for_status()
                        self._keys = KeySet.import_key_set(keys.json())
                except (httpx.HTTPError, KeyError, ValueError) as exc:
                    raise Unavailable(f"the identity provider cannot be reached: {exc}") from None
                self._metadata = metadata
                self._fetched_at = time.monotonic()
            assert self._metadata is not None and self._keys is not None
            return self._metadata, self._keys

    async def start(self, redirect_uri: str) -> Started:
        metadata, _ = await self._discover()
        state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
        async with self._client(redirect_uri) as client:
            url, _ = client.create_authorization_url(
                metadata["authorization_endpoint"], state=state, nonce=nonce, code_verifier=verifier
            )
        return Started(url=url, state=state, nonce=nonce, verifier=verifier)

    async def finish(self, redirect_uri: str, code: str, *, nonce: str, verifier: str) -> Identity:
        """Exchange the code (with the PKCE verifier) and verify the ID token; 403 when it fails."""
        metadata, keys = await self._discover()
        async with self._client(redirect_uri) as client:
            try:
                token = await client.fetch_token(
                    metadata["token_endpoint"], grant_type="authorization_code", code=code, code_verifier=verifier
                )
            except (httpx.HTTPError, ValueError) as exc:
                raise Forbidden(f"the identity provider refused the sign-in: {exc}") from None
            except Exception as exc:  # authlib's OAuthError and its kin
                raise Forbidden(f"the identity provider refused the sign-in: {exc}") from None
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise Forbidden("the identity provider sent no ID token")
        claims = await self._verify(id_token, keys, nonce)
        org = claims.get(self._org_claim)
        role = claims.get(self._role_claim)
        email = claims.get("email")
        return Identity(
            subject=f"{self.issuer} {claims['sub']}",
            email=email if isinstance(email, str) else "",
            org=org if isinstance(org, str) and org else None,
            role=role if isinstance(role, str) and role else None,
            email_verified=claims.get("email_verified") is True,
        )

    async def _verify(self, id_token: str, keys: KeySet, nonce: str) -> dict[str, Any]:
        try:
            try:
                decoded = jwt.decode(id_token, keys, algorithms=_ALGORITHMS)
            except JoseError:  # perhaps a rotated key: fetch the JWKS again, once
                _, keys = await self._discover(refresh=True)
                decoded = jwt.decode(id_token, keys, algorithms=_ALGORITHMS)
            jwt.JWTClaimsRegistry(
                iss={"essential": True, "value": self.issuer},
                aud={"essential": True, "value": self.client_id},
                sub={"essential": True},
                exp={"essential": True},
                nonce={"essential": True, "value": nonce},
            ).validate(decoded.claims)
        except (JoseError, ValueError) as exc:
            raise Forbidden(f"the identity provider's ID token is not valid: {exc}") from None
        return dict(decoded.claims)
