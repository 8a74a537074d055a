"""Reading the console's forms and query strings, and answering their errors."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from fastapi import Request

from ..errors import InvalidRequest, SandboxdError

#: Form fields that may repeat (checkboxes): kept as lists.
_MULTI = ("volume", "storage", "connector")


async def read_form(request: Request) -> dict[str, Any]:
    """The posted fields (not the CSRF token); the repeating ones as lists."""
    form = await request.form()
    values: dict[str, Any] = {}
    for name, value in form.multi_items():
        if not isinstance(value, str) or name == "csrf_token":
            continue
        if name in _MULTI:
            values.setdefault(name, []).append(value)
        else:
            values[name] = value
    return values


def one(form: dict[str, Any], name: str) -> str:
    value = form.get(name, "")
    return value if isinstance(value, str) else ""


def status_for(exc: SandboxdError) -> int:
    """The HTTP status the API answers this error with (api/errors.py's table)."""
    from ..api.errors import status_of

    return status_of(exc)


def parse_time(value: str, name: str) -> datetime | None:
    """A form's date and time (`datetime-local`: no zone, taken as UTC); None when empty."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequest(f"{name} must be a date and time like 2026-12-07T14:30") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
