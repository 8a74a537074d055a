"""Where a key's storage shows in the sandbox: prefixes and `sub_paths`, the three levels.

A bucket is narrowed by the connection's prefix (set by the admin), then by the key's prefix
(set on the binding), then by the request's `sub_paths`; each level only narrows the one
above, and an unset level inherits. Volumes take the `sub_paths` level too. All of it is
decided here, on the server, from what the key is bound to: nothing the client says widens it.

`sub_paths` (full sandbox paths under /data/): without it, every mount of the key is shown
whole; with some, the sandbox sees only the listed directories, and mounts no entry names are
not mounted at all (least privilege: an agent given one folder sees one folder; an empty
list shows no mount). A listed directory that does not exist is made when the binding is
writable, refused when it is not.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from ..buckets.providers import check_path_in_bucket
from ..errors import InvalidRequest
from .paths import ENCODED, MAX_NAME_BYTES, SUB_PATH_FORBIDDEN, VOLUME_MOUNT, has_forbidden

def prefix_of(raw: str, what: str) -> str:
    """A prefix inside a bucket as `a/b` ("" = all of it): the bucket path rule
    (buckets/providers.py), and no percent-encodings, no component over 255 bytes."""
    if has_forbidden(raw, ENCODED):
        raise InvalidRequest(f"{what} must not contain percent-encoded characters such as %2e or %2f")
    try:
        path = check_path_in_bucket(raw)
    except InvalidRequest as exc:
        raise InvalidRequest(f"{what}: {exc.message}") from None
    if any(len(part.encode("utf-8", errors="surrogatepass")) > MAX_NAME_BYTES for part in path.split("/")):
        raise InvalidRequest(f"each part of {what} must be at most {MAX_NAME_BYTES} bytes")
    return path


def join(*prefixes: str) -> str:
    return "/".join(p for p in prefixes if p)


def parse_binding(spec: str) -> tuple[str, bool, str]:
    """`NAME[:ro][:prefix=PATH]` (the CLI's `--storage`) -> (name, read_only, prefix)."""
    name, *options = spec.split(":")
    read_only, prefix = False, ""
    for option in options:
        if option == "ro":
            read_only = True
        elif option == "rw":
            read_only = False
        elif option.startswith("prefix="):
            prefix = prefix_of(option.removeprefix("prefix="), "the key's prefix")
        else:
            raise InvalidRequest(f"--storage {spec!r}: expected NAME[:ro][:prefix=PATH], not {option!r}")
    if not name:
        raise InvalidRequest(f"--storage {spec!r}: the storage connection's name is missing")
    return name, read_only, prefix


def narrow(sub_paths: Sequence[str] | None, slugs: Collection[str]) -> dict[str, tuple[str, ...]]:
    """The directories to show of each mount: slug -> paths below it ("" = the whole mount).

    A slug absent from the answer is not mounted. An entry outside every mount of the key is
    refused (400), naming the entry and the mounts there are."""
    if sub_paths is None:  # unset: the level inherits
        return {slug: ("",) for slug in slugs}
    wanted: dict[str, set[str]] = {}
    for entry in sub_paths:
        _check_entry(entry)
        slug, _, rest = entry.removeprefix(VOLUME_MOUNT + "/").partition("/")
        if not entry.startswith(VOLUME_MOUNT + "/") or slug not in slugs:
            have = ", ".join(f"{VOLUME_MOUNT}/{s}/" for s in sorted(slugs)) or "none"
            raise InvalidRequest(
                f"sub_paths entry {entry[:80]!r} is not inside a mount of this API key (its mounts: {have})"
            )
        parts = [p for p in rest.split("/") if p not in ("", ".")]
        if ".." in parts:  # refused by the request's validation already; never widened here
            raise InvalidRequest(f"sub_paths entry {entry[:80]!r} must not contain '..'")
        wanted.setdefault(slug, set()).add("/".join(parts))
    return {slug: _outermost(subs) for slug, subs in wanted.items()}


def _check_entry(entry: str) -> None:
    """What the request's validation refuses, refused here again (this is where a path is
    decided; MCP and REST both come through): control characters, a lone surrogate, '..',
    backslashes, percent-encodings, an over-long name."""
    if any(ord(c) < 32 or c == "\x7f" for c in entry) or has_forbidden(entry, SUB_PATH_FORBIDDEN):
        raise InvalidRequest(
            f"sub_paths entry {entry[:80]!r} must not contain control characters, '..', backslashes "
            "or percent-encodings"
        )
    try:
        names = [part.encode("utf-8") for part in entry.split("/")]
    except UnicodeEncodeError:
        raise InvalidRequest(f"sub_paths entry {entry[:80]!r} is not valid Unicode (a lone surrogate)") from None
    if any(len(name) > MAX_NAME_BYTES for name in names):
        raise InvalidRequest(f"each name in sub_paths entry {entry[:80]!r} must be at most {MAX_NAME_BYTES} bytes")


def _outermost(subs: set[str]) -> tuple[str, ...]:
    """Only the entries no other entry contains: a listed directory's bind shows its children."""
    keep = [
        s for s in subs
        if not any(o != s and (o == "" or s.startswith(o + "/")) for o in subs)
    ]
    return tuple(sorted(keep))


def dest(slug: str, sub: str) -> str:
    """Where a mount (or one directory of it) shows in the sandbox."""
    return f"{VOLUME_MOUNT}/{slug}" + (f"/{sub}" if sub else "")
