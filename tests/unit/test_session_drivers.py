"""The session drivers (runtime/drivers) run on the host as plain subprocesses (python3, node,
bash; no sandbox), spoken to through real pipes exactly as the server speaks to them: requests
on fd 0, each stream read up to the marker, one JSON line per execution on the control pipe."""

from __future__ import annotations

import ast
import base64
import json
import os
import secrets
import selectors
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sandboxd.runtime import drivers
from sandboxd.runtime.languages import INTERPRETERS, Language
from sandboxd.runtime.spec import SandboxSpec
from sandboxd.runtime.warm import request

#: What runs each driver here: the test's own Python, the host's node and bash, or the programs
#: SANDBOXD_TEST_PYTHON, _NODE and _BASH name (an older python3, one with matplotlib and
#: pandas, a wrapper that runs an image's interpreter).
COMMANDS: dict[Language, list[str]] = {
    "python": [os.environ.get("SANDBOXD_TEST_PYTHON") or sys.executable],
    "node": [os.environ.get("SANDBOXD_TEST_NODE") or shutil.which("node") or "node"],
    "bash": [os.environ.get("SANDBOXD_TEST_BASH") or shutil.which("bash") or "bash"],
}
TIMEOUT_S = 20.0


@dataclass
class Cell:
    stdout: str
    stderr: str
    exit: int
    outputs: list[dict[str, Any]]


class Session:
    """A driver process and the server's end of its pipes."""

    def __init__(self, language: Language, workdir: Path, item_max: int, total_max: int,
                 control_fd: int | None = None) -> None:
        self.nonce = secrets.token_hex(16)
        self.marker = drivers.marker(self.nonce)
        control_read, control_write = os.pipe()
        if control_fd is not None:  # the number the driver is given, as a server's could be any
            os.dup2(control_write, control_fd)
            os.close(control_write)
            control_write = control_fd
        requests_read, self.requests = os.pipe()
        program = workdir / INTERPRETERS[language].program_name
        program.write_bytes(drivers.program(
            language, control_fd=control_write, nonce=self.nonce,
            item_max_bytes=item_max, total_max_bytes=total_max,
        ))
        self.process = subprocess.Popen(
            [*COMMANDS[language], str(program)], stdin=requests_read, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, pass_fds=(control_write,), cwd=workdir,
        )
        os.close(control_write)
        os.close(requests_read)
        assert self.process.stdout is not None and self.process.stderr is not None
        self.fds = {"stdout": self.process.stdout.fileno(), "stderr": self.process.stderr.fileno(),
                    "control": control_read}
        self.buffers = {name: b"" for name in self.fds}
        self.eof: set[str] = set()
        assert json.loads(self._read_until("control", b"\n")) == {"ready": True}

    def _read_until(self, name: str, end: bytes) -> bytes:
        """The stream `name` up to `end` (consumed, not returned), reading every stream meanwhile
        so that none fills its pipe."""
        deadline = time.monotonic() + TIMEOUT_S
        with selectors.DefaultSelector() as selector:
            for other, fd in self.fds.items():
                if other not in self.eof:
                    selector.register(fd, selectors.EVENT_READ, other)
            while end not in self.buffers[name]:
                if name in self.eof:
                    raise EOFError(f"{name} ended: {self.buffers[name]!r}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no {end!r} on {name}: {self.buffers!r}")
                for key, _ in selector.select(remaining):
                    chunk = os.read(key.fd, 1 << 16)
                    if chunk:
                        self.buffers[key.data] += chunk
                    else:
                        self.eof.add(key.data)
                        selector.unregister(key.fd)
        data, _, self.buffers[name] = self.buffers[name].partition(end)
        return data

    def send(self, code: str, env: Mapping[str, str] | None = None) -> None:
        spec = SandboxSpec(code=code.encode(), language="python", env=dict(env or {}))
        os.write(self.requests, request(spec))

    def run(self, code: str, env: Mapping[str, str] | None = None) -> Cell:
        self.send(code, env)
        stdout = self._read_until("stdout", self.marker)
        stderr = self._read_until("stderr", self.marker)
        result = json.loads(self._read_until("control", b"\n"))
        assert set(result) == {"exit", "outputs"}
        return Cell(stdout.decode(), stderr.decode(), result["exit"], result["outputs"])

    def wait(self) -> int:
        """Read every stream to its end and wait for the process."""
        for name in self.fds:
            try:
                self._read_until(name, b"\0never\0")
            except EOFError:
                pass
        return self.process.wait(TIMEOUT_S)

    def close(self) -> None:
        os.close(self.requests)
        try:
            self.process.wait(TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        os.close(self.fds["control"])


def requires(s: Session, module: str) -> None:
    """Skip unless the driver's interpreter can import `module` (in the session, as code would)."""
    if s.run(f"import {module}").exit != 0:
        pytest.skip(f"{module} is not installed for {COMMANDS['python'][0]}")


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Any]:
    """session(language, item_max=..., total_max=...) starts a driver; each is closed after."""
    started: list[Session] = []

    def start(language: Language, item_max: int = 1 << 20, total_max: int = 4 << 20,
              control_fd: int | None = None) -> Session:
        if shutil.which(COMMANDS[language][0]) is None:
            pytest.skip(f"{COMMANDS[language][0]} is not installed")
        workdir = tmp_path / f"{language}-{len(started)}"
        workdir.mkdir()
        s = Session(language, workdir, item_max, total_max, control_fd)
        started.append(s)
        return s

    yield start
    for s in started:
        s.close()


