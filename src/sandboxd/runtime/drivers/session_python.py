"""sandboxd session driver for Python: the program of a persistent sandbox (runtime/drivers).

Runs each request's code as a notebook cell, all in one namespace (`__main__`'s, so pickling a
class defined in a cell works): a last statement that is an expression is displayed (its repr on
stdout, and rich outputs from `_repr_png_`, `_repr_jpeg_`, `_repr_svg_`, `_repr_html_`,
`_repr_markdown_`, and a matplotlib figure as PNG). A builtin `display(obj, ...)` does the same
on demand. Unless MPLBACKEND is set, matplotlib gets the backend `module://sandboxd_inline`
(Agg's canvas; `show()` turns every open figure into an image/png output and closes it), and
the figures still open when a cell ends are shown too. Top-level `await` works in a cell; it
runs on one event loop kept for the session (created when a cell first awaits).

Runs inside the sandbox with the code's privileges, on the image's interpreter: valid on
Python >= 3.8, the standard library only. All of its state lives in the closure of
`_sandboxd_session`, so clearing `__main__` leaves nothing of it for the code to see but the
`display` builtin and the `sandboxd_inline` module.
"""


def _sandboxd_session():
    import __future__
    import ast
    import base64
    import builtins
    import io
    import json
    import linecache
    import os
    import sys
    import tokenize
    import traceback
    from importlib.machinery import ModuleSpec

    control_fd = int("__SANDBOXD_CONTROL_FD__")
    nonce = "__SANDBOXD_NONCE__"
    item_max = int("__SANDBOXD_ITEM_MAX__")
    total_max = int("__SANDBOXD_TOTAL_MAX__")
    end = b"\x1esandboxd-end-" + nonce.encode() + b"\x1e"
    here = sys._getframe().f_code.co_filename
    backend_name = "sandboxd_inline"
    backend = "module://" + backend_name
    silent_tokens = (tokenize.NEWLINE, tokenize.NL, tokenize.COMMENT, tokenize.INDENT,
                     tokenize.DEDENT, tokenize.ENDMARKER)
    co_coroutine = 0x0080  # inspect.CO_COROUTINE: a cell compiled with top-level await
    allow_await = getattr(ast, "PyCF_ALLOW_TOP_LEVEL_AWAIT", 0)
    features = 0
    for feature in __future__.all_feature_names:
        features |= getattr(__future__, feature).compiler_flag
    # The code may rebind names of these modules; the driver keeps its own references.
    read, write, environb = os.read, os.write, os.environb
    dumps, b64encode = json.dumps, base64.b64encode

    # The requests move to a private descriptor (os.dup: not inherited by the code's
    # subprocesses); fd 0 becomes /dev/null, so reading stdin gets EOF, never the protocol.
    # The markers go to copies of fds 1 and 2, so a cell that points its stdout elsewhere
    # still ends its streams.
    requests = os.dup(0)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    out_fd, err_fd = os.dup(1), os.dup(2)
    os.set_inheritable(control_fd, False)

    def write_all(fd, data):
        view = memoryview(data)
        while view:
            view = view[write(fd, view):]

    def read_exactly(n):
        chunks = []
        while n:
            chunk = read(requests, min(n, 1 << 20))
            if not chunk:
                return None
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    # --- rich outputs -------------------------------------------------------------------
    items = []
    budget = [total_max]

    def emit(kind, data):
        size = len(data.encode("utf-8"))
        if size > item_max or size > budget[0]:
            items.append({"type": kind, "data": "", "truncated": True, "size": size})
        else:
            items.append({"type": kind, "data": data})
            budget[0] -= size

    def report(exc):
        """Print `exc` as the interpreter would, without the driver's own frames: from the
        first frame of a cell (before it, only the driver and the event loop that ran an await),
        or else from the first frame that is not the driver's."""
        tb = exc.__traceback__
        first = tb
        while first is not None and not first.tb_frame.f_code.co_filename.startswith("<cell "):
            first = first.tb_next
        if first is not None:
            tb = first
        while tb is not None and tb.tb_frame.f_code.co_filename == here:
            tb = tb.tb_next
        exc = exc.with_traceback(tb)
        try:
            if sys.excepthook is sys.__excepthook__:
                # the traceback module reads the cells' lines from linecache (the builtin hook
                # reads source files only, before 3.13)
                traceback.print_exception(type(exc), exc, tb)
            else:
                sys.excepthook(type(exc), exc, tb)
        except BaseException:
            pass

    def method_of(obj, name):
        # As IPython's formatters: no class (its methods are unbound), and no object that
        # claims every attribute (a mock, a proxy).
        if isinstance(obj, type):
            return None
        try:
            method = getattr(obj, name, None)
            if not callable(method):
                return None
            if callable(getattr(obj, "_ipython_canary_method_should_not_exist_", None)):
                return None
        except Exception:
            return None
        return method

    def figure_png(fig):
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
        return buffer.getvalue()

    rich_kinds = (  # (type, method, binary), in the order a result lists them
        ("image/png", "_repr_png_", True),
        ("image/jpeg", "_repr_jpeg_", True),
        ("image/svg+xml", "_repr_svg_", False),
        ("text/html", "_repr_html_", False),
        ("text/markdown", "_repr_markdown_", False),
    )

    def rich(obj):
        """Emit the rich outputs of `obj`: a matplotlib figure as PNG, else what its
        _repr_mimebundle_ and _repr_*_ methods give (a JPEG only when there is no PNG)."""
        figure = sys.modules.get("matplotlib.figure")
        if figure is not None and isinstance(obj, figure.Figure):
            emit("image/png", b64encode(figure_png(obj)).decode("ascii"))
            pyplot = sys.modules.get("matplotlib.pyplot")
            if pyplot is not None and backend_active():
                pyplot.close(obj)  # shown: not again when the cell ends
            return
        # what _repr_mimebundle_ gives first, then the _repr_*_ methods for the other types
        found = {}
        method = method_of(obj, "_repr_mimebundle_")
        if method is not None:
            try:
                bundle = method()
            except Exception as exc:
                report(exc)
                bundle = None
            if isinstance(bundle, tuple):  # (data, metadata)
                bundle = bundle[0] if bundle else None
            if isinstance(bundle, dict):
                for kind, _, _ in rich_kinds:
                    if bundle.get(kind) is not None:
                        found[kind] = bundle[kind]
        for kind, name, _ in rich_kinds:
            method = None if kind in found else method_of(obj, name)
            if method is None:
                continue
            try:
                data = method()
            except Exception as exc:
                report(exc)
                continue
            if isinstance(data, tuple):  # (data, metadata)
                data = data[0] if data else None
            if data is not None:
                found[kind] = data
        if "image/png" in found:
            found.pop("image/jpeg", None)  # the same image twice (PIL has both)
        for kind, _, binary in rich_kinds:
            data = found.get(kind)
            if data is None:
                continue
            if binary:
                # bytes are the image; a str is taken as base64 already (as IPython does)
                data = b64encode(data).decode("ascii") if isinstance(data, bytes) else str(data)
            elif isinstance(data, bytes):
                data = data.decode("utf-8", "replace")
            emit(kind, str(data))

    def display(*objs, **options):
        """Show each object as a cell's last expression is shown: its repr on stdout, and its
        rich outputs (images, HTML, markdown) in the result."""
        for obj in objs:
            print(repr(obj))
            rich(obj)

    builtins.display = display

    # --- matplotlib -----------------------------------------------------------------------
    def backend_active():
        matplotlib = sys.modules.get("matplotlib")
        params = getattr(matplotlib, "rcParams", None)
        return isinstance(params, dict) and dict.get(params, "backend") == backend

    def show(*args, **kwargs):
        """The backend's show(): every open figure becomes an image/png output, and is closed."""
        helpers = sys.modules.get("matplotlib._pylab_helpers")
        pyplot = sys.modules.get("matplotlib.pyplot")
        if helpers is None or pyplot is None:
            return
        for manager in list(helpers.Gcf.get_all_fig_managers()):
            figure = manager.canvas.figure
            try:
                emit("image/png", b64encode(figure_png(figure)).decode("ascii"))
            finally:
                pyplot.close(figure)

    class BackendLoader:
        """Builds `sandboxd_inline` when pyplot asks for it: Agg's canvas, our show()."""

        def create_module(self, spec):
            return None

        def exec_module(self, module):
            from matplotlib.backend_bases import FigureManagerBase
            from matplotlib.backends.backend_agg import FigureCanvasAgg

            module.FigureCanvas = FigureCanvasAgg
            module.FigureManager = FigureManagerBase
            module.show = show
            module.draw_if_interactive = lambda *args, **kwargs: None

    class Finder:
        """On sys.meta_path: provides `sandboxd_inline`, and makes it matplotlib's backend when
        matplotlib is imported (so the code's subprocesses, which cannot import it, never see
        it in MPLBACKEND). Imports nothing of matplotlib itself."""

        def find_spec(self, name, path=None, target=None):
            if name == backend_name:
                return ModuleSpec(name, BackendLoader())
            if name != "matplotlib":
                return None
            spec = None
            for finder in sys.meta_path:
                find = getattr(finder, "find_spec", None)
                if finder is not self and find is not None:
                    spec = find(name, path, target)
                    if spec is not None:
                        break
            loader = getattr(spec, "loader", None)
            if loader is None or not hasattr(loader, "exec_module"):
                return spec

            def exec_module(module):
                try:
                    del loader.exec_module  # the loader's own again
                except AttributeError:
                    pass
                loader.exec_module(module)
                if "MPLBACKEND" not in os.environ:
                    try:
                        module.rcParams["backend"] = backend
                    except Exception:
                        pass

            try:
                loader.exec_module = exec_module
            except AttributeError:
                pass
            return spec

    sys.meta_path.insert(0, Finder())

    def show_open_figures():
        if "matplotlib.pyplot" in sys.modules and backend_active():
            show()

    # --- cells ----------------------------------------------------------------------------
    # One namespace for every cell: __main__'s, cleared of this program (as a cold run's is).
    scope = sys.modules["__main__"].__dict__
    kept_builtins = scope["__builtins__"]
    scope.clear()
    scope.update(__name__="__main__", __builtins__=kept_builtins, __doc__=None,
                 __package__=None, __spec__=None, __loader__=None)
    state = {"cells": 0, "flags": 0, "loop": None}

    def run(code):
        """Run a compiled piece of a cell; a coroutine (top-level await) on the session's loop."""
        result = eval(code, scope)
        if code.co_flags & co_coroutine:
            if state["loop"] is None:
                import asyncio

                state["loop"] = asyncio.new_event_loop()
            result = state["loop"].run_until_complete(result)
        return result

    def quiet(text):
        """IPython's rule: a cell whose last token is `;` does not show its value."""
        last = None
        try:
            for token in tokenize.generate_tokens(io.StringIO(text).readline):
                if token.type not in silent_tokens:
                    last = token.string
        except Exception:
            return False
        return last == ";"

    def run_cell(source):
        state["cells"] += 1
        filename = "<cell %d>" % state["cells"]
        text = source.decode("utf-8", "replace")
        linecache.cache[filename] = (len(text), None, text.splitlines(True), filename)
        flags = state["flags"] | allow_await
        try:
            tree = compile(source, filename, "exec", ast.PyCF_ONLY_AST | flags, dont_inherit=True)
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                last = ast.Expression(tree.body.pop().value)
            body = compile(tree, filename, "exec", flags, dont_inherit=True)
            state["flags"] |= body.co_flags & features
            run(body)
            if last is not None:
                value = run(compile(last, filename, "eval", flags, dont_inherit=True))
                if value is not None and not quiet(text):
                    display(value)
            return 0
        except SystemExit as exc:
            code = exc.code
            if code is None:
                return 0
            if isinstance(code, int):
                return code & 0xFF
            print(code, file=sys.stderr)
            return 1
        except BaseException as exc:
            report(exc)
            return 1

    def flush_streams():
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except Exception:
                pass

    pid = os.getpid()
    write_all(control_fd, b'{"ready": true}\n')
    while True:
        head = read_exactly(20)
        if head is None:
            return
        env = read_exactly(int(head[:10]))
        source = read_exactly(int(head[10:]))
        if env is None or source is None:
            return
        for entry in env.split(b"\0"):
            if entry:
                key, _, value = entry.partition(b"=")
                try:
                    environb[key] = value
                except (ValueError, OSError):  # not a name the environment can hold
                    pass
        del items[:]
        budget[0] = total_max
        status = run_cell(source)
        if os.getpid() != pid:
            # a child the cell forked (os.fork) and left to run to the cell's end: it ends there,
            # as a forked child of a program does, and never reads a request
            flush_streams()
            os._exit(status)
        try:
            show_open_figures()
        except Exception as exc:
            report(exc)
        flush_streams()
        write_all(out_fd, end)
        write_all(err_fd, end)
        line = dumps({"exit": status, "outputs": items}, separators=(",", ":"))
        write_all(control_fd, line.encode("ascii") + b"\n")


if __name__ == "__main__":  # not when multiprocessing's spawn re-imports this file
    _sandboxd_session()
