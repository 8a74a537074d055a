"""sandbox_execute's content blocks from an Outcome (mcp/results.py), and files_upload's inline
content (mcp/tools.py FilesUploadArgs)."""

from __future__ import annotations

import base64

import mcp_types as types
import pytest

from sandboxd.errors import InvalidRequest
from sandboxd.mcp.results import execute_content, execute_text, session_text
from sandboxd.mcp.tools import ExecuteResult, FilesUploadArgs
from sandboxd.service import Outcome

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\x00" * 16).decode()
JPEG = base64.b64encode(b"\xff\xd8\xff\xe0" + b"\x00" * 16).decode()


def outcome(**kw: object) -> Outcome:
    base: dict[str, object] = dict(trace_id="trc_abc", status="success", exit_code=0, stdout="", stderr="",
                                   error=None, duration_ms=5, output_truncated=False)
    return Outcome(**{**base, **kw})  # type: ignore[arg-type]


def test_a_plain_result_is_one_text_block() -> None:
    (block,) = execute_content(outcome(stdout="42\n"))
    assert isinstance(block, types.TextContent)
    assert block.text == "42\n\n[exit code: 0]\n\n[trace_id: trc_abc]"


def test_rich_outputs_become_image_and_text_blocks_in_order() -> None:
    o = outcome(
        stdout="   a\n0  1\n",
        session={"state": "kept", "reason": None},
        outputs=(
            {"type": "text/html", "data": "<table><tr><td>1</td></tr></table>"},
            {"type": "image/png", "data": PNG},
            {"type": "image/png", "data": "", "truncated": True, "size": 9_000_000},
            {"type": "image/jpeg", "data": JPEG},
            {"type": "text/markdown", "data": "# title"},
            {"type": "image/svg+xml", "data": "<svg/>"},
        ),
    )
    text, html, png, jpeg, markdown, svg = execute_content(o)
    assert isinstance(text, types.TextContent)
    assert "[session: kept]" in text.text
    assert "3. image/png left out: 9000000 bytes is over the size cap" in text.text
    assert isinstance(html, types.TextContent) and html.text.startswith("<table>")
    assert isinstance(png, types.ImageContent) and (png.mime_type, png.data) == ("image/png", PNG)
    assert base64.b64decode(png.data).startswith(b"\x89PNG")
    assert isinstance(jpeg, types.ImageContent) and jpeg.mime_type == "image/jpeg"
    assert isinstance(markdown, types.TextContent) and markdown.text == "# title"
    assert isinstance(svg, types.TextContent) and svg.text == "<svg/>"
    # the structured result validates with them (the REST SandboxResult's fields)
    ExecuteResult.model_validate({**o.result(), "trace_id": o.trace_id, "duration_ms": 5, "output_truncated": False})


def test_artifacts_become_resource_links() -> None:
    url = "http://127.0.0.1:8080/v1/artifacts/trc_abc/report.csv?expires=1&signature=x"
    o = outcome(artifacts=({"path": "report.csv", "size": 12, "url": url, "expires_at": "2026-12-08T20:00:00Z"},
                           {"path": "plots/a.png", "size": 3, "url": url + "2", "expires_at": "2026-12-08T20:00:00Z"}))
    text, csv, png = execute_content(o)
    assert isinstance(text, types.TextContent) and "report.csv (12 bytes), plots/a.png (3 bytes)" in text.text
    assert isinstance(csv, types.ResourceLink)
    assert (csv.uri, csv.name, csv.mime_type, csv.size) == (url, "report.csv", "text/csv", 12)
    assert isinstance(png, types.ResourceLink) and png.mime_type == "image/png"


def test_session_and_notes_in_the_text() -> None:
    assert session_text({"state": "reset", "reason": "idle"}) == "session: reset (idle)"
    assert session_text({"state": "new", "reason": None}) == "session: new"
    text = execute_text(outcome(
        stdout="1\n", session={"state": "reset", "reason": "timeout"},
        notes=("timeout lowered from 120 s to this key's cap of 60 s", "this sandbox has no network access"),
    ))
    assert text == (
        "1\n\n[exit code: 0]\n\n[session: reset (timeout)]\n\n[notes]\n"
        "- timeout lowered from 120 s to this key's cap of 60 s\n- this sandbox has no network access\n\n"
        "[trace_id: trc_abc]"
    )


def test_upload_content_text_and_base64() -> None:
    assert FilesUploadArgs(id="t", path="a.txt", content="h\u00e9").data(10) == "h\u00e9".encode()
    raw = bytes(range(256))
    args = FilesUploadArgs(id="t", path="a.bin", content=base64.b64encode(raw).decode(), encoding="base64")
    assert args.data(256) == raw
    with pytest.raises(InvalidRequest, match="over the inline limit of 255"):
        args.data(255)
    with pytest.raises(InvalidRequest, match="not valid base64"):
        FilesUploadArgs(id="t", path="a.bin", content="not base64!", encoding="base64").data(100)
