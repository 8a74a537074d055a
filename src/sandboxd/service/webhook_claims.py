"""Webhook delivery claims: one server process attempts a delivery at a time, so servers that
share one database never deliver the same webhook twice.

Today's implementation is a lease in the delivery's row: a conditional UPDATE takes it only
while it is free or expired, so of two servers claiming at once one wins (SQLite and
PostgreSQL alike), and recording the attempt frees it. A server that dies mid-attempt leaves
its lease to expire; then another server (or its own restart) takes the delivery over.
Leases compare one server's clock with another's: keep the servers' clocks in sync (NTP).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from ..ids import random_token
from ..store import Store, WebhookDelivery, utcnow


@dataclass(frozen=True)
class Attempt:
    """What one delivery attempt left: the delivery's new state."""

    status: str  # pending (retried at next_attempt_at), delivered or failed
    attempts: int
    last_error: str | None
    next_attempt_at: datetime


class DeliveryClaims(Protocol):
    async def claim(self, delivery: WebhookDelivery, *, for_s: float) -> bool:
        """True: this process may attempt `delivery`, as read, and no other may for `for_s`
        seconds or until `settle`. False: it is another's, or changed since it was read."""

    async def settle(self, delivery: WebhookDelivery, attempt: Attempt) -> bool:
        """Record the attempt and free the claim; False (nothing recorded) when the claim
        expired and another process took the delivery over."""

    async def free(self, delivery: WebhookDelivery) -> None:
        """Give the claim back unused (an attempt abandoned before it was recorded), so the
        delivery is retried at once rather than when the claim expires."""


class LeaseClaims:
    """Claims as leases in `webhook_deliveries` (claimed_by, claim_expires_at)."""

    def __init__(self, store: Store, node_id: str | None = None) -> None:
        self._store = store
        # One owner per process, not per node: a restarted server does not take over its
        # predecessor's unexpired leases as if they were its own.
        self.owner = f"{node_id}/{random_token(8)}" if node_id else random_token(8)

    async def claim(self, delivery: WebhookDelivery, *, for_s: float) -> bool:
        now = utcnow()
        return await self._store.webhooks.claim(
            delivery.id, attempts=delivery.attempts, owner=self.owner, now=now, until=now + timedelta(seconds=for_s)
        )

    async def settle(self, delivery: WebhookDelivery, attempt: Attempt) -> bool:
        return await self._store.webhooks.settle(
            delivery.id, owner=self.owner, status=attempt.status, attempts=attempt.attempts,
            last_error=attempt.last_error, next_attempt_at=attempt.next_attempt_at,
        )

    async def free(self, delivery: WebhookDelivery) -> None:
        await self._store.webhooks.settle(delivery.id, owner=self.owner)
