"""The fake runner behaves like the real one from outside: sink, output cap, timeout, cancel."""

from __future__ import annotations

import asyncio
from dataclasses import replace

from sandboxd.runtime import ExecStatus, Limits, Runner, SandboxSpec
from sandboxd.runtime.fake import FakeRunner, Script

SPEC = SandboxSpec(language="python", code=b"x")


def runner(script: Script) -> FakeRunner:
    return FakeRunner(lambda spec: script)


async def test_output_reaches_the_sink_in_order_and_is_capped() -> None:
    seen: list[tuple[str, bytes]] = []

    async def sink(stream: str, data: bytes) -> None:
        seen.append((stream, data))

    fake: Runner = runner(Script(output=(("stdout", b"abc"), ("stderr", b"e"), ("stdout", b"defg")), exit_code=1))
    result = await fake.run(replace(SPEC, limits=Limits(output_limit_bytes=5)), sink=sink)
    assert seen == [("stdout", b"abc"), ("stderr", b"e"), ("stdout", b"de")]
    assert (result.stdout, result.stderr) == (b"abcde", b"e")
    assert (result.stdout_truncated, result.stderr_truncated) == (True, False)
    assert (result.status, result.exit_code, result.error) == (ExecStatus.FAILED, 1, None)


async def test_the_timeout_ends_a_long_sleep() -> None:
    result = await runner(Script(sleep_s=60)).run(replace(SPEC, limits=Limits(timeout_s=0.05)))
    assert (result.status, result.error, result.exit_code) == (ExecStatus.TIMEOUT, "timeout", 137)


async def test_cancel_ends_a_sleep_and_a_short_sleep_just_ends() -> None:
    cancel = asyncio.Event()
    fake = runner(Script(sleep_s=60))
    run = asyncio.ensure_future(fake.run(SPEC, cancel=cancel))
    await asyncio.sleep(0.01)
    cancel.set()
    result = await run
    assert (result.status, result.error) == (ExecStatus.CANCELLED, "cancelled")
    done = await runner(Script(sleep_s=0.01)).run(SPEC, cancel=asyncio.Event())
    assert done.status is ExecStatus.SUCCESS


async def test_oom_and_refill_and_close_are_recorded() -> None:
    fake = runner(Script(oom=True))
    result = await fake.run(SPEC, refill_later=True)
    assert (result.status, result.error) == (ExecStatus.OOM, "memory_limit_exceeded")
    fake.refill(SPEC)
    await fake.close()
    assert fake.runs == [SPEC] and fake.refills == [SPEC] and fake.closed
