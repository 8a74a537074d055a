"""Webhook delivery claims on real SQLite: one of two servers wins a claim, an expired claim is
taken over (and its late holder records nothing), a stale read cannot claim again."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from sandboxd.ids import new_id, new_trace_id
from sandboxd.service.webhook_claims import Attempt, LeaseClaims
from sandboxd.store import Execution, Store, WebhookDelivery, create_engine, migrate, utcnow
from sandboxd.store.tables import webhook_deliveries


@pytest.fixture
async def stores(tmp_path: Path) -> AsyncIterator[tuple[Store, Store]]:
    """Two stores on one database file, each with its own engine: two server processes."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'sandboxd.db'}"
    first, second = Store(create_engine(url)), Store(create_engine(url))
    try:
        await migrate(first.engine)
        await first.orgs.add("org_c", "claims")
        yield first, second
    finally:
        await first.close()
        await second.close()


async def _delivery(store: Store) -> WebhookDelivery:
    trace_id, now = new_trace_id(), utcnow()
    await store.executions.add(Execution(
        trace_id=trace_id, org_id="org_c", key_id=None, language="bash", status="success",
        timeout_s=5, delivery_mode="webhook", created_at=now,
    ))
    delivery = WebhookDelivery(
        id=new_id("msg"), trace_id=trace_id, org_id="org_c", url="http://127.0.0.1:9/x", status="pending",
        attempts=0, next_attempt_at=now, last_error=None, created_at=now,
    )
    await store.webhooks.add_delivery(delivery)
    return delivery


async def test_of_two_servers_claiming_at_once_one_wins(stores: tuple[Store, Store]) -> None:
    a, b = LeaseClaims(stores[0], "node_a"), LeaseClaims(stores[1], "node_b")
    for _ in range(20):
        delivery = await _delivery(stores[0])
        won = await asyncio.gather(a.claim(delivery, for_s=60), b.claim(delivery, for_s=60))
        assert sorted(won) == [False, True]
    assert a.owner.startswith("node_a/") and b.owner.startswith("node_b/")


async def test_a_claim_holds_until_settled_then_the_next_attempt_is_claimable(stores: tuple[Store, Store]) -> None:
    a, b = LeaseClaims(stores[0], "node_a"), LeaseClaims(stores[1], "node_b")
    delivery = await _delivery(stores[0])
    assert await a.claim(delivery, for_s=60)
    assert not await b.claim(delivery, for_s=60)
    assert not await a.claim(delivery, for_s=60)  # not twice by one holder either
    retry_at = utcnow()
    assert await a.settle(delivery, Attempt("pending", 1, "HTTP 500", retry_at))
    stored = await stores[1].webhooks.delivery_for(delivery.trace_id)
    assert stored is not None and stored.claimed_by is None and stored.claim_expires_at is None
    assert (stored.attempts, stored.last_error) == (1, "HTTP 500")
    assert not await b.claim(delivery, for_s=60)  # the stale read (attempts 0) cannot
    assert await b.claim(stored, for_s=60)


async def test_a_delivery_not_yet_due_is_not_claimed(stores: tuple[Store, Store]) -> None:
    delivery = await _delivery(stores[0])
    later = replace(delivery, next_attempt_at=utcnow() + timedelta(minutes=5))
    async with stores[0].engine.begin() as conn:
        await conn.execute(webhook_deliveries.update().values(next_attempt_at=later.next_attempt_at))
    assert not await LeaseClaims(stores[0]).claim(later, for_s=60)


async def test_an_expired_claim_is_taken_over_and_its_late_holder_records_nothing(stores: tuple[Store, Store]) -> None:
    dead, b = LeaseClaims(stores[0], "node_a"), LeaseClaims(stores[1], "node_b")
    delivery = await _delivery(stores[0])
    assert await dead.claim(delivery, for_s=0.05)
    assert not await b.claim(delivery, for_s=60)
    await asyncio.sleep(0.1)
    assert await b.claim(delivery, for_s=60)
    assert not await dead.settle(delivery, Attempt("delivered", 1, None, utcnow()))
    assert await b.settle(delivery, Attempt("delivered", 1, None, utcnow()))
    stored = await stores[0].webhooks.delivery_for(delivery.trace_id)
    assert stored is not None and stored.status == "delivered" and stored.attempts == 1
    assert not await dead.claim(delivery, for_s=60)  # delivered: nobody claims it again


async def test_a_claim_given_back_unused_is_claimable_at_once_and_only_by_its_holder(
    stores: tuple[Store, Store],
) -> None:
    a, b = LeaseClaims(stores[0], "node_a"), LeaseClaims(stores[1], "node_b")
    delivery = await _delivery(stores[0])
    assert await a.claim(delivery, for_s=600)
    await b.free(delivery)  # not b's to give back
    assert not await b.claim(delivery, for_s=60)
    await a.free(delivery)  # a's attempt was abandoned (server stopping): nothing recorded
    stored = await stores[1].webhooks.delivery_for(delivery.trace_id)
    assert stored is not None and (stored.attempts, stored.status, stored.claimed_by) == (0, "pending", None)
    assert await b.claim(delivery, for_s=60)
