"""docs/configuration.md, generated from the Settings model so the two cannot drift.

`sandboxd config-reference > docs/configuration.md` regenerates it; a unit test fails when
the file differs from what this module renders.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo

from .config import Settings

_FLAGS = {"data_dir": "--data-dir", "database_url": "--database-url", "host": "--host", "port": "--port"}

_HEADER = """\
# Configuration reference

<!-- Generated from src/sandboxd/config.py by `sandboxd config-reference`; do not edit by hand.
     Regenerate: sandboxd config-reference > docs/configuration.md -->

Every setting is read from an environment variable `SANDBOXD_<NAME>` (case-insensitive);
`sandboxd serve` also takes the flags listed. A flag wins over the environment, the
environment over the default. Invalid values stop the server at start with a message naming
the setting. Under systemd, put them in `/etc/sandboxd/sandboxd.env` (see operations.md).

| setting | environment variable | type | default | meaning |
|---|---|---|---|---|
"""


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return " \\| ".join(f"`{v}`" for v in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        return " \\| ".join(_type_name(a) for a in inner) + " (optional)"
    if annotation is Path:
        return "path"
    return {bool: "bool", int: "int", float: "float", str: "string"}.get(annotation, str(annotation))


def _default(field: FieldInfo) -> str:
    extra = field.json_schema_extra
    if isinstance(extra, dict) and "default_doc" in extra:
        return str(extra["default_doc"])
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`"


def render() -> str:
    rows = []
    for name, field in Settings.model_fields.items():
        flag = f" (`{_FLAGS[name]}`)" if name in _FLAGS else ""
        meaning = (field.description or "").replace("|", "\\|").replace("<", "&lt;")
        rows.append(
            f"| `{name}`{flag} | `SANDBOXD_{name.upper()}` | {_type_name(field.annotation)} "
            f"| {_default(field)} | {meaning} |"
        )
    return _HEADER + "\n".join(rows) + "\n"