# --- program() -----------------------------------------------------------------------------


def test_program_fills_every_placeholder() -> None:
    nonce = "0123456789abcdef" * 2
    for language in drivers.TEMPLATES:
        text = drivers.program(language, control_fd=7, nonce=nonce, item_max_bytes=123,
                               total_max_bytes=4567).decode()
        assert "__SANDBOXD_" not in text and nonce in text
    assert drivers.marker(nonce) == b"\x1esandboxd-end-" + nonce.encode() + b"\x1e"


def test_program_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="nonce"):
        drivers.program("bash", control_fd=3, nonce="X" * 32, item_max_bytes=1, total_max_bytes=1)
    with pytest.raises(ValueError, match="control_fd"):
        drivers.program("bash", control_fd=2, nonce="a" * 32, item_max_bytes=1, total_max_bytes=1)


def test_the_python_driver_parses_as_python_3_8() -> None:
    source = (Path(drivers.__file__).parent / drivers.TEMPLATES["python"]).read_text()
    ast.parse(source, feature_version=(3, 8))


def test_the_templates_are_package_data() -> None:
    from importlib.resources import files

    for name in drivers.TEMPLATES.values():
        assert (files(drivers) / name).is_file()


@pytest.mark.parametrize("language", list(drivers.TEMPLATES))
def test_any_control_fd_number_works(session: Any, language: Language) -> None:
    s = session(language, control_fd=200)
    assert s.run({"python": "x = 1", "node": "let x = 1", "bash": "x=1"}[language]).exit == 0
    show = {"python": "print(x)", "node": "console.log(x)", "bash": "echo $x"}[language]
    assert s.run(show).stdout == "1\n"


# --- python ----------------------------------------------------------------------------------


def test_python_state_persists_between_cells(session: Any) -> None:
    s = session("python")
    assert s.run("x = 41").exit == 0
    assert s.run("print(x + 1)").stdout == "42\n"
    s.run("def double(n):\n    return 2 * n\nimport os\nos.chdir('/')")
    cell = s.run("print(double(21), os.getcwd())")
    assert (cell.stdout, cell.stderr, cell.exit) == ("42 /\n", "", 0)


def test_python_cells_run_as_main_so_classes_pickle(session: Any) -> None:
    s = session("python")
    s.run("class Point:\n    def __init__(self, x):\n        self.x = x")
    cell = s.run("import pickle\nprint(__name__, pickle.loads(pickle.dumps(Point(3))).x)")
    assert cell.stdout == "__main__ 3\n"
    cell = s.run("print(sorted(k for k in globals() if k.startswith('_sandboxd')))")
    assert cell.stdout == "[]\n"


