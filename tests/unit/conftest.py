"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandboxd.store import Store, create_engine, migrate


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A real SQLite store, migrated to head, in the test's temp dir."""
    s = Store(create_engine(f"sqlite+aiosqlite:///{tmp_path / 'sandboxd.db'}"))
    try:
        await migrate(s.engine)
        yield s
    finally:
        await s.close()
