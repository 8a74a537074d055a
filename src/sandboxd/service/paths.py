"""Paths clients send, and what is refused in them: in Python, and as JSON Schema patterns.

Two kinds of path arrive: a file or directory of a thread or volume (the files API and the MCP
files tools; `normalize_path`), and an execution's `sub_paths` (service/requests.py). Both
refuse NUL, backslashes, `..` and the percent-encodings of `ENCODED` in any case, so that no
layer below that decodes or splits differently can be led out of the storage root. The files
API says which of them it found; `sub_paths` refuses `..` anywhere, not only as a component.
"""

from __future__ import annotations

from ..errors import InvalidRequest
from .storage_kind import StorageKind

THREAD_ROOT = "/home/baponi"
VOLUME_MOUNT = "/data"
MAX_PATH_CHARS = 4096
MAX_NAME_BYTES = 255

#: Percent-encoded dot, slash, backslash, NUL, percent (a double encoding) and the overlong
#: UTF-8 lead bytes of '.' and '/': lowercase, matched in any case.
ENCODED = ("%2e", "%2f", "%5c", "%00", "%25", "%c0", "%c1")


def _any_case(code: str) -> str:
    return "".join(f"[{c}{c.upper()}]" if c.isalpha() else c for c in code)


#: `ENCODED` as a JSON Schema pattern (for the OpenAPI document).
ENCODED_PATTERN = "%(" + "|".join(_any_case(code[1:]) for code in ENCODED) + ")"

#: Substrings refused in a `sub_paths` entry (after lowercasing).
SUB_PATH_FORBIDDEN = ("..", *ENCODED, "\x00", "\\")
#: `SUB_PATH_FORBIDDEN` as a JSON Schema pattern.
SUB_PATH_FORBIDDEN_PATTERN = r"\.\.|" + ENCODED_PATTERN + r"|\u0000|\\"
#: What `normalize_path` refuses, as a JSON Schema pattern.
UNSAFE_PATH_PATTERN = r"\u0000|\\|" + ENCODED_PATTERN + r"|(^|/)\.\.(/|$)"


def has_forbidden(path: str, forbidden: tuple[str, ...]) -> bool:
    lowered = path.lower()
    return any(bad in lowered for bad in forbidden)


def normalize_path(raw: str, *, source: StorageKind, id: str, allow_root: bool = False) -> str:
    """The path as `a/b/c` relative to the storage root ("" is the root); InvalidRequest if unsafe.

    Accepted: `x/y`, `./x//y/`, and for a thread `/home/baponi/x/y` (for a volume
    `/data/<slug>/x/y`). Refused: other absolute paths, `..`, NUL, backslashes, and
    percent-encoded dots, slashes, backslashes, NULs and percents in any case.
    """
    if not isinstance(raw, str):
        raise InvalidRequest("path must be a string")
    if len(raw) > MAX_PATH_CHARS:
        raise InvalidRequest(f"path must be at most {MAX_PATH_CHARS} characters")
    if "\x00" in raw:
        raise InvalidRequest("path must not contain a NUL character")
    if "\\" in raw:
        raise InvalidRequest("path must not contain a backslash; use '/' between directories")
    if has_forbidden(raw, ENCODED):
        raise InvalidRequest("path must not contain percent-encoded characters such as %2e or %2f")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest("path contains invalid Unicode (a lone surrogate)") from None
    rel = raw
    if raw.startswith("/"):
        root = THREAD_ROOT if source == StorageKind.THREAD else f"{VOLUME_MOUNT}/{id}"
        if raw == root or raw.startswith(root + "/"):
            rel = raw[len(root):]
        else:
            raise InvalidRequest(
                f"path {raw[:80]!r} is outside the storage root: use a path relative to {root} "
                f"(e.g. 'data/file.txt') or an absolute path under {root}/"
            )
    parts = []
    for part in rel.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            raise InvalidRequest("path must not contain '..'")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise InvalidRequest(f"each path component must be at most {MAX_NAME_BYTES} bytes")
        parts.append(part)
    if not parts and not allow_root:
        raise InvalidRequest("path must name a file, not the storage root")
    return "/".join(parts)
