"""Persistent sessions alone: section 10 of the suite (bench/_sessions.py) on one server.

    .venv/bin/python bench/bench_sessions.py [--n 100] [--rounds 3]

Starts a real `sandboxd serve` (pools on, the default) on a free 127.0.0.1 port in a temp data
dir, then measures, interleaved, `print(1)` in a thread's live session vs a stateless pooled
run, and `import numpy` again in a live session vs stateless on a Debian image with pandas;
then the 20-step pandas workflow, `--rounds` times, with and without a session. Prints the
medians, p95s and ratios, and the machine. Traffic goes to 127.0.0.1 only; the temp dir and
the server go at the end, whatever happened.
"""

from __future__ import annotations

import sys

import _sessions
from _common import exit_with, session
from suite import print_sessions, rounds, series, wall


def main() -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    with session("bench_sessions", __doc__ or "", min_n=5) as s:
        n = s.args.n

        def sample(runners: dict[str, object]) -> dict[str, object]:
            got = rounds({k: wall(run) for k, run in runners.items()}, n, 5)  # type: ignore[arg-type]
            return {k: series(k, v) for k, v in got.items()}

        with s.server.client(s.key, timeout_s=120) as client:
            figures = _sessions.measure(s.server, client, sample, workflow_rounds=3)  # type: ignore[arg-type]
        print(f"command: {s.command}")
        print_sessions(figures)
        print(f"(10) session print(1) / stateless: {figures.ratio:.2f} (target <= 0.5); "
              f"pandas workflow session / stateless: {figures.workflow_ratio:.2f}")
    return 0


if __name__ == "__main__":
    exit_with("bench_sessions", main)
