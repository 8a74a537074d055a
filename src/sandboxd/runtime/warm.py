"""What runs in a pre-spawned sandbox until its request comes: a stub per language.

A pooled sandbox is started exactly like a cold one (same bwrap argv, cgroup, rlimits, seccomp,
uid), except that its program is a stub: it signals on `ready_fd` once the interpreter is up,
then blocks reading stdin. The request arrives there as
`<10-digit length of the env block><KEY=VALUE\\0...><code>`; the stub puts the variables in
the environment, points stdin at /dev/null (as a cold run has it), closes its signal fd and
runs the code as the main program at the same path a cold run uses. The stub reads only what
the server wrote; everything it does, it does inside the sandbox with the code's privileges.

What differs from a cold run, visibly to the code: Python's `__file__` names the program path
but reading that file gives the stub; Node's stack traces end in one stub frame; Bash runs the
code with `bash -c` (so `$0` is the program path but `BASH_SOURCE` is empty).
"""

from __future__ import annotations

from .languages import INTERPRETERS
from .spec import Language, SandboxSpec

_PY = """\
def _sandboxd_main():
    import linecache, os, sys
    os.write(READY_FD, b"1")
    os.close(READY_FD)
    data = sys.stdin.buffer.read()
    n = int(data[:10])
    for item in data[10:10 + n].split(b"\\0"):
        if item:
            key, _, value = item.partition(b"=")
            os.environb[key] = value
    code = data[10 + n:]
    fd = os.open("/dev/null", os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    path = __file__
    linecache.cache[path] = (len(code), None, code.decode("utf-8", "replace").splitlines(True), path)
    scope = sys.modules["__main__"].__dict__
    builtins = scope["__builtins__"]
    scope.clear()
    scope.update(__name__="__main__", __file__=path, __builtins__=builtins, __doc__=None,
                 __package__=None, __spec__=None, __loader__=None, __cached__=None)
    try:
        exec(compile(code, path, "exec"), scope)
    except SystemExit:
        raise
    except BaseException as exc:  # as the interpreter reports it, without this frame
        exc = exc.with_traceback(exc.__traceback__.tb_next)
        if isinstance(exc, SyntaxError) and exc.filename == path and exc.lineno:
            exc.text = linecache.getline(path, exc.lineno)  # the parser read it from the stub file
        if sys.excepthook is sys.__excepthook__:
            import traceback
            traceback.print_exception(exc)  # reads the code's lines through linecache
        else:
            sys.excepthook(type(exc), exc, exc.__traceback__)
        sys.exit(1)
_sandboxd_main()
"""

_NODE = """\
'use strict';
const fs = require('fs');
fs.writeSync(READY_FD, '1');
fs.closeSync(READY_FD);
const data = fs.readFileSync(0);
const n = parseInt(data.subarray(0, 10).toString(), 10);
for (const item of data.subarray(10, 10 + n).toString().split('\\0')) {
  if (item) { const i = item.indexOf('='); process.env[item.slice(0, i)] = item.slice(i + 1); }
}
fs.closeSync(0);
fs.openSync('/dev/null', 'r');
module._compile(data.subarray(10 + n).toString(), __filename);
"""

_BASH = """\
printf 1 >&READY_FD
exec READY_FD>&-
LC_ALL=C
IFS= read -r -N 10 n
n=$((10#$n))
while [ "$n" -gt 0 ] && IFS= read -r -d '' item; do
  n=$((n - ${#item} - 1))
  export -- "$item"
done
code=$(cat; printf x)
unset LC_ALL
exec </dev/null
exec /usr/bin/bash -c "${code%x}" "PROGRAM"
"""


def stub(language: Language, ready_fd: int) -> bytes:
    text = {"python": _PY, "node": _NODE, "bash": _BASH}[language]
    text = text.replace("READY_FD", str(ready_fd)).replace("PROGRAM", INTERPRETERS[language].program_path)
    return text.encode()


def request(spec: SandboxSpec) -> bytes:
    """The bytes a stub reads: the request's variables, then its code."""
    env = b"".join(f"{k}={v}".encode("utf-8", "surrogatepass") + b"\0" for k, v in spec.env.items())
    return b"%010d" % len(env) + env + spec.code
