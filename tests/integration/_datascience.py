"""The `datascience` Debian image for the persistent-session tests (issue #17): pandas,
matplotlib and PIL from Debian, so a session's rich outputs (a DataFrame as HTML, a figure as
PNG) are tested on the interpreter and library versions an image really has.

Import the fixture into a test module: `from _datascience import datascience_image_layout`.
Built once per test session with mmdebstrap (tests/_debian.py); the packages download once.
"""

from __future__ import annotations

import pytest
from _debian import DEBIAN_TAG, debian_layout
from _registry import LayoutImage

#: python3 (not -minimal: pandas needs the full standard library), bash and nodejs for the
#: three session drivers, and the libraries of the rich outputs.
DATASCIENCE_PACKAGES = (
    "python3", "bash", "nodejs", "python3-pandas", "python3-matplotlib", "python3-pil",
)


@pytest.fixture(scope="session")
def datascience_image_layout(tmp_path_factory: pytest.TempPathFactory) -> LayoutImage:
    """The `datascience` Debian image (DATASCIENCE_PACKAGES), built once per session."""
    return LayoutImage(debian_layout(DATASCIENCE_PACKAGES, tmp_path_factory), DEBIAN_TAG)
