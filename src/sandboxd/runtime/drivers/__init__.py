"""Session drivers: the program of a persistent sandbox, one per language, which runs each
execution of a thread in the same interpreter (a notebook cell, a REPL entry, a shell line).

The templates are files beside this module (`session_python.py`, `session_node.js`,
`session_bash.sh`), not strings in it: each is the program as it runs in the sandbox, so a
reader, an editor and the language's own tools see real code. They run on the image's
interpreter, not on ours (the python one is kept valid on Python 3.8 and imports only the
standard library at module level; mypy does not check it). `program()` fills in four
placeholders, written so that the unsubstituted template still parses
(`int("__SANDBOXD_CONTROL_FD__")`):

- `__SANDBOXD_CONTROL_FD__` the pipe driver -> server (`{"ready": true}`, then one JSON line per
  execution: `{"exit": <int>, "outputs": [<item>...]}`);
- `__SANDBOXD_NONCE__` the marker's nonce: 32 lowercase hex characters, so that no output holds
  the marker by chance;
- `__SANDBOXD_ITEM_MAX__`, `__SANDBOXD_TOTAL_MAX__` the caps on one rich output item and on all
  items of an execution, in bytes of the item's `data` as sent (base64 text for images).

The protocol: fd 0 carries the requests (runtime/warm.py `request()` format, one after
another; the driver moves it to a private descriptor and puts /dev/null on fd 0); after each
execution the driver writes `marker(nonce)` on fd 1 and fd 2, after everything the execution
wrote, then its JSON line on the control fd. EOF on the requests: the driver exits 0.

The driver runs as the code does, in its process (python, node) or shell (bash): code that
means to can read the nonce in the program file, print the marker or write on the control pipe.
It can only confuse the results of its own session, so the server takes the control lines as
untrusted data (types and sizes checked), as it takes the output.
"""

from __future__ import annotations

import re
from importlib.resources import files

from ..languages import Language

__all__ = ["TEMPLATES", "marker", "program"]

#: The template file of each language's driver, in this package.
TEMPLATES: dict[Language, str] = {
    "python": "session_python.py",
    "node": "session_node.js",
    "bash": "session_bash.sh",
}

_NONCE = re.compile(r"[0-9a-f]{32}")


def program(
    language: Language,
    *,
    control_fd: int,
    nonce: str,
    item_max_bytes: int,
    total_max_bytes: int,
) -> bytes:
    """The program file of a persistent sandbox running `language`."""
    if control_fd < 3:
        raise ValueError(f"control_fd must be 3 or more (0-2 are stdio), not {control_fd}")
    if not _NONCE.fullmatch(nonce):
        raise ValueError("nonce must be 32 lowercase hex characters")
    if item_max_bytes < 0 or total_max_bytes < 0:
        raise ValueError("output caps must not be negative")
    template = (files(__name__) / TEMPLATES[language]).read_text(encoding="utf-8")
    text = (
        template.replace("__SANDBOXD_CONTROL_FD__", str(control_fd))
        .replace("__SANDBOXD_NONCE__", nonce)
        .replace("__SANDBOXD_ITEM_MAX__", str(item_max_bytes))
        .replace("__SANDBOXD_TOTAL_MAX__", str(total_max_bytes))
    )
    return text.encode()


def marker(nonce: str) -> bytes:
    """What a driver writes on stdout and on stderr when an execution is over."""
    return b"\x1esandboxd-end-" + nonce.encode() + b"\x1e"
