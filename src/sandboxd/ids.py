"""Random identifiers: trace ids, key ids, org ids."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
TRACE_ID_PATTERN = r"^trc_[A-Za-z0-9_-]{1,20}$"


def random_token(length: int) -> str:
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_trace_id() -> str:
    """`trc_` + 16 base62 characters (95 bits): fits the SDK's `^trc_[a-zA-Z0-9_-]{1,20}$`."""
    return "trc_" + random_token(16)


def new_id(prefix: str) -> str:
    return f"{prefix}_{random_token(12)}"
