"""Debian image layouts for the tests (tests/integration, tests/security): each package list
is built with mmdebstrap once per test session, whichever module asks first.

A module of its own, not conftest.py: `conftest` names several modules in one session.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from sandboxd.images import debian


#: Debian image layouts built this session, by package list (tests/integration, tests/security).
_DEBIAN_LAYOUTS: dict[tuple[str, ...], Path] = {}
DEBIAN_TAG = "test"


def debian_layout(packages: tuple[str, ...], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout (tag DEBIAN_TAG) of a Debian root with `packages`, built with mmdebstrap
    once per test session, whichever module asks first (about 15 s for python3-minimal + bash)."""
    if packages not in _DEBIAN_LAYOUTS:
        for tool in ("mmdebstrap", "skopeo"):
            if shutil.which(tool) is None:
                pytest.fail(f"{tool} is missing: run ./scripts/bootstrap test")
        layout = tmp_path_factory.mktemp("debian-image") / "layout"
        debian.build_layout(packages, layout, DEBIAN_TAG)
        _DEBIAN_LAYOUTS[packages] = layout
    return _DEBIAN_LAYOUTS[packages]
