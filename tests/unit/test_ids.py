"""Random identifiers: the alphabet, the length, and no bias towards any character."""

from __future__ import annotations

import re
from collections import Counter

from sandboxd.ids import TRACE_ID_PATTERN, new_trace_id, random_token


def test_tokens_have_the_length_and_alphabet_asked_for() -> None:
    for length in (1, 12, 16, 40, 300):
        token = random_token(length)
        assert len(token) == length and re.fullmatch(r"[A-Za-z0-9]+", token)
    assert re.fullmatch(TRACE_ID_PATTERN, new_trace_id())
    assert len({random_token(16) for _ in range(1000)}) == 1000


def test_every_character_is_about_equally_likely() -> None:
    counts = Counter("".join(random_token(1000) for _ in range(200)))  # 200,000 draws
    assert len(counts) == 62
    expected = 200_000 / 62  # 3226; a modulo bias would give the first 8 characters 25% more
    assert all(abs(n - expected) < 0.1 * expected for n in counts.values()), counts
