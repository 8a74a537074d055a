"""The language registry is the one place a language is declared: everything else reads it."""

from __future__ import annotations

from typing import get_args

from sandboxd.runtime import warm
from sandboxd.runtime.languages import DEFAULT_LANGUAGE, INTERPRETERS, LANGUAGES, Language, spoken
from sandboxd.service.requests import ExecuteRequest, parse_execute_request


def test_the_language_type_names_exactly_the_registry() -> None:
    assert set(get_args(Language)) == set(INTERPRETERS) == set(LANGUAGES)
    assert DEFAULT_LANGUAGE in INTERPRETERS
    for language, interpreter in INTERPRETERS.items():
        assert interpreter.language == language


def test_each_language_is_complete_and_distinct() -> None:
    interpreters = list(INTERPRETERS.values())
    assert len({i.program_name for i in interpreters}) == len(interpreters)
    for i in interpreters:
        assert i.binary.startswith("/") and i.title and i.summary.startswith(i.language)
        assert i.install_hint and i.binary in i.install_hint
        stub = warm.stub(i.language, 9).decode()
        assert "READY_FD" not in stub and "9" in stub


def test_the_request_model_takes_the_registry_languages() -> None:
    for language in INTERPRETERS:
        assert parse_execute_request({"code": "x", "language": language}).language == language
    assert ExecuteRequest(code="x").language == DEFAULT_LANGUAGE
    assert ExecuteRequest.model_json_schema()["properties"]["language"]["enum"] == list(LANGUAGES)


def test_spoken() -> None:
    assert spoken(["a"]) == "a"
    assert spoken(["a", "b"]) == "a or b"
    assert spoken(["a", "b", "c"], "and") == "a, b and c"


def test_python_stub_parses_as_python_3_8() -> None:
    """An image may bring any Python >= 3.8: the warm stub uses nothing newer."""
    import ast

    ast.parse(warm.stub("python", 9).decode(), feature_version=(3, 8))


def test_bash_stub_runs_the_images_bash() -> None:
    assert "exec /opt/bin/bash " in warm.stub("bash", 9, "/opt/bin/bash").decode()
    assert "exec /usr/bin/bash " in warm.stub("bash", 9).decode()
