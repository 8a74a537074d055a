"""Id and path patterns are written once (ids.py, service/paths.py); each form of a rule (Python
check, JSON Schema pattern) accepts exactly what the rule did when it was written out by hand."""

from __future__ import annotations

import itertools
import re

import pytest

from sandboxd.ids import THREAD_ID_MAX_CHARS, THREAD_ID_PATTERN
from sandboxd.service.paths import (
    ENCODED,
    ENCODED_PATTERN,
    SUB_PATH_FORBIDDEN,
    SUB_PATH_FORBIDDEN_PATTERN,
    UNSAFE_PATH_PATTERN,
    has_forbidden,
)

#: The patterns as they were written before they had one place.
_OLD_ENCODED = r"%(2[eEfF5]|5[cC]|00|[cC][01])"
_OLD_SUB_PATH = r"\.\.|%(2[eEfF5]|5[cC]|00|[cC][01])|\u0000|\\"
_OLD_UNSAFE = r"\u0000|\\|%(2[eEfF5]|5[cC]|00|[cC][01])|(^|/)\.\.(/|$)"
_HEX = "0123456789abcdefABCDEF"
_ENCODINGS = ["%" + a + b for a, b in itertools.product(_HEX, repeat=2)]
_PATHS = [
    "/data/a", "/data/a/../b", "/data/a..b", "/data/.x", "/data/a\x00", "/data/a\\b", "a/..", "../a",
    "a/../b", "..", "a/.../b", "/data/%", "/data/100%", "/data/%2", "/data/%zz", "a/b", "",
] + [f"/data/x{e}y" for e in _ENCODINGS]


def test_encoded_list_and_pattern_agree() -> None:
    for encoding in _ENCODINGS:
        refused = encoding.lower() in ENCODED
        assert bool(re.search(ENCODED_PATTERN, encoding)) == refused, encoding
        assert bool(re.search(_OLD_ENCODED, encoding)) == refused, encoding
        assert has_forbidden(encoding, ENCODED) == refused, encoding


def test_path_patterns_accept_what_they_did() -> None:
    for path in _PATHS:
        sub_path = bool(re.search(SUB_PATH_FORBIDDEN_PATTERN, path))
        assert sub_path == bool(re.search(_OLD_SUB_PATH, path)) == has_forbidden(path, SUB_PATH_FORBIDDEN), path
        assert bool(re.search(UNSAFE_PATH_PATTERN, path)) == bool(re.search(_OLD_UNSAFE, path)), path


def test_sub_paths_refuse_more_than_file_paths() -> None:
    """`sub_paths` keeps its own literal checks beside the shared encoded list."""
    assert SUB_PATH_FORBIDDEN == ("..", *ENCODED, "\x00", "\\")


@pytest.mark.parametrize(
    "value",
    ["a", "A", "0", "t-1_a", "a" * 127, "a" * 128, "a" * 129, "-a", "_a", "", "a.b", "a b", "a\n", "é", "a/b"],
)
def test_thread_id_pattern_is_the_old_rule(value: str) -> None:
    old = len(value) <= 128 and re.fullmatch(r"^[a-zA-Z0-9][a-zA-Z0-9_-]*$", value) is not None
    assert (re.fullmatch(THREAD_ID_PATTERN, value) is not None) == old
    assert THREAD_ID_MAX_CHARS == 128
