"""What runs in a pre-spawned sandbox until its request comes: a stub per language.

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

from .languages import INTERPRETERS
from .spec import Language, SandboxSpec

_PY = """\
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

_NODE = """\
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
_BASH = """\
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
exec /usr/bin/bash PROGRAM
}
"""


def stub(language: Language, ready_fd: int) -> bytes:
    text = {"python": _PY, "node": _NODE, "bash": _BASH}[language]
    text = text.replace("READY_FD", str(ready_fd)).replace("PROGRAM", INTERPRETERS[language].program_path)
    return text.encode()


def request(spec: SandboxSpec) -> bytes:
    """The bytes a stub reads: the request's variables, then its code."""
    env = b"".join(f"{k}={v}".encode("utf-8", "surrogatepass") + b"\0" for k, v in spec.env.items())
    return b"%010d%010d" % (len(env), len(spec.code)) + env + spec.code
