"""Two servers on one database, on SQLite and on a real PostgreSQL: two webhook workers deliver
each webhook exactly once to one receiver on 127.0.0.1, a delivery whose claim expired (its
server died) is taken over, and a restarting node recovers only its own unfinished executions.

No sandbox is needed: each "server" is the services over its own engine, in this process.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest_pg import pg_database_url, pg_server

from sandboxd.ids import new_trace_id
from sandboxd.service.recovery import NodeRecovery
from sandboxd.service.url_guard import UrlGuard
from sandboxd.service.webhook_claims import LeaseClaims
from sandboxd.service.webhooks import WebhookService
from sandboxd.store import Execution, Store, create_engine, migrate, utcnow

__all__ = ["pg_database_url", "pg_server"]  # fixtures, imported so pytest finds them here

PEPPER = bytes(range(32))  # servers sharing a database share the server secret


class Receiver:
    """Counts each webhook-id it is sent; answers 200 after a short delay, so that two workers'
    attempts overlap."""

    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                time.sleep(0.02)
                receiver.ids[self.headers["webhook-id"]] += 1
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"

    def serve(self) -> None:
        self.httpd.serve_forever(poll_interval=0.05)

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    import threading

    r = Receiver()
    thread = threading.Thread(target=r.serve, daemon=True)
    thread.start()
    try:
        yield r
    finally:
        r.close()
        thread.join(10)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_database_url"))
    return f"sqlite+aiosqlite:///{tmp_path / 'sandboxd.db'}"


@pytest.fixture
async def stores(database_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """Two servers' stores: one database, an engine each."""
    first, second = Store(create_engine(database_url)), Store(create_engine(database_url))
    try:
        await migrate(first.engine)
        await first.orgs.add("org_n", "nodes")
        yield first, second
    finally:
        await first.close()
        await second.close()


def _webhooks(store: Store, node_id: str) -> WebhookService:
    return WebhookService(
        store, PEPPER, UrlGuard(allow_insecure=True), backoff_s=0.1, timeout_s=5,
        claims=LeaseClaims(store, node_id),
    )


async def _finished_with_webhook(store: Store, webhooks: WebhookService, url: str) -> str:
    trace_id = new_trace_id()
    await store.executions.add(Execution(
        trace_id=trace_id, org_id="org_n", key_id=None, language="bash", status="success", exit_code=0,
        timeout_s=5, delivery_mode="webhook", created_at=utcnow(), completed_at=utcnow(),
        webhook_url=url, webhook_delivery_status="pending",
    ))
    await webhooks.register(trace_id, "org_n", url)
    return trace_id


async def _delivered(store: Store, trace_ids: list[str], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    for trace_id in trace_ids:
        while (d := await store.webhooks.delivery_for(trace_id)) is None or d.status != "delivered":
            assert time.monotonic() < deadline, d
            await asyncio.sleep(0.05)


async def test_two_servers_deliver_each_webhook_exactly_once(
    stores: tuple[Store, Store], receiver: Receiver
) -> None:
    a, b = _webhooks(stores[0], "node_a"), _webhooks(stores[1], "node_b")
    await a.create_secret("org_n")
    trace_ids = [await _finished_with_webhook(stores[0], a, receiver.url) for _ in range(30)]
    a.start()
    b.start()
    try:
        await _delivered(stores[0], trace_ids)
        await asyncio.sleep(0.5)  # a duplicate attempt, if any, would land meanwhile
    finally:
        await a.stop()
        await b.stop()
    ids = {(await stores[0].webhooks.delivery_for(t)).id for t in trace_ids}  # type: ignore[union-attr]
    assert set(receiver.ids) == ids
    assert set(receiver.ids.values()) == {1}, [i for i, n in receiver.ids.items() if n > 1]
    for trace_id in trace_ids:
        row = await stores[1].executions.get(trace_id)
        assert row is not None and (row.webhook_delivery_status, row.webhook_attempts) == ("delivered", 1)
        delivery = await stores[1].webhooks.delivery_for(trace_id)
        assert delivery is not None and delivery.claimed_by is None and delivery.claim_expires_at is None


async def test_a_dead_servers_claim_expires_and_another_delivers(
    stores: tuple[Store, Store], receiver: Receiver
) -> None:
    b = _webhooks(stores[1], "node_b")
    await b.create_secret("org_n")
    trace_id = await _finished_with_webhook(stores[0], b, receiver.url)
    delivery = await stores[0].webhooks.delivery_for(trace_id)
    assert delivery is not None
    assert await LeaseClaims(stores[0], "node_a").claim(delivery, for_s=1.5)  # then node_a dies
    started = time.monotonic()
    b.start()
    try:
        await _delivered(stores[1], [trace_id])
    finally:
        await b.stop()
    assert time.monotonic() - started >= 1.0  # not before node_a's claim expired
    assert receiver.ids == Counter({delivery.id: 1})


async def test_a_restarting_node_recovers_only_its_own_executions(stores: tuple[Store, Store]) -> None:
    async def running(store: Store, node_id: str | None) -> str:
        trace_id = new_trace_id()
        await store.executions.add(Execution(
            trace_id=trace_id, org_id="org_n", key_id=None, language="bash", status="running",
            timeout_s=5, delivery_mode="sync", created_at=utcnow(), node_id=node_id,
        ))
        return trace_id

    mine = [await running(stores[0], "node_a") for _ in range(2)]
    legacy = await running(stores[0], None)
    theirs = [await running(stores[1], "node_b") for _ in range(2)]
    assert await NodeRecovery(stores[0], "node_a").recover() == 3  # node_a restarts
    for trace_id in [*mine, legacy]:
        assert (await stores[1].executions.get(trace_id)).error == "interrupted"  # type: ignore[union-attr]
    for trace_id in theirs:
        assert (await stores[1].executions.get(trace_id)).status == "running"  # type: ignore[union-attr]
