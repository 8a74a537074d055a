"""Inline-execute latency with a thread_id: stateless versus a small and a 10,000-file home.

    uv run python bench/bench_threads.py [--n 50]

In one run: starts a real `sandboxd serve` on a free 127.0.0.1 port in a temp data dir,
creates a key with the CLI, prepares two threads with one setup execution each, then
measures `print(1+1)` (python) through POST /v1/sandbox/execute, interleaved A, B, C, A, B,
C, ... (one httpx.Client, keep-alive, sequential):

    A  stateless: no thread_id;
    B  thread_id of a thread whose home holds one small file;
    C  thread_id of a thread whose home holds 10,000 files of 100 bytes under ~/many/.

With a thread_id the server snapshots the thread's btrfs home for the execution, binds the
snapshot at /home/baponi, and swaps it in (renameat2 exchange) and deletes the old state
when the run ends (src/sandboxd/service/threads.py, src/sandboxd/storage/threads.py).
3 warm-up runs of each first, not counted. Prints median and p95 in ms, the ratios B/A and
C/A of medians, the server's own duration_ms medians (in-sandbox time), and the machine it
ran on. After measuring, checks that both homes still hold what the setup wrote. Stops the
server (SIGTERM: it unmounts its thread storage itself), unmounts what it left under
/run/sandboxd/<instance> if it had to be killed, and deletes the temp dir, whatever
happened. Traffic goes to 127.0.0.1 only.

Needs root and a host that can run sandboxd with threads (bubblewrap, cgroups, btrfs-progs,
loop mounts), like the server itself; httpx comes with the dev extra
(`uv run --extra dev ...` on a fresh checkout).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

try:
    import httpx
except ImportError:  # pragma: no cover - depends on how the env was synced
    sys.exit(
        "bench_threads: httpx is missing; run: uv run --extra dev python bench/bench_threads.py"
    )

from _common import exit_with, print_machine, TOOLS_ENV, machine_info, Series, session, timed
from _runs import EXECUTE, server_runner

WARMUP = 3
MIN_N = 30
CODE, EXPECTED = "print(1+1)", "2\n"
THREAD_SMALL = "bench-small"
THREAD_MANY = "bench-many"
MANY_FILES, FILE_BYTES = 10_000, 100

SETUP_SMALL = """\
import pathlib
p = pathlib.Path.home() / "small.txt"
p.write_text("x" * 99 + "\\n")
print(p.stat().st_size)
"""
SETUP_MANY = f"""\
import pathlib
d = pathlib.Path.home() / "many"
d.mkdir(exist_ok=True)
blob = b"x" * {FILE_BYTES}
for i in range({MANY_FILES}):
    (d / f"f{{i:05d}}").write_bytes(blob)
