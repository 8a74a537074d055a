"""Webhook mode: per-organization signing secrets and signed, retried, restart-safe deliveries.

Deliveries follow the Standard Webhooks spec (`webhook-id`, `webhook-timestamp`,
`webhook-signature: v1,<base64 HMAC-SHA256>`), so receivers verify with the reference
libraries. A delivery row is written when the execution is submitted and sent when the
execution is terminal; a failed attempt is retried with exponential backoff up to a bound.
Pending rows are picked up again after a restart. Signing secrets are stored encrypted
(Fernet, keyed from the server secret) and shown once, when created or rotated. An attempt
is made under a claim (service/webhook_claims.py), so servers sharing one database never
attempt the same delivery at once.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import secrets
from datetime import timedelta
from typing import TYPE_CHECKING

import structlog
from cryptography.fernet import Fernet
from standardwebhooks import Webhook

from ..errors import Forbidden, InvalidRequest
from ..ids import new_id
from ..observability import Metrics
from ..store import Store, WebhookDelivery, utcnow
from .documents import execution_document
from .url_guard import UrlGuard
from .webhook_claims import Attempt, DeliveryClaims, LeaseClaims

if TYPE_CHECKING:
    import httpx

log = logging.getLogger("sandboxd.webhooks")

TERMINAL = frozenset({"success", "failed", "timeout", "cancelled", "blocked", "oom", "seccomp", "deepguard"})


class WebhookService:
    def __init__(
        self,
        store: Store,
        pepper: bytes,
        guard: UrlGuard,
        *,
        max_attempts: int = 5,
        backoff_s: float = 2.0,
        timeout_s: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: Metrics | None = None,
        claims: DeliveryClaims | None = None,
    ) -> None:
        self._deliveries = (metrics or Metrics()).webhook_deliveries
        self._store = store
        self._claims = claims or LeaseClaims(store)
        self._fernet = Fernet(base64.urlsafe_b64encode(hashlib.sha256(b"sandboxd/webhook-secrets/v1" + pepper).digest()))
        self.guard = guard
        self._max_attempts = max_attempts
        self._backoff_s = backoff_s
        self._timeout_s = timeout_s
        # An attempt (secret, DNS, connect, send, answer) is cut off at its budget, well within
        # its claim, so no other server takes the delivery over while it is still being sent.
        self._attempt_s = 3 * timeout_s + 30
        self._claim_s = self._attempt_s + 30
        self._transport = transport
        self._wake = asyncio.Event()
        self._worker: asyncio.Task[None] | None = None

    # --- secrets ---------------------------------------------------------------------------

    async def create_secret(self, org_id: str, *, rotate: bool = False) -> str:
        """A new `whsec_...` secret for the org; refuses to replace one unless rotating."""
        if not rotate and await self._store.webhooks.secret(org_id) is not None:
            raise InvalidRequest("this organization already has a webhook secret; use --rotate to replace it")
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        await self._store.webhooks.set_secret(org_id, self._fernet.encrypt(secret.encode()).decode())
        return secret

    async def _signer(self, org_id: str) -> Webhook | None:
        ciphertext = await self._store.webhooks.secret(org_id)
        if ciphertext is None:
            return None
        return Webhook(self._fernet.decrypt(ciphertext.encode()).decode())

    async def check_request(self, org_id: str, url: str) -> None:
        """At submit time: the URL passes the guard's static checks and the org can sign."""
        self.guard.check_url(url)
        if await self._store.webhooks.secret(org_id) is None:
            raise InvalidRequest(
                "webhook_url needs a webhook signing secret for your organization; "
                "an administrator creates one with: sandboxd webhooks secret"
            )

    async def register(self, trace_id: str, org_id: str, url: str) -> None:
        now = utcnow()
        await self._store.webhooks.add_delivery(
            WebhookDelivery(
                id=new_id("msg"), trace_id=trace_id, org_id=org_id, url=url, status="pending",
                attempts=0, next_attempt_at=now, last_error=None, created_at=now,
            )
        )

    # --- the delivery worker -----------------------------------------------------------------

    def start(self) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name="webhook-deliveries")

    async def stop(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
            self._worker = None

    def kick(self) -> None:
        """An execution ended: look for due deliveries now."""
        self._wake.set()

    async def _work(self) -> None:
        while True:
            self._wake.clear()
            wait_s = 5.0
            try:
                now = utcnow()
                for delivery in await self._store.webhooks.pending():
                    if delivery.next_attempt_at > now:
                        wait_s = min(wait_s, (delivery.next_attempt_at - now).total_seconds())
                        continue
                    execution = await self._store.executions.get(delivery.trace_id)
                    if execution is None or execution.status not in TERMINAL:
                        continue
                    if not await self._claims.claim(delivery, for_s=self._claim_s):
                        continue  # another server is attempting it, or just did
                    try:
                        with structlog.contextvars.bound_contextvars(trace_id=delivery.trace_id):
                            await self._attempt(delivery, execution_document(execution))
                    except BaseException:  # stopped or failed before the attempt was recorded
                        with contextlib.suppress(Exception):
                            await asyncio.shield(self._claims.free(delivery))
                        raise
                    wait_s = 0
            except asyncio.CancelledError:
                raise
            except Exception:  # never let one bad row stop deliveries
                log.exception("webhook worker error")
            if wait_s > 0:
                # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel (stop())
                # that races with the wake-up.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(wait_s, 0.01)):
                        await self._wake.wait()

    async def _attempt(self, delivery: WebhookDelivery, document: dict[str, object]) -> None:
        attempts = delivery.attempts + 1
        try:
            async with asyncio.timeout(self._attempt_s):
                error = await self._send(delivery, document)
        except TimeoutError:
            error = f"TimeoutError: the attempt took longer than {self._attempt_s:g} s"
        if error is None:
            status = "delivered"
        elif attempts >= self._max_attempts or error.startswith("refused"):
            status = "failed"
        else:
            status = "pending"
        self._deliveries.labels("retrying" if status == "pending" else status).inc()
        next_at = utcnow() + timedelta(seconds=self._backoff_s * 2 ** (attempts - 1))
        if not await self._claims.settle(delivery, Attempt(status, attempts, error, next_at)):
            log.warning("webhook %s: its claim expired during attempt %d; another server took it over",
                        delivery.id, attempts)
            return
        await self._store.executions.update(
            delivery.trace_id, webhook_delivery_status=status, webhook_attempts=attempts
        )
        if error is not None:
            log.warning("webhook %s attempt %d for %s: %s", delivery.id, attempts, delivery.trace_id, error)

    async def _send(self, delivery: WebhookDelivery, document: dict[str, object]) -> str | None:
        """One signed POST to the checked address; returns None on a 2xx, else why not."""
        signer = await self._signer(delivery.org_id)
        if signer is None:
            return "refused: the organization has no webhook secret"
        try:
            target = await self.guard.resolve(delivery.url)
        except (Forbidden, InvalidRequest) as exc:
            return f"refused: {exc.message}"
        document = {**document, "webhook_delivery_status": "pending", "webhook_attempts": delivery.attempts + 1}
        body = json.dumps(document, separators=(",", ":"))
        sent_at = utcnow()
        headers = {
            "content-type": "application/json",
            "user-agent": "sandboxd-webhooks",
            "host": target.host_header,
            "webhook-id": delivery.id,
            "webhook-timestamp": str(int(sent_at.timestamp())),
            "webhook-signature": signer.sign(delivery.id, sent_at, body),
        }
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        import httpx  # the server's deliveries only: not at import (tests/unit/test_lazy_imports.py)

        try:
            async with httpx.AsyncClient(transport=self._transport, timeout=self._timeout_s) as client:
                response = await client.post(
                    target.pinned_url, content=body.encode(), headers=headers, extensions=extensions
                )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"[:500]
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"
