"""src/ type-checks under mypy as configured in pyproject.toml ([tool.mypy], strict), so CI,
which runs the test suite, runs mypy too. About 10 s cold on 2 cores; .mypy_cache/ makes
later runs faster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_package_ships_its_annotations() -> None:
    # PEP 561: without the marker, users' type checkers ignore the package's annotations.
    assert (ROOT / "src" / "sandboxd" / "py.typed").is_file()


def test_mypy_passes_on_src() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--no-color-output"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert result.returncode == 0, f"mypy src/ failed:\n{result.stdout}{result.stderr}"
