"""docs/configuration.md is what the settings model renders: the reference cannot drift."""

from __future__ import annotations

from pathlib import Path

from sandboxd.config import Settings
from sandboxd.config_reference import render

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_configuration_doc_is_generated_from_the_settings() -> None:
    assert DOC.read_text() == render(), (
        "docs/configuration.md is stale: regenerate it with `sandboxd config-reference > docs/configuration.md`"
    )


def test_every_setting_is_documented() -> None:
    text = render()
    for name, field in Settings.model_fields.items():
        assert field.description, f"setting {name} has no description"
        assert f"`SANDBOXD_{name.upper()}`" in text


def test_machine_dependent_defaults_are_described_not_measured() -> None:
    row = next(line for line in render().splitlines() if line.startswith("| `max_concurrent` "))
    assert "4 × CPUs" in row
