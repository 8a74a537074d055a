"""The event log behind every NDJSON stream: numbering, replay, following, closing; storing it
as it goes; output events coalesced by time and size, and capped."""

from __future__ import annotations

import asyncio
import time

import pytest

from sandboxd.bus import Event, EventLog, OutputEvents


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


# --- durability: a log with a writer -----------------------------------------------------------


class Recorder:
    """A writer that records each batch; `fail` makes the next writes raise."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.fail = False

    async def __call__(self, events: list[Event]) -> None:
        if self.fail:
            raise OSError("database is gone")
        self.batches.append([e.seq for e in events])

    @property
    def stored(self) -> list[int]:
        return [seq for batch in self.batches for seq in batch]


async def test_a_short_run_without_follower_writes_once_at_close() -> None:
    store, final = Recorder(), Recorder()
    log = EventLog(store, flush_interval_s=0.2)
    await log.append("status", trace_id="trc_x", status="queued")
    await log.append("output", stream="stdout", data="hi\n")
    await log.close(final, trace_id="trc_x", status="success", result={}, output_truncated=False)
    await asyncio.sleep(0.3)
    assert store.batches == []
    assert final.batches == [[1, 2, 3]]


async def test_a_follower_sees_only_stored_events() -> None:
    store, final = Recorder(), Recorder()
    log = EventLog(store, flush_interval_s=0.05)
    await log.append("status", trace_id="trc_x", status="queued")
    seen: list[int] = []

    async def follower() -> None:
        async for event in log.follow(0):
            assert event.seq in store.stored + final.stored, "shown before it was stored"
            seen.append(event.seq)

    task = asyncio.create_task(follower())
    await asyncio.wait_for(_until(lambda: seen == [1]), 5)
    started = time.monotonic()
    for i in range(30):
        await log.append("output", stream="stdout", data=str(i))
        await asyncio.sleep(0.005)
    await asyncio.wait_for(_until(lambda: len(seen) == 31), 5)
    elapsed = time.monotonic() - started
    await log.close(final, trace_id="trc_x", status="success", result={}, output_truncated=False)
    await asyncio.wait_for(task, 5)
    assert seen == list(range(1, 33))
    # 31 events over ~150 ms: a burst, then one write per interval, never one per event
    assert len(store.batches) <= 3 + elapsed / 0.05 + 2, (elapsed, store.batches)
    assert store.stored == list(range(1, 32))


async def test_a_long_run_is_stored_without_a_follower() -> None:
    store = Recorder()
    log = EventLog(store, flush_interval_s=0.05)
    await log.append("status", trace_id="trc_x", status="queued")
    await log.append("output", stream="stdout", data="a")
    await asyncio.wait_for(_until(lambda: store.stored == [1, 2]), 5)
    await log.append("output", stream="stdout", data="b")
    await asyncio.wait_for(_until(lambda: store.stored == [1, 2, 3]), 5)
    final = Recorder()
    await log.close(final, trace_id="trc_x", status="success", result={}, output_truncated=False)
    assert final.batches == [[4]]  # only what was not stored yet


async def test_a_failed_write_is_retried_and_close_still_ends_followers() -> None:
    store = Recorder()
    store.fail = True
    log = EventLog(store, flush_interval_s=0.02)
    await log.append("status", trace_id="trc_x", status="queued")
    follower = asyncio.create_task(collect(log, 0))
    await asyncio.sleep(0.1)
    assert not follower.done()
    store.fail = False
    await asyncio.wait_for(_until(lambda: store.stored == [1]), 5)
    broken = Recorder()
    broken.fail = True
    with pytest.raises(OSError):
        await log.close(broken, trace_id="trc_x", status="failed", result={}, output_truncated=False)
    assert [e.seq for e in await follower] == [1, 2]


# --- output events: coalescing by time and size, capped ---------------------------------------


async def outputs(log: EventLog) -> list[tuple[str, str]]:
    return [(e.body["stream"], e.body["data"]) for e in log.events if e.type == "output"]


async def test_the_first_bytes_are_an_event_at_once() -> None:
    log = EventLog()
    out = OutputEvents(log, interval_s=10)
    await out.write("stdout", b"first")
    assert await outputs(log) == [("stdout", "first")]


async def test_a_byte_at_a_time_makes_one_event_per_interval() -> None:
    log = EventLog()
    out = OutputEvents(log, interval_s=0.05)
    started = time.monotonic()
    while time.monotonic() - started < 0.5:
        await out.write("stdout", b"x")
        await asyncio.sleep(0.0005)
    await out.drain()
    events = await outputs(log)
    written = "".join(d for _, d in events)
    assert set(written) == {"x"} and len(written) > 100
    assert 5 <= len(events) <= 0.5 / 0.05 + 3, len(events)


async def test_waiting_bytes_go_out_within_the_interval_without_more_writes() -> None:
    log = EventLog()
    out = OutputEvents(log, interval_s=0.05)
    await out.write("stdout", b"a")
    await out.write("stdout", b"b")
    await out.write("stderr", b"e")
    assert await outputs(log) == [("stdout", "a")]
    await asyncio.wait_for(_until(lambda: len(log.events) == 3), 2)
    assert await outputs(log) == [("stdout", "a"), ("stdout", "b"), ("stderr", "e")]


async def test_size_sends_an_event_early_and_bounds_it() -> None:
    log = EventLog()
    out = OutputEvents(log, interval_s=10, max_bytes=1024)
    await out.write("stdout", b"0")
    for _ in range(10):
        await out.write("stdout", b"y" * 300)
    sizes = [len(d) for _, d in await outputs(log)]
    assert sizes[0] == 1 and all(s <= 1024 for s in sizes) and len(sizes) >= 3
    await out.drain()
    assert sum(len(d) for _, d in await outputs(log)) == 3001


async def test_a_character_split_between_reads_is_not_broken() -> None:
    log = EventLog()
    out = OutputEvents(log, interval_s=0)
    encoded = "é€😀\x00".encode()
    for i in range(len(encoded)):
        await out.write("stdout", encoded[i:i + 1])
    await out.write("stderr", b"\xff")  # invalid bytes become U+FFFD
    await out.drain()
    events = await outputs(log)
    assert "".join(d for s, d in events if s == "stdout") == "é€😀\x00"
    assert all(d for _, d in events)
    assert [d for s, d in events if s == "stderr"] == ["\ufffd"]


async def test_output_events_are_capped() -> None:
    log = EventLog()
    out = OutputEvents(log, interval_s=0, max_events=3)
    for i in range(10):
        await out.write("stdout", f"{i}".encode())
    await out.drain()
    assert [d for _, d in await outputs(log)] == ["0", "1", "2"]
    assert out.capped


async def test_drain_waits_for_a_round_already_publishing() -> None:
    """A round that woke and is inside its append when the run ends: drain awaits it, so its
    output is in the log before drain returns (and before the result closes the log)."""
    log = EventLog()
    out = OutputEvents(log, interval_s=0.02)
    entered, gate = asyncio.Event(), asyncio.Event()
    append = log.append

    async def slow_append(type, **body):  # type: ignore[no-untyped-def]
        if body.get("data") == "b":
            entered.set()
            await gate.wait()
        return await append(type, **body)

    log.append = slow_append  # type: ignore[method-assign]
    await out.write("stdout", b"a")  # the first bytes go out at once
    await out.write("stdout", b"b")  # within the interval: left to a round
    await asyncio.wait_for(entered.wait(), 5)  # the round took "b" and is appending it
    draining = asyncio.create_task(out.drain())
    await asyncio.sleep(0.05)
    gate.set()
    await draining
    assert [e.body["data"] for e in log.events if e.type == "output"] == ["a", "b"]
