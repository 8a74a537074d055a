"""Load: a burst of executions through the official `baponi` SDK, its retries off and on.

    .venv/bin/python bench/load.py [--n 1000] [--concurrency 50] [--orgs 1] [--set NAME=VALUE ...]

Starts one real `sandboxd serve` on a free 127.0.0.1 port in a temp data dir (as the quick
start does: the server's defaults, plus any `--set` setting, e.g. `--set max_concurrent_per_org=8`),
creates one key per organization with the CLI (`--orgs`, the workers spread round-robin over
them), then twice: `--n` executions of `print(1)` by `--concurrency` asyncio workers, each
through `baponi.AsyncBaponi` (the SDK's own HTTP client on loopback, never a proxy):

    retries off  AsyncBaponi(..., max_retries=0): a 429 is the answer;
    retries on   AsyncBaponi(..., max_retries=2), the SDK's default: a 429 or 503 is retried
                 after its Retry-After (else 0.5 s × 2^attempt), then given up.

Prints, per mode: successes, 429s, other errors, wall time, successful executions per second,
p50/p95/p99 latency (ms, nearest rank) of every request as its caller saw it (retries included)
and of the successful ones; and the server's VmRSS/VmHWM after start (and one execution) and
after each mode. Exits 0 whatever the figures are, 1 if the run itself failed. Stops the
server and deletes its temp dir, whatever happened. Traffic goes to 127.0.0.1 only. Needs
root and a host that can run sandboxd (bubblewrap, cgroups), like the server itself.
"""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass, field

try:
    import baponi
    import httpx
except ImportError:  # pragma: no cover - depends on how the env was synced
    sys.exit("load: baponi or httpx is missing; run: uv sync --extra dev")

from _common import command_line, exit_with, machine_info, print_machine, serving
from _memory import server_memory
from _report import table

CODE, EXPECTED = "print(1)", "1\n"
MODES = {"retries off": 0, "retries on": 2}  # 2: the SDK's DEFAULT_MAX_RETRIES


@dataclass
class Load:
    ok: int = 0
    rate_limited: int = 0
    errors: int = 0
    first_error: str = ""
    wall_s: float = 0.0
    all_ms: list[float] = field(default_factory=list)
    ok_ms: list[float] = field(default_factory=list)


def rank(samples: list[float], p: float) -> str:
    if not samples:
        return "n/a"
    ordered = sorted(samples)
    return f"{ordered[max(0, math.ceil(p * len(ordered)) - 1)]:.0f}"


def _cli(env: dict[str, str], *args: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "sandboxd", *args], capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL, check=False, env={**os.environ, **env},
    )
    if r.returncode != 0:
        raise RuntimeError(f"sandboxd {' '.join(args[:2])} failed ({r.returncode}): {r.stderr}")
    return r.stdout.strip()


def org_key(data_dir: str, env: dict[str, str], org: str) -> str:
    """A new organization and a key of it, with the CLI (as an operator adds a tenant)."""
    _cli(env, "orgs", "create", org, "--data-dir", data_dir)
    return _cli(env, "keys", "create", "--name", "load", "--org", org, "--data-dir", data_dir)


def sdk(url: str, key: str, retries: int, http: httpx.AsyncClient) -> baponi.AsyncBaponi:
    with warnings.catch_warnings():  # "does not use HTTPS": loopback
        warnings.simplefilter("ignore")
        return baponi.AsyncBaponi(api_key=key, base_url=url, max_retries=retries, http_client=http)


async def burst(url: str, keys: list[str], retries: int, n: int, concurrency: int) -> Load:
    """`concurrency` workers (worker i uses keys[i % len(keys)]) make `n` executions in all."""
    got, left = Load(), n
    http = httpx.AsyncClient(  # loopback, never a proxy; a connection per worker
        timeout=httpx.Timeout(120), trust_env=False,
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
    )
    clients = [sdk(url, key, retries, http) for key in keys]

    async def worker(client: baponi.AsyncBaponi) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            start = time.perf_counter()
            try:
                result = await client.execute(CODE, timeout=30)
                if result.stdout != EXPECTED:
                    raise RuntimeError(f"unexpected result: {result!r}")
            except baponi.RateLimitError:
                got.rate_limited += 1
            except Exception as exc:  # counted: an error is a figure here
                got.errors += 1
                got.first_error = got.first_error or f"{type(exc).__name__}: {exc}"
            else:
                got.ok += 1
                got.ok_ms.append((time.perf_counter() - start) * 1000)
            got.all_ms.append((time.perf_counter() - start) * 1000)

    start = time.perf_counter()
    try:
        await asyncio.gather(*(worker(clients[i % len(clients)]) for i in range(concurrency)))
    finally:
        await http.aclose()
    got.wall_s = time.perf_counter() - start
    return got


def main() -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="executions per mode")
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--orgs", type=int, default=1, help="organizations, one key each")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a server setting (SANDBOXD_NAME=VALUE), repeatable")
    args = parser.parse_args()
    if args.n < 1 or args.concurrency < 1 or args.orgs < 1:
        parser.error("--n, --concurrency and --orgs must be at least 1")
    env = {}
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error(f"--set {item!r}: expected NAME=VALUE")
        env[f"SANDBOXD_{name.upper()}"] = value
    command, before = command_line(), machine_info()
    with serving("load", {"": env}) as running:
        server = running[""].server
        assert server.proc is not None
        keys = [running[""].key] + [
            org_key(str(server.data_dir), server.env, f"load-{i}") for i in range(1, args.orgs)
        ]
        warm = asyncio.run(burst(server.url, keys[:1], 0, 1, 1))
        if warm.ok != 1:
            raise RuntimeError(f"the first execution failed: {warm.first_error or warm}")
        memory = [("after start", server_memory(server.proc.pid))]
        loads = {}
        for mode, retries in MODES.items():
            loads[mode] = asyncio.run(burst(server.url, keys, retries, args.n, args.concurrency))
            memory.append((f"after {mode}", server_memory(server.proc.pid)))
    print(f"load: {command}")
    print(f"{args.n} executions of {CODE!r} per mode, concurrency {args.concurrency}, "
          f"{args.orgs} org(s); server settings: {' '.join(args.set) or 'defaults'}")
    print_machine(before, machine_info())
    table(
        "burst (latency in ms, nearest rank; all = every request as its caller saw it)",
        ["mode", "ok", "429", "other", "wall s", "ok/s", "p50 all", "p95 all", "p99 all",
         "p50 ok", "p95 ok", "p99 ok"],
        [
            [mode, str(x.ok), str(x.rate_limited), str(x.errors), f"{x.wall_s:.1f}",
             f"{x.ok / x.wall_s:.1f}", rank(x.all_ms, 0.5), rank(x.all_ms, 0.95), rank(x.all_ms, 0.99),
             rank(x.ok_ms, 0.5), rank(x.ok_ms, 0.95), rank(x.ok_ms, 0.99)]
            for mode, x in loads.items()
        ],
        [f"first other error ({mode}): {x.first_error}" for mode, x in loads.items() if x.first_error],
    )
    table(
        "server memory (MiB)",
        ["when", "VmRSS", "VmHWM"],
        [[when, f"{m.rss_kib / 1024:.1f}", f"{m.hwm_kib / 1024:.1f}"] for when, m in memory],
    )
    return 0


if __name__ == "__main__":
    exit_with("load", main)
