"""The event log behind every NDJSON stream: numbering, replay, following, closing."""

from __future__ import annotations

import asyncio

import pytest

from sandboxd.bus import Event, EventLog


async def collect(log: EventLog, after_seq: int = 0, timeout: float = 5) -> list[Event]:
    """Follow until the iterator ends; fail (instead of hanging) if it does not end in time."""
    events: list[Event] = []

    async def go() -> None:
        async for event in log.follow(after_seq):
            events.append(event)

    try:
        await asyncio.wait_for(go(), timeout)
    except TimeoutError:
        pytest.fail(f"follow(after_seq={after_seq}) did not end; got {[e.seq for e in events]}")
    return events


async def filled(n_outputs: int = 3, *, close: bool = True) -> EventLog:
    log = EventLog()
    await log.append("status", trace_id="trc_x", status="queued")
    await log.append("status", trace_id="trc_x", status="running")
    for i in range(n_outputs):
        await log.append("output", stream="stdout", data=f"line {i}\n")
    if close:
        await log.append(
            "result", trace_id="trc_x", status="success",
            result={"success": True, "stdout": "", "stderr": "", "exit_code": 0, "error": None},
            output_truncated=False,
        )
    return log


async def test_seq_starts_at_one_and_increases_by_one() -> None:
    log = EventLog()
    returned = [await log.append("status", trace_id="trc_a", status="queued")]
    returned.append(await log.append("output", stream="stdout", data="a"))
    returned.append(await log.append("keepalive"))
    returned.append(await log.append("output", stream="stderr", data="b"))
    assert [e.seq for e in returned] == [1, 2, 3, 4]
    assert [e.seq for e in log.events] == [1, 2, 3, 4]
    assert [e.type for e in log.events] == ["status", "output", "keepalive", "output"]
    assert log.events == returned


async def test_event_json_shape_and_round_trip() -> None:
    log = EventLog()
    event = await log.append("output", stream="stdout", data="hi\n")
    assert event.to_json() == {"type": "output", "stream": "stdout", "data": "hi\n", "seq": 1}
    keepalive = await log.append("keepalive")
    assert keepalive.to_json() == {"type": "keepalive", "seq": 2}
    assert Event.from_json(event.to_json()) == event
    assert Event.from_json(keepalive.to_json()) == keepalive


async def test_events_is_a_copy() -> None:
    log = await filled(1, close=False)
    snapshot = log.events
    snapshot.clear()
    assert len(log.events) == 3


async def test_closed_only_by_result_and_append_after_result_refused() -> None:
    log = await filled(2, close=False)
    assert not log.closed
    await log.append("keepalive")
    assert not log.closed
    await log.append("result", trace_id="trc_x", status="failed", result={}, output_truncated=False)
    assert log.closed
    before = log.events
    for kind in ("output", "keepalive", "status", "result"):
        with pytest.raises(RuntimeError):
            await log.append(kind)  # type: ignore[arg-type]
    assert log.events == before


async def test_empty_log_is_not_closed() -> None:
    assert EventLog().closed is False


@pytest.mark.parametrize("after_seq", [0, 1, 2, 3, 5])
async def test_follow_from_any_point_of_a_closed_log(after_seq: int) -> None:
    log = await filled(3)  # seqs 1..6, 6 is the result
    events = await collect(log, after_seq)
    assert [e.seq for e in events] == list(range(after_seq + 1, 7))
    assert events[-1].type == "result"
    assert events == log.events[after_seq:]


async def test_follow_with_negative_after_seq_is_from_the_start() -> None:
    log = await filled(1)
    assert await collect(log, -5) == log.events


async def test_follow_waits_for_live_events_and_ends_at_result() -> None:
    log = await filled(1, close=False)  # seqs 1..3
    seen: list[Event] = []
    ended = asyncio.Event()

    async def follower() -> None:
        async for event in log.follow(1):
            seen.append(event)
        ended.set()

    task = asyncio.create_task(follower())
    try:
        for _ in range(50):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.01)
        assert [e.seq for e in seen] == [2, 3]
        await asyncio.sleep(0.1)
        assert not ended.is_set(), "follow ended before the result event"
        await log.append("output", stream="stdout", data="live\n")
        await log.append("keepalive")
        await asyncio.wait_for(_until(lambda: len(seen) == 4), 5)
        assert [(e.seq, e.type) for e in seen[2:]] == [(4, "output"), (5, "keepalive")]
        assert not ended.is_set()
        await log.append("result", trace_id="trc_x", status="success", result={}, output_truncated=False)
        await asyncio.wait_for(ended.wait(), 5)
        assert [e.seq for e in seen] == [2, 3, 4, 5, 6]
        assert seen[-1].type == "result"
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_followers_see_the_same_events() -> None:
    log = EventLog()
    await log.append("status", trace_id="trc_y", status="queued")
    early = asyncio.create_task(collect(log, 0, timeout=10))
    await asyncio.sleep(0)
    mid: asyncio.Task[list[Event]] | None = None
    for i in range(20):
        await log.append("output", stream="stdout" if i % 2 else "stderr", data=str(i))
        if i == 9:
            mid = asyncio.create_task(collect(log, 0, timeout=10))
        if i % 5 == 0:
            await asyncio.sleep(0)
    late_from_7 = asyncio.create_task(collect(log, 7, timeout=10))
    await asyncio.sleep(0)
    await log.append("result", trace_id="trc_y", status="success", result={}, output_truncated=False)
    assert mid is not None
    a, b, c = await asyncio.gather(early, mid, late_from_7)
    assert a == b == log.events
    assert [e.seq for e in a] == list(range(1, 23))
    assert c == log.events[7:]


async def test_follow_after_the_result_ends_at_once() -> None:
    """A reconnect with after_seq = the result's seq (the client saw everything) must end."""
    log = await filled(1)  # seqs 1..4
    assert await collect(log, 4, timeout=3) == []


async def test_follow_from_beyond_the_end_ends_when_the_log_closes() -> None:
    """after_seq past the last event of a live log: nothing to send, but the result still ends it."""
    log = await filled(1, close=False)  # seqs 1..3
    follower = asyncio.create_task(collect(log, 50, timeout=3))
    await asyncio.sleep(0.05)
    await log.append("result", trace_id="trc_x", status="success", result={}, output_truncated=False)
    assert await follower == []


async def test_last_append_moves_on_every_append() -> None:
    log = EventLog()
    first = log.last_append
    await asyncio.sleep(0.01)
    await log.append("keepalive")
    assert log.last_append > first


async def _until(predicate) -> None:  # type: ignore[no-untyped-def]
    while not predicate():
        await asyncio.sleep(0.01)
