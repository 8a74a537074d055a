"""Time to the first NDJSON events of a streamed execution, and its bare counterpart.

The code prints at once and then sleeps, so the first `output` event can only come from a
live stream, never from the result of a finished run.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable

import httpx

from _runs import CLEAN_ENV, EXECUTE

NDJSON = "application/x-ndjson"
SLEEP_S = 0.05
CODE = f"import time\nprint('ready', flush=True)\ntime.sleep({SLEEP_S})\n"
FIRST_LINE = "ready\n"
FIRSTS = ("status", "output")  # the events timed


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1000


def stream_runner(client: httpx.Client) -> Callable[[], dict[str, float]]:
    """One streamed python run on `client` (keep-alive); returns ms to its first "status" and
    first "output" event, counted from just before the request is sent."""
    body = {"code": CODE, "language": "python", "timeout": 30}
    headers = {"Accept": NDJSON}

    def run() -> dict[str, float]:
        first: dict[str, float] = {}
        events = []
        start = time.perf_counter()
        with client.stream("POST", EXECUTE, json=body, headers=headers) as r:
            if r.status_code != 200:
                r.read()
                raise RuntimeError(f"stream: HTTP {r.status_code}: {r.text[:500]}")
            for line in r.iter_lines():
                if not line:
                    continue
                event = json.loads(line)
                first.setdefault(event["type"], _ms_since(start))
                events.append(event)
        result = events[-1] if events else {}
        stdout = "".join(e["data"] for e in events if e["type"] == "output")
        ok = result.get("type") == "result" and result["result"]["success"]
        if not ok or stdout != FIRST_LINE:
            raise RuntimeError(f"stream: unexpected events {events[:4]} ... {events[-1:]}")
        if not all(kind in first for kind in FIRSTS):
            raise RuntimeError(f"stream: no status or output event in {events}")
        return {kind: first[kind] for kind in FIRSTS}

    return run


def bare_runner(python: str) -> Callable[[], dict[str, float]]:
    """The bare counterpart: ms from starting the interpreter to reading its first line."""

    def run() -> dict[str, float]:
        start = time.perf_counter()
        with subprocess.Popen(
            [python, "-c", CODE],
            env=CLEAN_ENV,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        ) as proc:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            ms = _ms_since(start)
            rest = proc.stdout.read()
            code = proc.wait(timeout=30)
        if code != 0 or line + rest != FIRST_LINE:
            raise RuntimeError(f"bare stream: exit {code}, stdout {line + rest!r}")
        return {"output": ms}

    return run
