"""`sandbox_execute`'s input schema is derived from the REST request model (mcp/tools.py). It may
differ from the schema that was written out by hand only where the REST model states a rule
the server already enforced: nothing the server accepts is refused, nothing else is offered."""

from __future__ import annotations

from typing import Any

import pytest
from jsonschema import Draft202012Validator

from sandboxd.errors import InvalidRequest
from sandboxd.mcp.tools import EXECUTE, EXECUTE_FIELDS, INPUT_SCHEMAS
from sandboxd.service import parse_execute_request

#: The tool's schema as it was written by hand in mcp/tools.py (descriptions left out).
HAND_WRITTEN: dict[str, Any] = {
    "type": "object",
    "properties": {
        "code": {"type": "string", "minLength": 1},
        "language": {"type": "string", "enum": ["python", "node", "bash"], "default": "python"},
        "timeout": {"type": "integer", "minimum": 1, "maximum": 3600, "default": 60},
        "thread_id": {
            "type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[a-zA-Z0-9][a-zA-Z0-9_-]*$",
        },
        "env_vars": {
            "type": "object",
            "maxProperties": 50,
            "propertyNames": {"pattern": "^[A-Z][A-Z0-9_]*$", "maxLength": 128},
            "additionalProperties": {"type": "string", "maxLength": 4096},
        },
        "metadata": {
            "type": "object",
            "maxProperties": 10,
            "propertyNames": {"pattern": "^[a-zA-Z0-9][a-zA-Z0-9_.\\-]*$", "maxLength": 40},
            "additionalProperties": {"type": "string", "maxLength": 256},
        },
    },
    "required": ["code"],
    "additionalProperties": False,
}

#: What the derived schema adds, each a rule ExecuteRequest enforces (checked below).
ADDED = {
    ("code", "maxLength"): 1_048_576,
    ("env_vars", "additionalProperties", "pattern"): "^[^\\u0000-\\u0008\\u000b\\u000c\\u000e-\\u001f]*$",
    ("metadata", "propertyNames", "minLength"): 1,
}
#: Written differently, accepting the same strings (test_paths_ids.py checks the pattern).
REWRITTEN: dict[tuple[str, ...], str] = {("thread_id", "pattern"): "^[a-zA-Z0-9][a-zA-Z0-9_-]{0,127}$"}

SCHEMA = INPUT_SCHEMAS[EXECUTE]


def _leaves(node: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if not isinstance(node, dict) or not node:
        return {path: node}
    out: dict[tuple[str, ...], Any] = {}
    for key, value in node.items():
        out.update(_leaves(value, (*path, key)))
    return out


def test_the_schema_is_the_hand_written_one_plus_enforced_rules() -> None:
    assert SCHEMA["type"] == "object" and SCHEMA["additionalProperties"] is False
    assert SCHEMA["required"] == HAND_WRITTEN["required"]
    assert list(SCHEMA["properties"]) == list(EXECUTE_FIELDS) == list(HAND_WRITTEN["properties"])
    derived = {p: v for p, v in _leaves(SCHEMA["properties"]).items() if p[-1] != "description"}
    written = _leaves(HAND_WRITTEN["properties"])
    for path, value in written.items():
        assert derived[path] == REWRITTEN.get(path, value), path
    assert {p: v for p, v in derived.items() if p not in written} == ADDED
    for name, prop in SCHEMA["properties"].items():
        assert prop["description"], name
    Draft202012Validator.check_schema(SCHEMA)


def _rest_accepts(arguments: dict[str, Any]) -> bool:
    try:
        parse_execute_request(arguments)
    except InvalidRequest:
        return False
    return True


CASES: list[dict[str, Any]] = [
    {"code": "print(1)"},
    {"code": "x", "language": "node", "timeout": 30, "thread_id": "t-1_a",
     "env_vars": {"API_TOKEN": "x\ty\n"}, "metadata": {"run.id": "7"}},
    {"code": "x" * 1_048_576},
    {"code": "x" * 1_048_577},
    {"code": "x", "env_vars": {"A": "nul\x00"}},
    {"code": "x", "env_vars": {"A": "bell\x07"}},
    {"code": "x", "metadata": {"": "v"}},
    {"code": "x", "thread_id": "a" * 128},
    {"code": "x", "thread_id": "a" * 129},
    {"code": "x", "thread_id": "-a"},
    {"code": ""},
    {"code": "x", "language": "ruby"},
    {"code": "x", "timeout": 0},
    {"code": "x", "env_vars": {"lower": "v"}},
    {"code": "x", "webhook_url": "https://example.com"},
    {},
]


@pytest.mark.parametrize("arguments", CASES, ids=range(len(CASES)))
def test_the_derived_schema_refuses_only_what_the_server_refuses(arguments: dict[str, Any]) -> None:
    before = Draft202012Validator(HAND_WRITTEN).is_valid(arguments)
    after = Draft202012Validator(SCHEMA).is_valid(arguments)
    if after:
        assert before and _rest_accepts(arguments)
    elif before:
        assert not _rest_accepts(arguments)