print(sum(1 for _ in d.iterdir()))
"""
CHECK_SMALL = 'import pathlib; print((pathlib.Path.home() / "small.txt").stat().st_size)'
CHECK_MANY = (
    "import pathlib; d = pathlib.Path.home() / 'many'; fs = list(d.iterdir());"
    " print(len(fs), sum(f.stat().st_size for f in fs))"
)


# --- measuring ----------------------------------------------------------------------------


def execute(client: httpx.Client, code: str, thread_id: str | None, timeout: int = 30) -> dict:
    body: dict[str, object] = {"code": code, "language": "python", "timeout": timeout}
    if thread_id is not None:
        body["thread_id"] = thread_id
    r = client.post(EXECUTE, json=body)
    if r.status_code != 200:
        raise RuntimeError(f"thread {thread_id}: HTTP {r.status_code}: {r.text[:500]}")
    out: dict = r.json()
    if not out["success"]:
        raise RuntimeError(f"thread {thread_id}: execution failed: {out}")
    return out


def expect(client: httpx.Client, code: str, thread_id: str, expected: str, what: str) -> float:
    """Run `code` on the thread, check its stdout; returns the wall time in ms."""
    start = time.perf_counter()
    out = execute(client, code, thread_id, timeout=300)
    ms = (time.perf_counter() - start) * 1000
    if out["stdout"] != expected:
        raise RuntimeError(f"{what}: expected stdout {expected!r}, got {out}")
    return ms


def tool_version(argv: list[str]) -> str:
    try:
        r = subprocess.run(
            argv, check=False, capture_output=True, text=True, timeout=30, env=TOOLS_ENV
        )
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    first = (r.stdout or r.stderr).strip().splitlines()[:1]
    return first[0] if first else "?"


def main() -> int:
    with session("bench_threads", __doc__ or "", min_n=MIN_N, stop_timeout_s=30) as s:
        args, command, before, server = s.args, s.command, s.before, s.server
        key, startup_ms = s.key, s.startup_ms
        if "python" not in server.languages():
            raise RuntimeError("python is not in the server's image")
        series = {
            "A": Series("A stateless (no thread_id)"),
            "B": Series("B thread, home: 1 file"),
            "C": Series(f"C thread, home: {MANY_FILES:,} files"),
        }

        with server.client(key, timeout_s=600) as client:
            # setup: one execution on each thread creates its home and writes its files
            setup_small_ms = expect(client, SETUP_SMALL, THREAD_SMALL, "100\n", "setup B")
            setup_many_ms = expect(client, SETUP_MANY, THREAD_MANY, f"{MANY_FILES}\n", "setup C")
            runners = {
                name: server_runner(client, "python", CODE, EXPECTED, thread_id)
                for name, thread_id in (("A", None), ("B", THREAD_SMALL), ("C", THREAD_MANY))
            }
            for _ in range(WARMUP):  # page cache, connection, first-call paths
                for run in runners.values():
                    run()
            t_run = time.perf_counter()
            for _ in range(args.n):
                for name, run in runners.items():
                    ms, inner = timed(run)
                    series[name].samples_ms.append(ms)
                    series[name].inner_ms.append(inner)
            run_s = time.perf_counter() - t_run
            # the homes still hold what the setup wrote: every run committed a full snapshot
            expect(client, CHECK_SMALL, THREAD_SMALL, "100\n", "check B")
            many = f"{MANY_FILES} {MANY_FILES * FILE_BYTES}\n"
            expect(client, CHECK_MANY, THREAD_MANY, many, "check C")

        after = machine_info()
        print("sandboxd inline execute: stateless vs thread_id (btrfs home snapshot per execution)")
        print(f"command: {command}   (cwd {os.getcwd()})")
        print(
            f"samples: n={args.n} measured per series after {WARMUP} warm-up each;"
            f" interleaved A,B,C,A,B,C,...; sequential; {run_s:.1f} s measuring"
        )
        print(
            f"server: sandboxd serve on {server.url} (SQLite, default sandbox: 1 CPU, 1024 MiB,"
            f" thread quota 1024 MiB), ready in {startup_ms:.0f} ms;"
            " HTTP: one httpx.Client, keep-alive, sequential"
        )
        print(f"code: python {CODE!r}, expected stdout {EXPECTED!r}, every response checked")
        print(
            f"setup: B = one execution writing ~/small.txt (100 B), {setup_small_ms:.0f} ms;"
            f" C = one execution writing {MANY_FILES:,} files of {FILE_BYTES} B under ~/many/,"
            f" {setup_many_ms:.0f} ms; both verified again after measuring"
        )
        print(f"storage: {tool_version(['btrfs', '--version'])}, loop-mounted image, quotas on")
        print_machine(before, after)
        print()
        header = (
            f"{'series':<28} {'median':>8} {'p95':>8} {'ratio/A':>8} {'+ms vs A':>9}"
            f" {'in-sandbox med':>15}"
        )
        print(header)
        print("-" * len(header))
        base = series["A"].median()
        for s in series.values():
            print(
                f"{s.label:<28} {s.median():>8.1f} {s.p95():>8.1f} {s.median() / base:>7.2f}x"
                f" {s.median() - base:>9.1f} {s.inner_median():>15.1f}"
            )
        print()
        b, c = series["B"], series["C"]
        print(
            f"B/A = {b.median() / base:.2f}x   C/A = {c.median() / base:.2f}x   C/B = "
            f"{c.median() / b.median():.2f}x   (ratios of medians)"
        )
        print(
            "ms, wall time of the HTTP request from this client; p95 = nearest rank;"
            "\nin-sandbox = the server's own duration_ms: bwrap spawn to exit (namespaces, mounts,"
            " interpreter);\n  not in it: the thread's snapshot before and commit (exchange +"
            " subvolume delete) after,\n  cgroup create/remove, DB writes, HTTP, JSON."
        )
        return 0


if __name__ == "__main__":
    exit_with("bench_threads", main)
