"""The execute request and every rule of the spec (reference/baponi-api-spec.md §3.2, §3.3).

One model, used by every surface (REST, MCP, CLI), so no surface re-implements a rule.
Messages name the field, as the SDK's own client-side checks do.
"""

from __future__ import annotations

import re
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from ..envnames import ENV_NAME, RESERVED_ENV_NAMES, RESERVED_ENV_PREFIXES, reserved_env_name
from ..errors import InvalidRequest
from ..ids import THREAD_ID_MAX_CHARS, THREAD_ID_PATTERN, THREAD_ID_RULE
from ..runtime.languages import DEFAULT_LANGUAGE, LANGUAGES, Language
from ..runtime.spec import DEFAULT_TIMEOUT_S
from .paths import SUB_PATH_FORBIDDEN, SUB_PATH_FORBIDDEN_PATTERN, has_forbidden

MAX_CODE_BYTES = 1_048_576
MAX_TIMEOUT_S = 3600

_THREAD_ID = re.compile(THREAD_ID_PATTERN)
_METADATA_KEY = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")



def _integral(value: Any) -> Any:
    """JSON's `30.0` is the integer 30 (JSON Schema's `integer` says so); `30.5` stays refused."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


#: An integer in a JSON body: strict (no strings, no booleans, no fractions), but 30.0 is 30.
JsonInt = Annotated[StrictInt, BeforeValidator(_integral)]


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


# The rules below as JSON Schema, for the OpenAPI document and the MCP `sandbox_execute` tool
# (mcp/tools.py derives its schema from this model's); the validators stay the authority
# (their messages name the field). Not expressible: code's limit counts UTF-8 bytes (the schema
# counts characters) and env_vars' 64 KiB total; webhook_url must also resolve to public addresses.
_SCHEMA: dict[str, dict[str, Any]] = {
    "code": {"minLength": 1, "maxLength": MAX_CODE_BYTES},
    "timeout": {"minimum": 1, "maximum": MAX_TIMEOUT_S},
    "thread_id": _nullable(
        {"type": "string", "minLength": 1, "maxLength": THREAD_ID_MAX_CHARS, "pattern": THREAD_ID_PATTERN}
    ),
    "metadata": _nullable({
        "type": "object",
        "maxProperties": 10,
        "propertyNames": {"pattern": _METADATA_KEY.pattern, "minLength": 1, "maxLength": 40},
        "additionalProperties": {"type": "string", "maxLength": 256},
    }),
    "sub_paths": _nullable({
        "type": "array",
        "maxItems": 10,
        "items": {
            "type": "string",
            "maxLength": 512,
            "pattern": "^/data/",
            "not": {"pattern": SUB_PATH_FORBIDDEN_PATTERN},
        },
    }),
    "env_vars": _nullable({
        "type": "object",
        "maxProperties": 50,
        "propertyNames": {
            "pattern": ENV_NAME.pattern,
            "maxLength": 128,
            "not": {"anyOf": [
                {"enum": sorted(RESERVED_ENV_NAMES)},
                {"pattern": "^(" + "|".join(RESERVED_ENV_PREFIXES) + ")"},
            ]},
        },
        "additionalProperties": {
            "type": "string",
            "maxLength": 4096,
            "pattern": r"^[^\u0000-\u0008\u000b\u000c\u000e-\u001f]*$",
        },
    }),
    "webhook_url": _nullable({"type": "string", "maxLength": 2048, "pattern": "^https?://[^/?#]"}),
}


class ExecuteRequest(BaseModel):
    """Body of `POST /v1/sandbox/execute`."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    code: StrictStr = Field(
        description="Source code to run; 1 byte to 1 MB of UTF-8.", json_schema_extra=_SCHEMA["code"]
    )
    language: Language = Field(default=DEFAULT_LANGUAGE)
    timeout: JsonInt = Field(
        default=DEFAULT_TIMEOUT_S,
        description="Wall-clock seconds, 1-3600; capped by the key's sandbox.",
        json_schema_extra=_SCHEMA["timeout"],
    )
    thread_id: StrictStr | None = Field(
        default=None,
        description="Persist /home/baponi across executions with the same id.",
        json_schema_extra=_SCHEMA["thread_id"],
    )
    metadata: dict[StrictStr, StrictStr] | None = Field(
        default=None,
        description="Up to 10 string pairs, kept with the execution record.",
        json_schema_extra=_SCHEMA["metadata"],
    )
    sub_paths: list[StrictStr] | None = Field(
        default=None,
        description="Narrow storage mounts to these /data/... paths.",
        json_schema_extra=_SCHEMA["sub_paths"],
    )
    env_vars: dict[StrictStr, StrictStr] | None = Field(
        default=None,
        description="Environment variables for the code (uppercase names).",
        json_schema_extra=_SCHEMA["env_vars"],
    )
    webhook_url: StrictStr | None = Field(
        default=None,
        description="Webhook mode: the HTTPS URL the result is POSTed to.",
        json_schema_extra=_SCHEMA["webhook_url"],
    )

    @field_validator("*", mode="before")
    @classmethod
    def _valid_unicode(cls, v: Any, info: Any) -> Any:
        """Lone surrogates (JSON "\\ud800") cannot be encoded as UTF-8 anywhere downstream."""
        if _has_surrogate(v):
            raise ValueError(f"{info.field_name} contains invalid Unicode (a lone surrogate)")
        return v

    @field_validator("code")
    @classmethod
    def _code(cls, v: str) -> str:
        size = len(v.encode("utf-8"))
        if not 1 <= size <= MAX_CODE_BYTES:
            raise ValueError("code must be between 1 byte and 1 MB")
        return v

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, v: int) -> int:
        if not 1 <= v <= MAX_TIMEOUT_S:
            raise ValueError(f"timeout must be an integer between 1 and {MAX_TIMEOUT_S} seconds")
        return v

    @field_validator("thread_id")
    @classmethod
    def _thread_id(cls, v: str | None) -> str | None:
        if v is not None and not _THREAD_ID.fullmatch(v):
            raise ValueError(f"thread_id must be {THREAD_ID_RULE}")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > 10:
            raise ValueError("metadata may have at most 10 keys")
        for key, value in v.items():
            if not 1 <= len(key) <= 40 or not _METADATA_KEY.fullmatch(key):
                raise ValueError(
                    f"metadata key {key[:50]!r} must be 1-40 characters of letters, digits, "
                    "'_', '.' or '-', starting with a letter or digit"
                )
            if len(value) > 256:
                raise ValueError(f"metadata value for {key!r} must be at most 256 characters")
        return v

    @field_validator("sub_paths")
    @classmethod
    def _sub_paths(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        if len(v) > 10:
            raise ValueError("sub_paths may have at most 10 entries")
        for path in v:
            if len(path) > 512:
                raise ValueError("each sub_paths entry must be at most 512 characters")
            if not path.startswith("/data/"):
                raise ValueError(f"sub_paths entry {path[:80]!r} must start with /data/")
            if has_forbidden(path, SUB_PATH_FORBIDDEN):
                raise ValueError(
                    f"sub_paths entry {path[:80]!r} contains a traversal or encoded separator"
                )
        return v

    @field_validator("env_vars")
    @classmethod
    def _env_vars(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if len(v) > 50:
            raise ValueError("env_vars may have at most 50 entries")
        total = 0
        for key, value in v.items():
            if not key.isascii() or not 1 <= len(key) <= 128 or not ENV_NAME.fullmatch(key):
                raise ValueError(
                    f"env_vars key {key[:50]!r} must be 1-128 characters: an uppercase letter, "
                    "then uppercase letters, digits or '_'"
                )
            if reserved_env_name(key):
                raise ValueError(f"env_vars key {key!r} is reserved by the system")
            if len(value) > 4096:
                raise ValueError(f"env_vars value for {key!r} must be at most 4096 characters")
            if any(b < 0x20 and b not in (9, 10, 13) for b in value.encode("utf-8")):
                raise ValueError(f"env_vars value for {key!r} contains a NUL or control character")
            total += len(key) + len(value)
        if total > 65_536:
            raise ValueError("env_vars must total at most 65536 characters (keys plus values)")
        return v

    @field_validator("webhook_url")
    @classmethod
    def _webhook_url(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if len(v) > 2048:
            raise ValueError("webhook_url must be at most 2048 characters")
        try:
            parts = urlsplit(v)
            parts.port  # noqa: B018 - raises on a bad port
        except ValueError:
            raise ValueError("webhook_url must be an https:// URL with a host") from None
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("webhook_url must be an https:// URL with a host")
        return v


def _has_surrogate(value: Any) -> bool:
    """Whether any string in `value` holds a lone surrogate; iterative, for JSON of any depth."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def parse_execute_request(data: Any) -> ExecuteRequest:
    """Validate a decoded JSON body; raise InvalidRequest naming the first bad field."""
    try:
        return ExecuteRequest.model_validate(data)
    except ValidationError as exc:
        raise InvalidRequest(validation_message(exc.errors())) from None


_TYPE_NAMES = {
    "int_type": "an integer",
    "string_type": "a string",
    "dict_type": "an object",
    "list_type": "an array",
    "bool_type": "a boolean",
    "float_type": "a number",
}


def validation_message(errors: Any) -> str:
    """One readable sentence from pydantic's error list (the first error; the field named)."""
    if not errors:
        return "invalid request"
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    field = ".".join(loc)
    kind = err.get("type", "")
    if kind == "value_error":
        return str(err.get("ctx", {}).get("error", err.get("msg", "")))
    if kind == "missing":
        return f"{field} is required" if field else "request body is required"
    if kind == "extra_forbidden":
        return f"unknown field {field!r}"
    if kind == "json_invalid":
        return "request body is not valid JSON"
    if kind == "literal_error" and loc and loc[0] == "language":
        return f"language must be one of {', '.join(LANGUAGES)}"
    if kind in ("model_type", "model_attributes_type", "dict_type") and not field:
        if isinstance(err.get("input"), (list, int, float, bool)) or err.get("input") is None:
            return "request body must be a JSON object"
        return "request body must be a JSON object (with Content-Type: application/json)"
    if kind in _TYPE_NAMES:
        return f"{field} must be {_TYPE_NAMES[kind]}"
    return f"{field}: {err.get('msg', 'invalid value')}" if field else str(err.get("msg"))
