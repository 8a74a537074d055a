"""Identifiers: the patterns clients' ids must match, and random ones (trace ids, key ids, org ids).

Each pattern is written once, here, in a form both Python's `re` and JSON Schema (ECMA-262)
read the same way; validators, the OpenAPI document and the MCP tool schemas all use it.
"""

from __future__ import annotations

import secrets
import string

_ALPHABET = string.ascii_letters + string.digits
TRACE_ID_PATTERN = r"^trc_[A-Za-z0-9_-]{1,20}$"

#: A thread_id (spec §3.2): what THREAD_ID_RULE says.
THREAD_ID_MAX_CHARS = 128
THREAD_ID_PATTERN = rf"^[a-zA-Z0-9][a-zA-Z0-9_-]{{0,{THREAD_ID_MAX_CHARS - 1}}}$"
THREAD_ID_RULE = (
    f"1-{THREAD_ID_MAX_CHARS} characters of letters, digits, '_' or '-', starting with a letter or digit"
)
#: A name an operator gives (an organization, a sandbox config, an image): safe in paths and URLs.
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"
NAME_RULE = "1-63 lowercase letters, digits, '_' or '-'"
#: Names under /data that sandboxd itself uses (runtime/outputs.py: /data/outputs): a volume or
#: a storage connection, shown at /data/<name>/, may not take one.
RESERVED_DATA_NAMES = frozenset({"outputs"})


def reserved_data_name(name: str) -> str | None:
    """Why a volume or storage connection may not be called `name`; None when it may."""
    if name in RESERVED_DATA_NAMES:
        return f"{name!r} is reserved: /data/{name}/ holds the files a run keeps as artifacts; choose another name"
    return None


#: A volume as a files request may name it: a slug (service/volumes.py makes them lowercase, at
#: most 63 characters), checked loosely so that an unknown one is 404, not 400.
VOLUME_ID_PATTERN = r"^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}$"


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