def test_python_displays_the_last_expression(session: Any) -> None:
    s = session("python")
    assert s.run("1 + 1").stdout == "2\n"
    assert s.run("'a'").stdout == "'a'\n"
    assert s.run("None").stdout == ""
    assert s.run("x = 1").stdout == ""
    assert s.run("print('p')\n[x, x]").stdout == "p\n[1, 1]\n"
    assert s.run("x + 1;  # as in a notebook: no value shown").stdout == ""
    assert s.run("'a;'").stdout == "'a;'\n"


def test_python_exception_exits_1_with_the_cell_line(session: Any) -> None:
    s = session("python")
    s.run("x = 1")
    cell = s.run("y = 2\nraise ValueError('boom')")
    assert cell.exit == 1
    assert cell.stderr.startswith("Traceback (most recent call last):\n")
    assert 'File "<cell 2>", line 2, in <module>' in cell.stderr
    assert "raise ValueError('boom')" in cell.stderr and "ValueError: boom" in cell.stderr
    assert "main.py" not in cell.stderr  # no driver frames
    assert s.run("print(x)").stdout == "1\n"


def test_python_inspect_finds_the_source_of_a_cell(session: Any) -> None:
    s = session("python")
    s.run("def f():\n    return 1")
    cell = s.run("import inspect\nprint(inspect.getsource(f), end='')")
    assert cell.stdout == "def f():\n    return 1"


def test_python_syntax_error_exits_1(session: Any) -> None:
    s = session("python")
    cell = s.run("x = (")
    assert cell.exit == 1 and "SyntaxError" in cell.stderr and "<cell 1>" in cell.stderr


def test_python_system_exit_sets_the_status_and_the_session_continues(session: Any) -> None:
    s = session("python")
    assert s.run("import sys\nsys.exit(3)").exit == 3
    assert s.run("sys.exit()").exit == 0
    cell = s.run("sys.exit('bye')")
    assert (cell.exit, cell.stderr) == (1, "bye\n")
    assert s.run("print('still here')").stdout == "still here\n"


def test_python_stdin_is_empty_and_the_next_request_arrives(session: Any) -> None:
    s = session("python")
    cell = s.run("import sys\nprint(repr(sys.stdin.read()))\ninput()")
    assert cell.stdout == "''\n" and "EOFError" in cell.stderr
    cell = s.run("import subprocess\nsubprocess.run(['cat'], check=True)\nprint('after')")
    assert (cell.stdout, cell.exit) == ("after\n", 0)


def test_python_env_per_request(session: Any) -> None:
    s = session("python")
    code = "import os\nprint(os.environ['GREETING'])"
    assert s.run(code, {"GREETING": "hello"}).stdout == "hello\n"
    assert s.run(code, {"GREETING": "again=yes"}).stdout == "again=yes\n"


def test_python_rich_outputs_from_repr_methods(session: Any) -> None:
    s = session("python")
    s.run(
        "class Rich:\n"
        "    def __repr__(self): return 'Rich()'\n"
        "    def _repr_png_(self): return b'\\x89PNG fake'\n"
        "    def _repr_jpeg_(self): return b'jpeg'\n"
        "    def _repr_html_(self): return '<b>hi</b>'\n"
        "    def _repr_markdown_(self): return '**hi**'\n"
        "    def _repr_svg_(self): return None\n"
    )
    cell = s.run("Rich()")
    assert cell.stdout == "Rich()\n"
    assert cell.outputs == [
        {"type": "image/png", "data": base64.b64encode(b"\x89PNG fake").decode()},
        {"type": "text/html", "data": "<b>hi</b>"},
        {"type": "text/markdown", "data": "**hi**"},
    ]
    assert s.run("print(1)").outputs == []
    assert s.run("Rich").outputs == []  # a class's methods are not its outputs


def test_python_rich_outputs_from_a_mimebundle(session: Any) -> None:
    s = session("python")
    s.run(
        "class Chart:\n"
        "    def _repr_mimebundle_(self, include=None, exclude=None):\n"
        "        return {'text/html': '<div>chart</div>', 'application/x-other': '{}'}, {}\n"
        "    def _repr_html_(self): return 'not this one'\n"
        "    def _repr_markdown_(self): return 'and this'\n"
    )
    assert s.run("Chart()").outputs == [
        {"type": "text/html", "data": "<div>chart</div>"},
        {"type": "text/markdown", "data": "and this"},
    ]


