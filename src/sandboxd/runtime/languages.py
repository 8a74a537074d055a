"""Interpreters of the runtime image, and where the program file lands inside the sandbox."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .spec import Language

#: The program is copied here (read-only) by bwrap; nothing of the host path is visible.
PROGRAM_DIR = "/run/sandboxd"


@dataclass(frozen=True)
class Interpreter:
    language: Language
    binary: str
    program_name: str

    @property
    def program_path(self) -> str:
        return f"{PROGRAM_DIR}/{self.program_name}"

    def argv(self) -> list[str]:
        return [self.binary, self.program_path]


INTERPRETERS: dict[Language, Interpreter] = {
    "python": Interpreter("python", "/usr/bin/python3", "main.py"),
    "node": Interpreter("node", "/usr/bin/node", "main.js"),
    "bash": Interpreter("bash", "/usr/bin/bash", "main.sh"),
}


def available_languages(image_root: Path = Path("/")) -> frozenset[Language]:
    """Languages whose interpreter exists and is executable in the image."""
    found = set()
    for lang, interp in INTERPRETERS.items():
        path = image_root / interp.binary.lstrip("/")
        if path.is_file() and os.access(path, os.X_OK):
            found.add(lang)
    return frozenset(found)
