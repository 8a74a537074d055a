"""An execution's outcome as MCP content blocks, for the model that called `sandbox_execute`.

- one text block first: stdout, stderr, the exit code, the error, what was cut, the session's
  state ("session: kept", "session: reset (idle)"), the notes and the trace id (the layout of
  the SDK integrations' `result_to_llm_text`, with the rest always stated);
- each rich output in the order produced: `image/png` and `image/jpeg` as image blocks (so the
  model sees its plot), `text/html`, `text/markdown` and `image/svg+xml` as text blocks; an
  output left out for its size is said in the text instead;
- each artifact as a resource link: its signed download URL, its path as the name, the MIME
  type guessed from the name, its size.
"""

from __future__ import annotations

import mimetypes
from typing import Any

import mcp_types as types

from ..service import Outcome

#: Rich output types shown to the model as an image; the others (text) as text.
IMAGE_TYPES = frozenset({"image/png", "image/jpeg"})


def execute_content(outcome: Outcome) -> list[types.ContentBlock]:
    """The text block, then one block per rich output and one link per artifact."""
    blocks: list[types.ContentBlock] = [types.TextContent(text=execute_text(outcome))]
    for item in outcome.outputs:
        if item.get("truncated"):
            continue  # said in the text
        if item["type"] in IMAGE_TYPES:
            blocks.append(types.ImageContent(data=item["data"], mime_type=item["type"]))
        else:
            blocks.append(types.TextContent(text=item["data"]))
    for artifact in outcome.artifacts:
        blocks.append(_link(artifact))
    return blocks


def execute_text(outcome: Outcome) -> str:
    parts = [outcome.stdout.rstrip("\n")] if outcome.stdout else []
    if outcome.stderr:
        parts.append("[stderr]\n" + outcome.stderr.rstrip("\n"))
    if not parts:
        parts.append("(no output)")
    parts.append(f"[exit code: {outcome.exit_code}]")
    if outcome.error:
        why = f"{outcome.error}: {outcome.error_message}" if outcome.error_message else outcome.error
        parts.append("[error]\n" + why)
    if outcome.output_truncated:
        parts.append("[output truncated: stdout or stderr went past the server's cap]")
    if outcome.session is not None:
        parts.append(f"[{session_text(outcome.session)}]")
    if outcome.outputs:
        parts.append("[outputs: " + "; ".join(_output_line(i, item) for i, item in enumerate(outcome.outputs, 1)) + "]")
    if outcome.artifacts:
        parts.append("[files written to /data/outputs/: " + ", ".join(
            f"{a['path']} ({a['size']} bytes)" for a in outcome.artifacts
        ) + "; download links follow, valid until " + str(outcome.artifacts[0]["expires_at"]) + "]")
    if outcome.notes:
        parts.append("[notes]\n" + "\n".join(f"- {note}" for note in outcome.notes))
    parts.append(f"[trace_id: {outcome.trace_id}]")
    return "\n\n".join(parts)


def session_text(session: dict[str, str | None]) -> str:
    """`session: kept`, `session: new`, `session: reset (idle)`."""
    state = session.get("state") or "new"
    reason = session.get("reason")
    return f"session: {state}" + (f" ({reason})" if reason else "")


def _output_line(index: int, item: dict[str, Any]) -> str:
    if item.get("truncated"):
        return f"{index}. {item['type']} left out: {item.get('size')} bytes is over the size cap"
    return f"{index}. {item['type']}"


def _link(artifact: dict[str, Any]) -> types.ResourceLink:
    path = str(artifact["path"])
    return types.ResourceLink(
        uri=str(artifact["url"]),
        name=path,
        mime_type=mimetypes.guess_type(path)[0] or "application/octet-stream",
        size=int(artifact["size"]),
        description=f"/data/outputs/{path}: signed download URL (no credentials) until {artifact['expires_at']}",
    )
