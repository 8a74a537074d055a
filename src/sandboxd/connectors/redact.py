"""Known secret values out of an execution's output: `[redacted:<connector>]` in their place.

What a run's connectors hold (an env variable's value, a database password, a brokered
secret), in each form `scrub.forms` knows (itself, escaped as JSON or repr, percent-encoded,
line by line, base64 at any alignment), is replaced in
stdout and stderr as the program writes them, before anything stores, streams or delivers the
output: the event log, the stored result, webhooks and MCP results all come from there.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..runtime.spec import OutputSink, Stream
from ..scrub import StreamReplacer, forms

#: Values shorter than this are not redacted: they would blank ordinary words.
MIN_LENGTH = 6


class Redactor:
    def __init__(self, secrets: Iterable[tuple[str, str]]) -> None:
        """`secrets`: (connector name, value) pairs."""
        self._pairs: dict[bytes, bytes] = {}
        for name, value in secrets:
            if len(value.encode()) >= MIN_LENGTH:
                for form in forms(value.encode()):
                    self._pairs.setdefault(form, f"[redacted:{name}]".encode())
        self._whole = StreamReplacer(self._pairs)
        self._streams: dict[Stream, StreamReplacer] = {}

    def __bool__(self) -> bool:
        return bool(self._whole)

    def redact(self, data: bytes) -> bytes:
        """A whole output (as the stream's end does: a cut-off start of a value is masked too)."""
        whole = StreamReplacer(self._pairs)
        return whole.feed(data) + whole.flush()

    def sink(self, write: OutputSink) -> OutputSink:
        """`write` behind the redactor, for a stream of chunks; `flush(write)` at the end."""
        if not self:
            return write

        async def redacting(stream: Stream, chunk: bytes) -> None:
            replacer = self._streams.setdefault(stream, StreamReplacer(self._pairs))
            if out := replacer.feed(chunk):
                await write(stream, out)

        return redacting

    async def flush(self, write: OutputSink) -> None:
        for stream, replacer in list(self._streams.items()):
            if tail := replacer.flush():
                await write(stream, tail)
        self._streams.clear()
