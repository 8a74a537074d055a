"""Random identifiers: trace ids, key ids, org ids."""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
TRACE_ID_PATTERN = r"^trc_[A-Za-z0-9_-]{1,20}$"


#: Bytes at or above this would make `byte % 62` favour the first letters: drawn again.
_UNBIASED_BELOW = 256 - 256 % len(_ALPHABET)


def random_token(length: int) -> str:
    """`length` base62 characters from one `getrandom` call (not one per character: this is
    on every execution's path, several times)."""
    chars: list[str] = []
    while len(chars) < length:
        for byte in secrets.token_bytes(length + 8):
            if byte < _UNBIASED_BELOW:
                chars.append(_ALPHABET[byte % len(_ALPHABET)])
                if len(chars) == length:
                    break
    return "".join(chars)


def new_trace_id() -> str:
    """`trc_` + 16 base62 characters (95 bits): fits the SDK's `^trc_[a-zA-Z0-9_-]{1,20}$`."""
    return "trc_" + random_token(16)


def new_id(prefix: str) -> str:
    return f"{prefix}_{random_token(12)}"


#: A server's node id (settings.node_id, service/node.py): stored with executions, at most 48.
NODE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,47}$"
