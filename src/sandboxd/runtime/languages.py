"""The languages sandboxd runs: one entry each, and everything every surface needs to know of it.

A new language is added here and nowhere else: its name in `Language`, and an `Interpreter`
in `INTERPRETERS` (the binary in the runtime image, the program file's name, the warm-pool
stub, how `sandboxd doctor` says to install it, how the API and MCP texts name it). Request
validation, the MCP tool schema, the pool and its metrics, doctor and the CLI all read them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

#: The languages of `INTERPRETERS`, as a type (tests/unit/test_languages.py keeps them equal).
Language = Literal["python", "node", "bash"]

#: The program is copied here (read-only) by bwrap; nothing of the host path is visible.
PROGRAM_DIR = "/run/sandboxd"


@dataclass(frozen=True)
class Interpreter:
    language: Language
    #: The interpreter in the host image; an imported image's is `command` found on its PATH.
    binary: str
    command: str
    program_name: str
    #: The language as the API's texts name it ("Run Python, Node.js or Bash code").
    title: str
    #: The language as the MCP `language` field describes it ("python (python3)").
    summary: str
    #: What `sandboxd doctor` tells the operator when `binary` is missing.
    install_hint: str
    #: What a pre-spawned sandbox runs until its request comes (the protocol: runtime/warm.py).
    #: `READY_FD`, `PROGRAM` and `BINARY` are replaced by the ready pipe's fd, `program_path` and
    #: the image's interpreter.
    warm_stub: str

    @property
    def program_path(self) -> str:
        return f"{PROGRAM_DIR}/{self.program_name}"


_PYTHON_STUB = """\
def _sandboxd_main():
    import os, sys
    os.write(READY_FD, b"1")
    os.close(READY_FD)
    head = sys.stdin.buffer.read(20)
    env = sys.stdin.buffer.read(int(head[:10]))
    code = sys.stdin.buffer.read(int(head[10:]))
    for item in env.split(b"\\0"):
        if item:
            key, _, value = item.partition(b"=")
            os.environb[key] = value
    import site
    user_site = site.getusersitepackages()
    if (site.ENABLE_USER_SITE and not os.environ.get("PYTHONNOUSERSITE")
            and user_site not in sys.path and os.path.isdir(user_site)):
        # A thread's home arrives after start-up: add its `pip install --user` site where
        # start-up would have (before the image's site-packages).
        system = [sys.path.index(p) for p in site.getsitepackages() if p in sys.path]
        at = min(system, default=len(sys.path))
        rest = sys.path[at:]
        del sys.path[at:]
        site.addsitedir(user_site)
        sys.path.extend(rest)
    path = __file__
    with open(path, "wb") as program:
        program.write(code)
    fd = os.open("/dev/null", os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    scope = sys.modules["__main__"].__dict__
    builtins = scope["__builtins__"]
    scope.clear()
    scope.update(__name__="__main__", __file__=path, __builtins__=builtins, __doc__=None,
                 __package__=None, __spec__=None, __loader__=None, __cached__=None)
    try:
        exec(compile(code, path, "exec"), scope)
    except SystemExit:
        raise
    except BaseException as exc:  # reported as the interpreter would, without this frame
        exc = exc.with_traceback(exc.__traceback__.tb_next)
        sys.excepthook(type(exc), exc, exc.__traceback__)
        sys.exit(1)
_sandboxd_main()
"""

_NODE_STUB = """\
'use strict';
const fs = require('fs');
fs.writeSync(READY_FD, '1');
fs.closeSync(READY_FD);
function readExactly(length) {
  const buf = Buffer.alloc(length);
  for (let got = 0; got < length;) {
    const n = fs.readSync(0, buf, got, length - got, null);
    if (n === 0) process.exit(125);
    got += n;
  }
  return buf;
}
const head = readExactly(20).toString();
const env = readExactly(parseInt(head.slice(0, 10), 10));
const code = readExactly(parseInt(head.slice(10), 10));
for (const item of env.toString().split('\\0')) {
  if (item) { const i = item.indexOf('='); process.env[item.slice(0, i)] = item.slice(i + 1); }
}
fs.writeFileSync(__filename, code);
fs.closeSync(0);
fs.openSync('/dev/null', 'r');
module._compile(code.toString(), __filename);
"""

# One brace group: bash parses all of it before running any, so overwriting the file it was
# read from (this stub's own) cannot change what it runs next.
_BASH_STUB = """\
{
printf 1 >&READY_FD
exec READY_FD>&-
LC_ALL=C
IFS= read -r -N 10 n
IFS= read -r -N 10 size
n=$((10#$n))
while [ "$n" -gt 0 ] && IFS= read -r -d '' item; do
  n=$((n - ${#item} - 1))
  export -- "$item"
done
head -c $((10#$size)) >| PROGRAM
exec </dev/null
exec BINARY PROGRAM
}
"""

INTERPRETERS: dict[Language, Interpreter] = {
    "python": Interpreter(
        "python", "/usr/bin/python3", "python3", "main.py", "Python", "python (python3)",
        "install Python 3 at /usr/bin/python3: apt-get install python3", _PYTHON_STUB,
    ),
    "node": Interpreter(
        "node", "/usr/bin/node", "node", "main.js", "Node.js", "node (Node.js)",
        "install Node.js at /usr/bin/node: apt-get install nodejs", _NODE_STUB,
    ),
    "bash": Interpreter(
        "bash", "/usr/bin/bash", "bash", "main.sh", "Bash", "bash",
        "install bash at /usr/bin/bash: apt-get install bash", _BASH_STUB,
    ),
}

#: Every language, in the order the API lists them.
LANGUAGES: tuple[Language, ...] = tuple(INTERPRETERS)
#: What runs when a request names no language (spec §3.2).
DEFAULT_LANGUAGE: Language = "python"


def spoken(words: Iterable[str], conjunction: str = "or") -> str:
    """'a, b or c': how the texts of the API, MCP tools and CLI list the languages."""
    items = list(words)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} {conjunction} {items[-1]}"


def available_languages(image_root: Path = Path("/")) -> frozenset[Language]:
    """Languages whose interpreter exists and is executable in the image."""
    found = set()
    for lang, interp in INTERPRETERS.items():
        path = image_root / interp.binary.lstrip("/")
        if path.is_file() and os.access(path, os.X_OK):
            found.add(lang)
    return frozenset(found)
