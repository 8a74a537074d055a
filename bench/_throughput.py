"""Executions per second at a fixed concurrency: `concurrency` workers share `total` runs.

The server is driven with asyncio and one httpx.AsyncClient (keep-alive, a connection per
worker); the bare baseline starts the same interpreter the same way with asyncio
subprocesses. A run that fails is counted, not raised: the error count is a figure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from _common import Series
from _runs import CLEAN_ENV, EXECUTE


@dataclass
class Throughput:
    concurrency: int
    executions: int = 0
    wall_s: float = 0.0
    errors: int = 0
    first_error: str = ""
    latency: Series = field(default_factory=Series)

    @property
    def per_s(self) -> float:
        return self.executions / self.wall_s


class _Failed(Exception):
    pass


async def _drive(
    concurrency: int, total: int, once: Callable[[], Awaitable[None]]
) -> Throughput:
    """`concurrency` workers call `once` until `total` calls have been made."""
    got = Throughput(concurrency)
    left = total

    async def worker() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            start = time.perf_counter()
            try:
                await once()
            except (_Failed, httpx.HTTPError) as exc:
                got.errors += 1
                got.first_error = got.first_error or f"{type(exc).__name__}: {exc}"
            got.latency.samples_ms.append((time.perf_counter() - start) * 1000)
            got.executions += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    got.wall_s = time.perf_counter() - start
    return got


async def _server(
    url: str, key: str, language: str, code: str, expected: str, concurrency: int, total: int
) -> Throughput:
    body = {"code": code, "language": language, "timeout": 60}

    async with httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
        trust_env=False,
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    ) as client:

        async def once() -> None:
            r = await client.post(EXECUTE, json=body)
            if r.status_code != 200:
                raise _Failed(f"HTTP {r.status_code}: {r.text[:300]}")
            out = r.json()
            if not out["success"] or out["stdout"] != expected:
                raise _Failed(f"unexpected result {out}")

        await _drive(concurrency, concurrency, once)  # warm-up: one connection per worker
        return await _drive(concurrency, total, once)


async def _bare(argv: list[str], expected: str, concurrency: int, total: int) -> Throughput:
    async def once() -> None:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            env=CLEAN_ENV,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        if proc.returncode != 0 or out.decode() != expected:
            raise _Failed(f"exit {proc.returncode}, stdout {out!r}, stderr {err[:300]!r}")

    return await _drive(concurrency, total, once)


def server_throughput(
    url: str, key: str, language: str, code: str, expected: str, concurrency: int, total: int
) -> Throughput:
    return asyncio.run(_server(url, key, language, code, expected, concurrency, total))


def bare_throughput(argv: list[str], expected: str, concurrency: int, total: int) -> Throughput:
    return asyncio.run(_bare(argv, expected, concurrency, total))
