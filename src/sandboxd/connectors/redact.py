"""Known secret values out of an execution's output: `[redacted:<connector>]` in their place.

What a run's connectors hold (an env variable's value, a database password, a brokered
secret) and their base64 forms are replaced in stdout and stderr as the program writes them,
before anything stores, streams or delivers the output: the event log, the stored result,
webhooks and MCP results all come from there. Output arrives in chunks, so each stream holds
back the last `longest - 1` bytes until the next chunk (or the end) shows whether a secret
starts there.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable

from ..runtime.spec import OutputSink, Stream

#: Values shorter than this are not redacted: they would blank ordinary words.
MIN_LENGTH = 6


def _forms(value: bytes) -> set[bytes]:
    b64 = base64.b64encode(value)
    url = base64.urlsafe_b64encode(value)
    return {value, b64, b64.rstrip(b"="), url, url.rstrip(b"=")}


class Redactor:
    def __init__(self, secrets: Iterable[tuple[str, str]]) -> None:
        """`secrets`: (connector name, value) pairs."""
        labels: dict[bytes, bytes] = {}
        for name, value in secrets:
            raw = value.encode()
            if len(raw) < MIN_LENGTH:
                continue
            for form in _forms(raw):
                labels.setdefault(form, f"[redacted:{name}]".encode())
        # Longest first: a value's base64 form is never cut short by another match.
        ordered = sorted(labels, key=len, reverse=True)
        self._labels = labels
        self._pattern = re.compile(b"|".join(re.escape(v) for v in ordered)) if ordered else None
        self._hold = max((len(v) for v in ordered), default=1) - 1
        self._tails: dict[Stream, bytes] = {}

    def __bool__(self) -> bool:
        return self._pattern is not None

    def redact(self, data: bytes) -> bytes:
        if self._pattern is None:
            return data
        return self._pattern.sub(lambda m: self._labels[m.group(0)], data)

    def text(self, data: str) -> str:
        return self.redact(data.encode("utf-8", "surrogateescape")).decode("utf-8", "surrogateescape")

    def sink(self, write: OutputSink) -> OutputSink:
        """`write` behind the redactor, for a stream of chunks; `flush(write)` at the end."""

        async def redacting(stream: Stream, chunk: bytes) -> None:
            if self._pattern is None:
                await write(stream, chunk)
                return
            out = self._feed(stream, chunk)
            if out:
                await write(stream, out)

        return redacting

    async def flush(self, write: OutputSink) -> None:
        for stream, tail in list(self._tails.items()):
            if tail:
                await write(stream, self.redact(tail))
        self._tails.clear()

    def _feed(self, stream: Stream, chunk: bytes) -> bytes:
        data = self._tails.get(stream, b"") + chunk
        assert self._pattern is not None
        out = bytearray()
        safe_end = max(0, len(data) - self._hold)
        pos = 0
        for match in self._pattern.finditer(data):
            if match.start() >= safe_end:
                break
            out += data[pos:match.start()] + self._labels[match.group(0)]
            pos = match.end()
        cut = max(pos, safe_end)
        out += data[pos:cut]
        self._tails[stream] = data[cut:]
        return bytes(out)
