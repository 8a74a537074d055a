"""What runs in a pre-spawned sandbox until its request comes: a stub per language (each in
runtime/languages.py), and the request it reads.

A pooled sandbox is started exactly like a cold one (same bwrap argv, cgroup, rlimits, seccomp,
uid), except that its program file holds a stub and is writable. The stub signals on
`ready_fd` once the interpreter is up, then blocks reading stdin. The request arrives there as
`<10-digit length of the env block><10-digit length of the code><KEY=VALUE\\0...><code>`
and the stub reads exactly that much (waiting for EOF instead would wait for every process
forked meanwhile to drop its copy of the pipe: a sibling sandbox's launcher holds it during
its cgroup move). The stub puts the variables in
the environment, writes the code over the program file (so the file a cold run would have is
there: tracebacks, `__file__`, multiprocessing's spawn and worker threads read it), points
stdin at /dev/null as a cold run has it, closes its signal fd, and runs the code as the main
program. The stub reads only what the server wrote; everything it does, it does inside the
sandbox with the code's privileges.

A thread's sandbox has /home/baponi mounted after its interpreter started (`homeslot.py`), so
the Python stub adds the home's user site-packages as start-up would have.

What differs from a cold run, visibly to the code: the program file is writable (it is the
sandbox's own copy), and Node's stack traces end in one stub frame.
"""

from __future__ import annotations

import shlex

from .languages import INTERPRETERS, Language
from .spec import SandboxSpec


def stub(language: Language, ready_fd: int, binary: str | None = None) -> bytes:
    """The stub for `language`; `binary` is the image's interpreter (default: the host's)."""
    interpreter = INTERPRETERS[language]
    text = (
        interpreter.warm_stub.replace("READY_FD", str(ready_fd))
        .replace("PROGRAM", interpreter.program_path)
        .replace("BINARY", shlex.quote(binary or interpreter.binary))  # an image's path, into bash
    )
    return text.encode()


def request(spec: SandboxSpec) -> bytes:
    """The bytes a stub reads: the request's variables, then its code."""
    env = b"".join(f"{k}={v}".encode("utf-8", "surrogatepass") + b"\0" for k, v in spec.env.items())
    return b"%010d%010d" % (len(env), len(spec.code)) + env + spec.code
