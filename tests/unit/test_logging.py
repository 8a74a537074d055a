"""The log pipeline on its own, in a fresh interpreter each (logging config is process-global):
JSON lines with the bound context, secrets blanked, tracebacks without local variables."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap


def run(body: str, fmt: str = "auto") -> list[str]:
    program = textwrap.dedent(
        f"""
        import logging, structlog
        from sandboxd.observability import configure_logging
        from sandboxd.observability.logging import get_logger
        configure_logging("info", {fmt!r})
        """
    ) + textwrap.dedent(body)
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    return result.stderr.splitlines()


def test_stdlib_and_structlog_lines_are_json_with_the_bound_context() -> None:
    lines = run(
        """
        structlog.contextvars.bind_contextvars(request_id="r-1", trace_id="trc_abc")
        logging.getLogger("sandboxd.x").warning("plain %s", "formatting")
        get_logger("sandboxd.y").info("structured", status=200)
        logging.getLogger("sandboxd.x").debug("below the level")
        """
    )
    records = [json.loads(line) for line in lines]
    assert [r["event"] for r in records] == ["plain formatting", "structured"]
    for r in records:
        assert r["request_id"] == "r-1" and r["trace_id"] == "trc_abc"
        assert r["timestamp"].endswith("Z") and r["level"] in ("warning", "info")
    assert records[1]["status"] == 200 and records[1]["logger"] == "sandboxd.y"


def test_secret_fields_are_blanked_and_tracebacks_have_no_locals() -> None:
    lines = run(
        """
        log = get_logger("sandboxd.z")
        log.info("oops", env_vars={"K": "envsecret-1"}, code="codesecret-2", api_key="keysecret-3")
        def fail():
            hidden = "localsecret" + "-4"
            raise ValueError("boom")
        try:
            fail()
        except ValueError:
            log.exception("failed")
            logging.getLogger("sandboxd.z").exception("failed again")
        """
    )
    text = "\n".join(lines)
    for secret in ("envsecret-1", "codesecret-2", "keysecret-3", "localsecret-4"):
        assert secret not in text
    records = [json.loads(line) for line in lines]
    assert records[0]["code"] == "[redacted]" and records[0]["env_vars"] == "[redacted]"
    assert all("ValueError: boom" in r["exception"] for r in records[1:])


def test_console_format_is_for_people() -> None:
    lines = run('get_logger("sandboxd.c").info("hello", status=200)', fmt="console")
    assert len(lines) == 1 and "hello" in lines[0] and "status" in lines[0]
    assert not lines[0].startswith("{")


def test_libraries_never_log_sql_or_requests_even_at_debug() -> None:
    lines = run(
        """
        configure_logging("debug", "json")
        import asyncio
        from sqlalchemy import text
        from sqlalchemy.ext.asyncio import create_async_engine
        async def main():
            engine = create_async_engine("sqlite+aiosqlite://")
            async with engine.connect() as conn:
                await conn.execute(text("SELECT :v"), {"v": "rowsecret-5"})
            await engine.dispose()
        asyncio.run(main())
        get_logger("sandboxd.d").debug("ours", n=1)
        """
    )
    assert "rowsecret-5" not in "\n".join(lines) and "SELECT" not in "\n".join(lines)
    assert [json.loads(line)["event"] for line in lines if '"sandboxd.d"' in line] == ["ours"]
