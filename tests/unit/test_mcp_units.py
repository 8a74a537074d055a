"""The MCP surface's pure parts: Host rules, Bearer parsing, tool descriptions, result text."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from sandboxd.config import Settings
from sandboxd.mcp.endpoint import transport_security
from sandboxd.mcp.handlers import _inline_text
from sandboxd.mcp.results import execute_text as _execute_text
from sandboxd.mcp.tools import INPUT_SCHEMAS, tool_list
from sandboxd.service import Outcome, Principal
from sandboxd.service.auth import bearer_token
from sandboxd.store import Image, Org, Sandbox, Volume

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def settings(**kw: object) -> Settings:
    return Settings(data_dir=Path("/nonexistent/sandboxd-test"), **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer sk-x", "sk-x"),
        ("bearer sk-x", "sk-x"),
        ("BEARER sk-x", "sk-x"),
        ("Bearer", None),
        ("Bearer ", None),
        ("Basic dXNlcjpwdw==", None),
        ("", None),
        (None, None),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_hosts_default_to_localhost_on_any_port() -> None:
    sec = transport_security(settings())
    assert sec.enable_dns_rebinding_protection
    assert set(sec.allowed_hosts) == {
        "127.0.0.1", "127.0.0.1:*", "localhost", "localhost:*", "[::1]", "[::1]:*",
    }
    assert "http://localhost:*" in sec.allowed_origins and "https://127.0.0.1" in sec.allowed_origins


def test_public_hosts_and_bind_address() -> None:
    sec = transport_security(settings(host="10.1.2.3", public_hosts="sandbox.example.com, api.example.com:8443, [2001:db8::1]:80"))
    hosts = set(sec.allowed_hosts)
    assert {"10.1.2.3", "10.1.2.3:*", "sandbox.example.com", "sandbox.example.com:*"} <= hosts
    assert "api.example.com:8443" in hosts and "api.example.com:*" not in hosts
    assert "[2001:db8::1]:80" in hosts
    assert "https://sandbox.example.com" in sec.allowed_origins
    assert "https://api.example.com:8443" in sec.allowed_origins


@pytest.mark.parametrize("bind", ["0.0.0.0", "::"])
def test_wildcard_bind_address_is_not_a_host_name(bind: str) -> None:
    hosts = transport_security(settings(host=bind)).allowed_hosts
    assert not any(h.startswith(("0.0.0.0", "::", "[::]")) for h in hosts)


def test_star_turns_the_check_off() -> None:
    assert not transport_security(settings(public_hosts="*")).enable_dns_rebinding_protection


def _principal(network: str = "none", volumes: tuple[tuple[Volume, bool], ...] = ()) -> Principal:
    org = Org(id="org_1", name="acme", created_at=NOW)
    sandbox = Sandbox(id="sbx_1", org_id=org.id, name="big", cpus=2.5, memory_mib=4096, network=network,
                      timeout_cap_s=900, created_at=NOW)
    return Principal(key=None, org=org, sandbox=sandbox, volumes=volumes)


def test_tool_descriptions_state_the_keys_sandbox() -> None:
    data = Volume(id="vol_1", org_id="org_1", slug="datasets", quota_mib=10, created_at=NOW)
    scratch = Volume(id="vol_2", org_id="org_1", slug="scratch", quota_mib=10, created_at=NOW)
    tools = {t.name: t for t in tool_list(_principal(volumes=((data, True), (scratch, False))), frozenset({"python", "bash"}), 4096)}
    text = tools["sandbox_execute"].description or ""
    assert "bash, python on the image 'host';" in text
    assert "timeout at most 900 s" in text and "2.5 CPU" in text and "4096 MiB memory" in text
    assert "no network access" in text and "up to 4096 bytes" in text
    assert "/data/datasets/ (read-only)" in text and "/data/scratch/ (read-write)" in text
    assert tools["sandbox_execute"].annotations is not None
    assert tools["sandbox_execute"].annotations.open_world_hint is False
    for tool in tools.values():
        assert tool.input_schema == INPUT_SCHEMAS[tool.name]
        Draft202012Validator.check_schema(tool.input_schema)


def test_execute_schema_accepts_what_the_rest_model_accepts() -> None:
    validator = Draft202012Validator(INPUT_SCHEMAS["sandbox_execute"])
    good = {"code": "print(1)", "language": "node", "timeout": 30, "thread_id": "t-1_a",
            "env_vars": {"API_TOKEN": "x"}, "metadata": {"run.id": "7"}}
    assert list(validator.iter_errors(good)) == []
    for bad in ({}, {"code": ""}, {"code": "x", "language": "ruby"}, {"code": "x", "timeout": 0},
                {"code": "x", "thread_id": "-x"}, {"code": "x", "env_vars": {"lower": "v"}},
                {"code": "x", "webhook_url": "https://example.com"}):
        assert list(validator.iter_errors(bad)), bad


def _outcome(**kw: object) -> Outcome:
    base: dict[str, object] = dict(trace_id="trc_abc", status="success", exit_code=0, stdout="", stderr="",
                                   error=None, duration_ms=5, output_truncated=False)
    return Outcome(**{**base, **kw})  # type: ignore[arg-type]


def test_execute_text() -> None:
    assert _execute_text(_outcome(stdout="42\n")) == "42\n\n[exit code: 0]\n\n[trace_id: trc_abc]"
    assert _execute_text(_outcome()) == "(no output)\n\n[exit code: 0]\n\n[trace_id: trc_abc]"
    text = _execute_text(_outcome(status="timeout", exit_code=137, stderr="boom\n", error="timeout", output_truncated=True))
    assert text == (
        "[stderr]\nboom\n\n[exit code: 137]\n\n[error]\ntimeout\n\n"
        "[output truncated: stdout or stderr went past the server's cap]\n\n[trace_id: trc_abc]"
    )


@pytest.mark.parametrize(
    ("head", "size", "cap", "content"),
    [
        (b"hello", 5, 10, "hello"),
        (b"", 0, 10, ""),
        ("h\u00e9".encode(), 3, 3, "h\u00e9"),
        (b"x" * 11, 100, 10, None),
        (b"a\x00b", 3, 10, None),
        (b"\xff\xfe", 2, 10, None),
        (b"", 0, 0, None),
    ],
)
def test_inline_text(head: bytes, size: int, cap: int, content: str | None) -> None:
    got, why_not = _inline_text(head, size, cap)
    assert got == content
    assert (why_not is None) == (content is not None)


def test_tool_description_names_the_keys_image_and_its_languages() -> None:
    image = Image(id="img_1", org_id="org_1", name="datascience", digest="sha256:" + "c" * 64, source="t",
                  config={"binaries": {"python": "/usr/bin/python3"}}, size_bytes=1, created_at=NOW)
    principal = replace(_principal(), image=image)
    text = {t.name: t for t in tool_list(principal, frozenset({"python"}), 4096)}["sandbox_execute"].description
    assert "python on the image 'datascience';" in (text or "")
