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
    "7. runtime images",
    "8. storage connections",
    "9. brokered HTTPS",
    "10. persistent sessions",
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
    "(7) python inline on an image",
    "(8) python inline, one S3 connection",
    "(9) brokered HTTPS request",
    "(10) session print(1)",
    "(10) 20-step pandas workflow",
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


LOAD = SUITE.parent / "load.py"


@pytest.mark.timeout(600)
def test_load_tiny_run_prints_both_modes_and_memory(tmp_path: Path) -> None:
    """bench/load.py at a tiny n: both SDK modes and the server's memory are printed."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    r = subprocess.run(
        [sys.executable, str(LOAD), "--n", "4", "--concurrency", "2", "--orgs", "2"],
        env={**os.environ, "TMPDIR": str(tmp)},
        capture_output=True,
        text=True,
        timeout=500,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, f"stdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    lines = r.stdout.splitlines()
    for mode in ("retries off", "retries on"):
        row = next((line for line in lines if line.startswith(mode)), None)
        assert row is not None, (mode, r.stdout)
        ok, limited, other = (int(cell) for cell in row[len(mode):].split()[:3])
        assert ok + limited + other == 4, row
    for when in ("after start", "after retries off", "after retries on"):
        assert any(line.startswith(when) for line in lines), (when, r.stdout)
    assert list(tmp.iterdir()) == [], "the load bench left files behind"
