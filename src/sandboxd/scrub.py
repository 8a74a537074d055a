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
import json
import re
from collections.abc import Callable, Mapping
from urllib.parse import quote

#: Forms shorter than this are not matched: they would hit ordinary words. A tail of output
#: this long that begins a form is masked at the end (a cap may have cut a secret in half).
MIN_FORM = 8
#: A value over several lines (a PEM key) is also found line by line, for lines this long.
MIN_LINE = 16


def _escapes(text: str) -> list[str]:
    """How a program or an API commonly prints a string: itself, JSON- and repr-escaped (also
    with '/' escaped, as PHP does), percent-encoded."""
    as_json = json.dumps(text, ensure_ascii=False)[1:-1]
    return [text, as_json, as_json.replace("/", "\\/"), repr(text)[1:-1], quote(text, safe=""), quote(text)]


def forms(value: bytes) -> list[bytes]:
    """The forms of `value` to look for (see `paired_forms`)."""
    return list(paired_forms(value, b""))


def paired_forms(value: bytes, replacement: bytes) -> dict[bytes, bytes]:
    """Each form of `value` (as printed: itself, escaped, percent-encoded, line by line when it
    has several; base64 at each alignment, both alphabets) paired with the same form of
    `replacement`: the broker swaps the secret and the placeholder form for form, so an echo
    stays well-formed."""
    pairs: dict[bytes, bytes] = {value: replacement}
    text, other = value.decode("utf-8", "surrogateescape"), replacement.decode("utf-8", "surrogateescape")
    parts = [text] + [line.strip() for line in text.splitlines() if len(line.strip()) >= MIN_LINE]
    for part in dict.fromkeys(parts):
        for form, same in zip(_escapes(part), _escapes(other)):
            encoded = form.encode("utf-8", "surrogateescape")
            if len(encoded) >= MIN_FORM:
                pairs.setdefault(encoded, same.encode("utf-8", "surrogateescape"))
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
        """The end of the stream: what was held, replaced; a held tail of `MIN_FORM` bytes or
        more begins a pattern that was cut short (an output cap), so it is replaced whole."""
        held, self._held = self._held, b""
        if self._regex is not None and len(held) >= MIN_FORM:
            return next(self._pairs[p] for p in self._by_first[held[0]] if p.startswith(held))
        return self.replace(held)

    def _partial(self, buf: bytes) -> int:
        """The length of the longest end of `buf` that is the start of a pattern and begins
        after the last whole match (the one `replace` will make): 0 when there is none."""
        assert self._regex is not None
        after = 0
        for match in self._regex.finditer(buf):
            after = match.end()
        for i in range(max(after, len(buf) - self._keep), len(buf)):
            candidates = self._by_first.get(buf[i])
            if candidates is not None and any(p.startswith(buf[i:]) for p in candidates):
                return len(buf) - i
        return 0


def _b64_core(data: bytes, shift: int, encode: Callable[[bytes], bytes]) -> bytes:
    """The base64 characters that depend only on `data` when it starts `shift` bytes into a
    3-byte group: the same wherever `data` sits in a longer text at that alignment."""
    encoded = encode(b"\0" * shift + data)
    start = -(-8 * shift // 6)
    end = 8 * (shift + len(data)) // 6
    return encoded[start:end]