def test_python_display_builtin(session: Any) -> None:
    s = session("python")
    s.run("class H:\n    def _repr_html_(self): return '<i>h</i>'\n"
          "    def __repr__(self): return 'H'")
    cell = s.run("display(H(), 5)\nx = 1")
    assert cell.stdout == "H\n5\n"
    assert cell.outputs == [{"type": "text/html", "data": "<i>h</i>"}]


def test_python_a_failing_repr_method_is_reported_and_skipped(session: Any) -> None:
    s = session("python")
    s.run("class Bad:\n    def _repr_html_(self): raise RuntimeError('no html')\n"
          "    def _repr_markdown_(self): return 'md'")
    cell = s.run("Bad()")
    assert cell.exit == 0 and "RuntimeError: no html" in cell.stderr
    assert cell.outputs == [{"type": "text/markdown", "data": "md"}]


def test_python_output_caps_mark_truncated_items(session: Any) -> None:
    s = session("python", item_max=100, total_max=150)
    s.run("class T:\n    def __init__(self, n): self.n = n\n"
          "    def _repr_html_(self): return 'x' * self.n\n    def __repr__(self): return 'T'")
    cell = s.run("display(T(101), T(80), T(80), T(60))")
    assert cell.outputs == [
        {"type": "text/html", "data": "", "truncated": True, "size": 101},
        {"type": "text/html", "data": "x" * 80},
        {"type": "text/html", "data": "", "truncated": True, "size": 80},  # 160 > 150
        {"type": "text/html", "data": "x" * 60},
    ]
    # the total is per cell
    assert s.run("T(100)").outputs == [{"type": "text/html", "data": "x" * 100}]


def test_python_top_level_await(session: Any) -> None:
    s = session("python")
    s.run("import asyncio\nasync def answer():\n    await asyncio.sleep(0.01)\n    return 42")
    cell = s.run("value = await answer()\nawait answer()")
    assert (cell.stdout, cell.exit) == ("42\n", 0)
    assert s.run("print(value)").stdout == "42\n"
    s.run("async def fail():\n    await asyncio.sleep(0)\n    raise ValueError('in coro')")
    cell = s.run("await fail()")
    assert cell.exit == 1 and "ValueError: in coro" in cell.stderr
    assert cell.stderr.startswith('Traceback (most recent call last):\n  File "<cell 5>", line 1')


def test_python_future_imports_persist(session: Any) -> None:
    s = session("python")
    s.run("from __future__ import annotations")
    assert s.run("def f(x: Undefined): pass\nprint(f.__annotations__)").stdout == (
        "{'x': 'Undefined'}\n"
    )


def test_python_numpy_imported_once(session: Any) -> None:
    s = session("python")
    requires(s, "numpy")
    s.run("import numpy as np\na = np.arange(6)")
    cell = s.run("a.sum()")
    assert (cell.stdout, cell.exit) == ("np.int64(15)\n", 0) or cell.stdout == "15\n"


def test_python_the_driver_is_not_in_subprocess_fds(session: Any) -> None:
    s = session("python")
    cell = s.run("import os\nprint(sorted(os.listdir('/proc/self/fd')))\n"
                 "import subprocess\nprint(subprocess.run(['ls', '/proc/self/fd'], "
                 "capture_output=True, text=True, close_fds=False).stdout.split())")
    own, child = cell.stdout.splitlines()
    assert json.loads(child.replace("'", '"')) == ["0", "1", "2", "3"]  # 3: ls's listing


def test_python_a_forked_child_ends_with_the_cell(session: Any) -> None:
    s = session("python")
    cell = s.run("import os\nchild = os.fork()\nif child:\n    os.waitpid(child, 0)\n"
                 "print('parent' if child else 'child')")
    assert (cell.stdout, cell.exit) == ("child\nparent\n", 0)
    assert s.run("print('next')").stdout == "next\n"


