"""Fixtures shared by the unit tests."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandboxd.images.inroot import remove_entry
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


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """An empty directory an image layer is applied to (test_unpack, test_inroot)."""
    r = tmp_path / "root"
    r.mkdir()
    yield r
    # some trees there are thousands of levels deep: too deep for pytest's recursive cleanup
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        remove_entry(fd, "root")
    finally:
        os.close(fd)
