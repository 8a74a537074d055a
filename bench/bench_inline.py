"""Inline-execute latency: a real sandboxd server versus starting the bare interpreter.

    uv run python bench/bench_inline.py [--n 50]

In one run: starts a real `sandboxd serve` on a free 127.0.0.1 port in a temp data dir,
creates a key with the CLI, then for python, node and bash measures interleaved pairs
(A, B, A, B, ...): A = the bare interpreter started with subprocess.run and a clean env
{'PATH': '/usr/bin:/bin'}; B = the same code through POST /v1/sandbox/execute (one
httpx.Client, keep-alive, sequential). 5 warm-up runs of each first, not counted. Prints
median and p95 in ms, the server/bare ratio of medians, and the machine it ran on. Stops the
server and deletes its temp dir at the end, whatever happened. Traffic goes to 127.0.0.1 only.

Needs root and a host that can run sandboxd (bubblewrap, cgroups), like the server itself;
httpx comes with the dev extra (`uv run --extra dev ...` on a fresh checkout).
"""

from __future__ import annotations

import os
import statistics
import sys
import time

try:
    import httpx  # noqa: F401  (the modules below need it; checked here for a clear message)
except ImportError:  # pragma: no cover - depends on how the env was synced
    sys.exit("bench_inline: httpx is missing; run: uv run --extra dev python bench/bench_inline.py")

from _common import exit_with, print_machine, machine_info, Series, session, timed
from _runs import bare_runner, CASES, executable, interpreter_versions, server_runner

WARMUP = 5


def main() -> int:
    with session("bench_inline", __doc__ or "", min_n=50, stop_timeout_s=15) as s:
        args, command, before, server = s.args, s.command, s.before, s.server
        key, startup_ms = s.key, s.startup_ms
        available = server.languages()
        languages = [lang for lang in CASES if lang in available]
        bare: dict[str, Series] = {lang: Series() for lang in languages}
        served: dict[str, Series] = {lang: Series() for lang in languages}

        with server.client(key, timeout_s=60) as client:
            runners = {}
            exes: dict[str, str] = {}
            for lang in languages:
                argv, code, expected = CASES[lang]
                exe = exes[lang] = executable(argv[0])
                runners[lang] = (
                    bare_runner([exe, *argv[1:]], expected),
                    server_runner(client, lang, code, expected),
                )
            for lang, (
                a,
                b,
            ) in runners.items():  # warm-up: page cache, connection, first-call paths
                for _ in range(WARMUP):
                    a()
                    b()
            t_run = time.perf_counter()
            for _ in range(args.n):
                for lang, (a, b) in runners.items():
                    ms, _ = timed(a)
                    bare[lang].samples_ms.append(ms)
                    ms, inner = timed(b)
                    served[lang].samples_ms.append(ms)
                    if inner is not None:
                        served[lang].inner_ms.append(inner)
            run_s = time.perf_counter() - t_run

        after = machine_info()
        print("sandboxd inline execute vs bare interpreter start")
        print(f"command: {command}   (cwd {os.getcwd()})")
        print(
            f"samples: n={args.n} measured per series after {WARMUP} warm-up each;"
            " interleaved A,B per language,"
            f" languages interleaved; {run_s:.1f} s measuring"
        )
        print(
            f"server: sandboxd serve on {server.url} (SQLite, default sandbox: 1 CPU, 1024 MiB), "
            f"ready in {startup_ms:.0f} ms; HTTP: one httpx.Client, keep-alive, sequential"
        )
        print("bare: subprocess.run(argv, env={'PATH': '/usr/bin:/bin'}, capture_output=True)")
        print(f"interpreters: {interpreter_versions(exes)}")
        print_machine(before, after)
        print()
        header = (
            f"{'language':<8} {'bare med':>9} {'bare p95':>9} {'server med':>11} {'server p95':>11}"
            f" {'ratio':>6} {'overhead':>9} {'in-sandbox med':>15}"
        )
        print(header)
        print("-" * len(header))
        for lang in languages:
            a, b = bare[lang], served[lang]
            inner = f"{statistics.median(b.inner_ms):.1f}" if b.inner_ms else "-"
            print(
                f"{lang:<8} {a.median():>9.1f} {a.p95():>9.1f} {b.median():>11.1f} {b.p95():>11.1f}"
                f" {b.median() / a.median():>5.1f}x {b.median() - a.median():>9.1f} {inner:>15}"
            )
        print()
        print("ms; ratio = server median / bare median; overhead = server median - bare median;")
        print(
            "in-sandbox = the server's own duration_ms: bwrap spawn to exit (namespaces, mounts,"
            " interpreter);\n  not in it: cgroup create/remove, DB writes, HTTP, JSON."
        )
        missing = [lang for lang in CASES if lang not in languages]
        if missing:
            print(f"not measured (not in the server's image): {', '.join(missing)}")
        return 0


if __name__ == "__main__":
    exit_with("bench_inline", main)