def test_python_os_exit_ends_the_process(session: Any) -> None:
    s = session("python")
    s.send("import os\nos._exit(7)")
    assert s.wait() == 7


def test_python_eof_on_requests_exits_0(session: Any) -> None:
    s = session("python")
    s.run("x = 1")
    os.close(s.requests)
    s.requests = os.open(os.devnull, os.O_WRONLY)
    assert s.wait() == 0


# --- python + matplotlib / pandas / PIL (skipped where not installed) -------------------------


def test_python_matplotlib_figures_become_png(session: Any) -> None:
    s = session("python")
    s.run("x = 1")
    assert s.run("import sys\n'matplotlib' in sys.modules").stdout == "False\n"  # not ours to load
    requires(s, "matplotlib")
    s.run("import matplotlib.pyplot as plt")
    assert s.run("import matplotlib\nmatplotlib.get_backend()").stdout == (
        "'module://sandboxd_inline'\n"
    )
    cell = s.run("fig = plt.figure(figsize=(4, 3), dpi=50)\nplt.plot([1, 2, 3])\nplt.show()")
    assert [o["type"] for o in cell.outputs] == ["image/png"]
    png = base64.b64decode(cell.outputs[0]["data"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")) == (200, 150)
    # left open: shown when the cell ends; then closed
    cell = s.run("plt.plot([3, 2, 1])\nx = 1")
    assert [o["type"] for o in cell.outputs] == ["image/png"]
    assert s.run("plt.get_fignums()").stdout == "[]\n"
    # a figure as the last expression: once
    cell = s.run("fig, ax = plt.subplots()\nax.plot([1])\nfig")
    assert [o["type"] for o in cell.outputs] == ["image/png"]


def test_python_mplbackend_in_the_env_is_kept(session: Any) -> None:
    s = session("python")
    cell = s.run("import matplotlib\nprint(matplotlib.get_backend())", {"MPLBACKEND": "agg"})
    if "ModuleNotFoundError" in cell.stderr:
        pytest.skip("matplotlib is not installed")
    assert cell.stdout.strip().lower() == "agg"


def test_python_pandas_dataframe_is_html(session: Any) -> None:
    s = session("python")
    requires(s, "pandas")
    s.run("import pandas as pd\ndf = pd.DataFrame({'a': [1, 2]})")
    cell = s.run("df")
    assert [o["type"] for o in cell.outputs] == ["text/html"]
    assert "<table" in cell.outputs[0]["data"]


def test_python_pil_image_is_png(session: Any) -> None:
    s = session("python")
    requires(s, "PIL.Image")
    cell = s.run("from PIL import Image\nImage.new('RGB', (7, 5))")
    assert [o["type"] for o in cell.outputs] == ["image/png"]


# --- node ------------------------------------------------------------------------------------


def test_node_state_persists_between_cells(session: Any) -> None:
    s = session("node")
    assert s.run("let x = 41").exit == 0
    assert s.run("console.log(x + 1)").stdout == "42\n"
    s.run("function double(n) { return 2 * n }\nconst os = require('os')\nprocess.chdir('/')")
    cell = s.run("console.log(double(21), process.cwd(), typeof os.cpus)")
    assert (cell.stdout, cell.stderr, cell.exit) == ("42 / function\n", "", 0)


def test_node_does_not_display_the_last_value(session: Any) -> None:
    s = session("node")
    cell = s.run("1 + 1")
    assert (cell.stdout, cell.outputs) == ("", [])


def test_node_require_resolves_from_the_working_directory(session: Any, tmp_path: Path) -> None:
    s = session("node")
    lib = tmp_path / "lib"
    lib.mkdir()
    (lib / "answer.js").write_text("module.exports = 42")
    s.run(f"process.chdir({json.dumps(str(lib))})")
    cell = s.run("console.log(require('./answer.js'), __dirname === process.cwd(), typeof module)")
    assert cell.stdout == "42 true object\n"


def test_node_exception_exits_1_and_the_session_continues(session: Any) -> None:
    s = session("node")
    s.run("var kept = 'yes'")
    cell = s.run("\nthrow new Error('boom')")
    assert cell.exit == 1 and "Error: boom" in cell.stderr and "<cell 2>:2" in cell.stderr
    assert "main.js" not in cell.stderr
    assert s.run("console.log(kept)").stdout == "yes\n"
    cell = s.run("setTimeout(() => { throw new TypeError('later') }, 10)")
    assert cell.exit == 1 and "TypeError: later" in cell.stderr
    cell = s.run("Promise.reject(new RangeError('rejected'))")
    assert cell.exit == 1 and "RangeError: rejected" in cell.stderr
    cell = s.run("new Promise((_, reject) => setTimeout(() => reject(new Error('x')), 5)); 1")
    assert cell.exit == 1
    assert s.run("console.log('ok')").exit == 0


def test_node_syntax_error_exits_1(session: Any) -> None:
    s = session("node")
    cell = s.run("let = = 2")
    assert cell.exit == 1 and "SyntaxError" in cell.stderr


def test_node_process_exit_ends_the_cell_not_the_session(session: Any) -> None:
    s = session("node")
    cell = s.run("console.log('before'); process.exit(4); console.log('after')")
    assert (cell.stdout, cell.exit) == ("before\n", 4)
    assert s.run("setTimeout(() => process.exit(5), 10)").exit == 5
    assert s.run("process.exitCode = 6").exit == 6
    assert s.run("console.log('alive')").exit == 0


def test_node_waits_for_the_async_work_of_the_cell(session: Any) -> None:
    s = session("node")
    cell = s.run("setTimeout(() => console.log('late'), 50); console.log('early')")
    assert cell.stdout == "early\nlate\n"
    cell = s.run("require('child_process').exec('echo child', (e, out) => console.log(out.trim()))")
    assert cell.stdout == "child\n"
    assert s.run("console.log('next')").stdout == "next\n"


def test_node_top_level_await(session: Any) -> None:
    s = session("node")
    s.run("globalThis.wait = (ms) => new Promise((r) => setTimeout(r, ms))")
    cell = s.run("await wait(20)\nconsole.log('waited')\nresult = 42")
    assert (cell.stdout, cell.exit) == ("waited\n", 0)
    assert s.run("console.log(result)").stdout == "42\n"
    cell = s.run("await Promise.reject(new Error('awaited'))")
    assert cell.exit == 1 and "Error: awaited" in cell.stderr


def test_node_dynamic_import_resolves_from_the_working_directory(session: Any) -> None:
    s = session("node")
    if s.run("process.exit(require('vm').constants?.USE_MAIN_CONTEXT_DEFAULT_LOADER ? 0 : 9)").exit:
        pytest.skip("this node has no loader for import() in a vm script")
    s.run("require('fs').writeFileSync('m.mjs', 'export const v = 7')")
    cell = s.run("const { v } = await import('./m.mjs')\nconsole.log(v)")
    assert (cell.stdout, cell.stderr, cell.exit) == ("7\n", "", 0)


def test_node_an_await_that_can_never_settle_ends_the_cell(session: Any) -> None:
    s = session("node")
    cell = s.run("await new Promise(() => {})")
    assert cell.exit == 13 and "unsettled top-level await" in cell.stderr
    assert s.run("new Promise(() => {})").exit == 0  # a last value is not waited for
    assert s.run("console.log('next')").stdout == "next\n"


def test_node_a_promise_completion_is_awaited(session: Any) -> None:
    s = session("node")
    cell = s.run("(async () => { await null; console.log('in promise') })()")
    assert cell.stdout == "in promise\n"


def test_node_stdin_is_empty_and_the_next_request_arrives(session: Any) -> None:
    s = session("node")
    cell = s.run("console.log(JSON.stringify(require('fs').readFileSync(0, 'utf8')))")
    assert (cell.stdout, cell.exit) == ('""\n', 0)
    cell = s.run("console.log(require('child_process').execSync('cat').length)")
    assert cell.stdout == "0\n"
    assert s.run("console.log('next')").stdout == "next\n"


def test_node_env_per_request(session: Any) -> None:
    s = session("node")
    assert s.run("console.log(process.env.GREETING)", {"GREETING": "hi"}).stdout == "hi\n"


# --- bash ------------------------------------------------------------------------------------


def test_bash_state_persists_between_cells(session: Any) -> None:
    s = session("bash")
    assert s.run("x=41").exit == 0
    assert s.run("echo $((x+1))").stdout == "42\n"
    s.run("double() { echo $(( 2 * $1 )); }\ncd /\nalias hello='echo hello'\n"
          "declare -A map=([k]=v)")
    cell = s.run("double 21; pwd; hello; echo ${map[k]}")
    assert (cell.stdout, cell.stderr, cell.exit) == ("42\n/\nhello\nv\n", "", 0)


def test_bash_exit_status_is_the_cells(session: Any) -> None:
    s = session("bash")
    assert s.run("false").exit == 1
    assert s.run("(exit 7)").exit == 7
    assert s.run("true").exit == 0
    cell = s.run("no-such-command-here")
    assert cell.exit == 127 and "not found" in cell.stderr
    assert s.run("break; echo still").exit == 0
    assert s.run("echo alive").stdout == "alive\n"


def test_bash_set_x_traces_the_cells_commands_only(session: Any) -> None:
    s = session("bash")
    assert s.run("set -x").stderr == ""
    cell = s.run("echo hi")
    assert (cell.stdout, cell.stderr) == ("hi\n", "++ echo hi\n")  # one level deeper: eval's
    assert s.run("false").exit == 1
    assert s.run("set +x").stderr == "++ set +x\n"
    assert s.run("echo quiet").stderr == ""


def test_bash_stdin_is_empty_and_the_next_request_arrives(session: Any) -> None:
    s = session("bash")
    cell = s.run("cat; read -r line; echo \"read=$?\"")
    assert (cell.stdout, cell.exit) == ("read=1\n", 0)
    assert s.run("echo next").stdout == "next\n"


def test_bash_env_per_request(session: Any) -> None:
    s = session("bash")
    assert s.run("echo \"$GREETING\"; env | grep ^GREETING=", {"GREETING": "a b"}).stdout == (
        "a b\nGREETING=a b\n"
    )


def test_bash_counts_the_request_in_bytes_whatever_the_locale(session: Any) -> None:
    s = session("bash")
    s.run("true", {"LC_ALL": "C.UTF-8"})  # the shell's locale from now on
    cell = s.run("echo \"$A $B ${#A}\"; printf '%s\\n' 'ü'", {"A": "éé", "B": "ü=2"})
    assert (cell.stdout, cell.stderr) == ("éé ü=2 2\nü\n", "")
    assert s.run("echo next").stdout == "next\n"


def test_bash_code_bytes_arrive_exactly(session: Any) -> None:
    s = session("bash")
    cell = s.run("printf '%s|' 'é' \"  x  \"\necho\n\n")
    assert cell.stdout == "é|  x  |\n"
    long = "echo " + "y" * 100_000
    assert len(s.run(long).stdout) == 100_001


def test_bash_redirected_stdout_still_ends_the_cell(session: Any, tmp_path: Path) -> None:
    s = session("bash")
    log = tmp_path / "log"
    assert s.run(f"exec >{log}\necho to-log").stdout == ""
    assert log.read_text() == "to-log\n"
    assert s.run("echo more").stdout == ""


def test_bash_the_driver_fds_are_not_in_commands(session: Any) -> None:
    s = session("bash")
    cell = s.run("ls /proc/self/fd | sort -n | tr '\\n' ' '")
    assert cell.stdout == "0 1 2 3 "  # 3: ls's listing


def test_bash_user_fds_survive_between_cells(session: Any, tmp_path: Path) -> None:
    s = session("bash")
    s.run(f"exec {{fd}}>{tmp_path / 'out'}")
    s.run("echo kept >&$fd")
    assert (tmp_path / "out").read_text() == "kept\n"


def test_bash_exit_ends_the_process(session: Any) -> None:
    s = session("bash")
    s.run("x=1")
    s.send("echo bye; exit 3")
    assert s.wait() == 3
    assert s.buffers["stdout"] == b"bye\n"
