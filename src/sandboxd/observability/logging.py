"""Structured logs: one JSON object a line on stderr, or readable lines on a terminal.

Everything logs through the standard library (`logging.getLogger`) or structlog; both end in
one handler with structlog's formatter, so uvicorn's lines, ours and those of libraries look
the same and all carry the context bound with `structlog.contextvars` (`request_id` for the
HTTP request, `trace_id` for the execution).

What is never logged: API keys, webhook secrets, environment variable values and code
bodies. No log call passes them, and `_redact` blanks fields with those names
as a second line of defence. Tracebacks are rendered without local variables (structlog's
rich and dict tracebacks would print them, and locals can hold any of the above).
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["auto", "json", "console"]

#: Libraries that log SQL with its parameters (rows hold outputs and key digests) or requests
#: at INFO and DEBUG: kept at WARNING whatever `log_level` says.
_CHATTY = ("sqlalchemy", "aiosqlite", "asyncpg", "httpx", "httpcore", "hpack")

#: Field names whose values are never written, whatever passes them.
_SECRET_FIELDS = frozenset(
    {"authorization", "api_key", "secret", "webhook_secret", "password", "token", "env", "env_vars", "code"}
)


def _redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for name in _SECRET_FIELDS.intersection(event):
        event[name] = "[redacted]"
    return event


def _renderer(fmt: LogFormat, stream: TextIO) -> Processor:
    console = fmt == "console" or (fmt == "auto" and stream.isatty())
    if console:
        return structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
    return structlog.processors.JSONRenderer()


def configure_logging(level: str = "info", fmt: LogFormat = "auto", stream: TextIO | None = None) -> None:
    """Send every log record of this process through one structlog formatter to `stream`."""
    stream = stream if stream is not None else sys.stderr
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact,
    ]
    renderer = _renderer(fmt, stream)
    final: list[Processor] = [structlog.stdlib.ProcessorFormatter.remove_processors_meta]
    if isinstance(renderer, structlog.processors.JSONRenderer):
        final.append(structlog.processors.format_exc_info)  # a plain traceback string, no locals
    final.append(renderer)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=final))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    for name in _CHATTY:
        logging.getLogger(name).setLevel(max(root.level, logging.WARNING))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi"):
        logger = logging.getLogger(name)  # uvicorn installs handlers of its own: use ours
        logger.handlers = []
        logger.propagate = True


def get_logger(name: str) -> Any:
    """A structlog logger: `log.info("event", key=value)`; its lines go where all others go."""
    return structlog.stdlib.get_logger(name)
