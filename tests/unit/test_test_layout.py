"""Test modules in tests/unit and tests/integration are rootless (no __init__.py): pytest
imports each under its basename, so two with one name break a whole-suite run at collection
even though each directory runs alone."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_rootless_test_modules_have_unique_names() -> None:
    names = Counter(p.name for d in ("unit", "integration") for p in (TESTS / d).glob("*.py"))
    assert [n for n, count in names.items() if count > 1] == []
