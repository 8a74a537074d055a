"""The benchmark suite still runs: `bench/suite.py --quick` end to end, as a subprocess.

Not a timed test: it checks that every section and every target is printed and that the run
leaves nothing behind in its temp dir, never what the figures are.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[2] / "bench" / "suite.py"
SECTIONS = [
    "1. bare process start",
    "2. HTTP inline execute",
    "3. thread execution on an existing thread",
    "4. throughput",
    "5. time to first NDJSON event",
    "6. memory",
    "targets",
]
TARGETS = [
    "(2) python",
    "(2) node",
    "(3) thread",
    "(4) execs/s",
    "(4) errors",
    "(5) first output",
    "(6) server idle RSS",
]


@pytest.mark.timeout(1200)
def test_quick_run_prints_every_section_and_target(tmp_path: Path) -> None:
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = subprocess.run(
        [sys.executable, str(SUITE), "--quick"],
        env={**os.environ, "TMPDIR": str(tmp)},  # the servers' data dirs go here
        capture_output=True,
        text=True,
        timeout=1100,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    lines = r.stdout.splitlines()
    for title in SECTIONS:
        assert any(line.startswith(title) for line in lines), (title, r.stdout)
    targets = lines[lines.index("targets") :]
    for name in TARGETS:
        row = next((line for line in targets if line.startswith(name)), None)
        assert row is not None, (name, targets)
        assert re.search(r"\b(PASS|MISS)\b", row), row
    assert "QUICK SMOKE RUN" in r.stdout
    assert list(tmp.iterdir()) == [], "the suite left files behind"
