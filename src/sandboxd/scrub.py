"""Known secret values replaced in a stream of bytes: the one rule for what a secret looks like
in text that should not hold it.

Used twice: the broker takes a brokered connector's secret out of the upstream's answers
(runtime/network/broker.py), and every execution's output is redacted of its connectors'
values (connectors/redact.py). A secret shows as itself or base64-encoded (standard or
URL-safe alphabet), and base64 of a longer text that holds it is the same characters whatever
comes before, once the alignment in its 3-byte group is fixed: so each of the three alignments
gives one form (`forms`). Streams arrive in chunks: only a tail that could begin a form is held
back for the next chunk, so a program's (or an API's) streamed output is not delayed otherwise.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Mapping

#: Base64 cores shorter than this are not matched: they would hit ordinary words.
MIN_FORM = 8


def forms(value: bytes) -> list[bytes]:
    """`value` and the base64 characters that encode it at each alignment, in both alphabets."""
    found = [value]
    for shift in range(3):
        for encode in (base64.standard_b64encode, base64.urlsafe_b64encode):
            core = _b64_core(value, shift, encode)
            if len(core) >= MIN_FORM and core not in found:
                found.append(core)
    return found


def paired_forms(value: bytes, replacement: bytes) -> dict[bytes, bytes]:
    """Each form of `value` paired with the same form of `replacement` (the broker swaps the
    secret and the placeholder form for form, so an echoed base64 stays decodable)."""
    pairs: dict[bytes, bytes] = {value: replacement}
    for shift in range(3):
        for encode in (base64.standard_b64encode, base64.urlsafe_b64encode):
            core = _b64_core(value, shift, encode)
            if len(core) >= MIN_FORM:
                pairs.setdefault(core, _b64_core(replacement, shift, encode))
    return pairs


class StreamReplacer:
    """Replaces each pattern by its replacement in a stream of chunks (`feed`, then `flush`)."""

    def __init__(self, pairs: Mapping[bytes, bytes]) -> None:
        patterns = sorted((p for p in pairs if p), key=len, reverse=True)  # longest first
        self._pairs = {p: pairs[p] for p in patterns}
        self._regex = re.compile(b"|".join(re.escape(p) for p in patterns)) if patterns else None
        self._keep = max((len(p) for p in patterns), default=1) - 1
        self._by_first: dict[int, list[bytes]] = {}
        for p in patterns:
            self._by_first.setdefault(p[0], []).append(p)
        self._held = b""

    def __bool__(self) -> bool:
        return self._regex is not None

    def replace(self, data: bytes) -> bytes:
        if self._regex is None:
            return data
        return self._regex.sub(lambda m: self._pairs[m.group(0)], data)

    def feed(self, data: bytes) -> bytes:
        """What may go on now; a tail that could begin a pattern waits for the next chunk."""
        if self._regex is None:
            return data
        buf = self._held + data
        hold = self._partial(buf)
        self._held = buf[len(buf) - hold :]
        return self.replace(buf[: len(buf) - hold])

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return self.replace(held)

    def _partial(self, buf: bytes) -> int:
        """The length of the longest end of `buf` that is the start of a pattern, unless a
        whole pattern ends the buffer (0: nothing to hold)."""
        start = max(0, len(buf) - self._keep)
        for i in range(start, len(buf)):
            candidates = self._by_first.get(buf[i])
            if candidates is None:
                continue
            tail = buf[i:]
            # Held from here, unless a whole match that starts earlier covers this byte.
            if any(p.startswith(tail) and len(p) > len(tail) for p in candidates) and not self._covered(buf, i):
                return len(buf) - i
        return 0

    def _covered(self, buf: bytes, i: int) -> bool:
        assert self._regex is not None
        return any(m.start() < i < m.end() for m in self._regex.finditer(buf, max(0, i - self._keep)))


def _b64_core(data: bytes, shift: int, encode: Callable[[bytes], bytes]) -> bytes:
    """The base64 characters that depend only on `data` when it starts `shift` bytes into a
    3-byte group: the same wherever `data` sits in a longer text at that alignment."""
    encoded = encode(b"\0" * shift + data)
    start = -(-8 * shift // 6)
    end = 8 * (shift + len(data)) // 6
    return encoded[start:end]
