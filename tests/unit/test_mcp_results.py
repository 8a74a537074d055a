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


def test_descriptions_follow_the_session_mode_and_the_inline_limit() -> None:
    from dataclasses import replace
    from datetime import datetime, timezone

    from sandboxd.mcp.tools import tool_list
    from sandboxd.service import Principal
    from sandboxd.store import Org, Sandbox

    now = datetime(2026, 12, 7, tzinfo=timezone.utc)
    org = Org(id="org_1", name="acme", created_at=now)
    sandbox = Sandbox(id="sbx_1", org_id=org.id, name="repl", cpus=1, memory_mib=512, network="none",
                      timeout_cap_s=60, created_at=now)
    for session, says in (("stateless", "Every call is a new process"), ("persistent", "the interpreter persists")):
        principal = Principal(key=None, org=org, sandbox=replace(sandbox, session=session))
        tools = {t.name: t for t in tool_list(principal, frozenset({"python"}), 4096, 65536)}
        assert says in (tools["sandbox_execute"].description or "")
        assert "up to 65536 bytes" in (tools["files_upload"].description or "")
    off = {t.name: t for t in tool_list(principal, frozenset({"python"}), 4096, 0)}
    assert "Inline content is turned off" in (off["files_upload"].description or "")
