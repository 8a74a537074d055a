"""No import cycles among the modules of src/sandboxd, and no module that `import sandboxd.cli`
runs imports a package kept for one path (LAZY, see test_lazy_imports.py).

The graph is read from the source with `ast` (nothing is imported), and counts every import:
at module level, inside functions (a cycle there still means two modules that need each
other, only hidden until the call) and under `if TYPE_CHECKING:` (a cycle for the type
checker, and the usual way a runtime cycle is papered over).

How an import becomes edges, as Python executes it:
- `import a.b.c` and `from a.b.c import name` run a, a.b and a.b.c: an edge to each;
  `from a.b import c`, c being a module, is an edge to a.b.c (and a, a.b) as well.
- Importing a package means its `__init__.py`, with everything that imports.
- Except: an implicit edge to a package that contains the importing module is left out. Python
  runs a package's `__init__` before any of its modules, so by the time the module runs it
  cannot trigger it; counting it would make a cycle of every module that an `__init__` imports
  and that imports a sibling (runtime/__init__ imports runner, runner imports `.spec`). An explicit import of a module's own
  package (`from . import Name`, Name defined or re-exported in `__init__`) is kept: it works only
  if `__init__` bound Name before importing this module, the classic fragile cycle.

A failure lists each strongly connected component of more than one module with a shortest
cycle through each of its modules, every edge with its line and kind.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass
from pathlib import Path


PACKAGE = Path(__file__).resolve().parents[2] / "src" / "sandboxd"


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    kind: str  # "", "in a function", "TYPE_CHECKING"
    via: str = ""  # the module imported, when the edge is to a package that runs first

    def __str__(self) -> str:
        where = f":{self.line}" + (f" ({self.kind})" if self.kind else "")
        via = f" (its __init__ runs first for {self.via})" if self.via else ""
        return f"{self.source}{where} -> {self.target}{via}"


def _modules(package: Path) -> dict[str, Path]:
    """Dotted name -> file; a package is its __init__.py."""
    found = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_package(name: str, modules: dict[str, Path]) -> bool:
    return modules[name].name == "__init__.py"


def _ancestors(name: str) -> list[str]:
    """a.b.c -> [a, a.b]"""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


class _Imports(ast.NodeVisitor):
    """(target module, line, kind) of every import of this package's modules in one file."""

    def __init__(self, name: str, modules: dict[str, Path]) -> None:
        self._name = name
        self._modules = modules
        self._kinds: list[str] = []
        self.found: list[tuple[str, int, str]] = []

    def visit_If(self, node: ast.If) -> None:
        test = node.test
        guarded = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
        )
        if not guarded:
            self.generic_visit(node)
            return
        self.visit(test)
        self._kinds.append("TYPE_CHECKING")
        for child in node.body:
            self.visit(child)
        self._kinds.pop()
        for child in node.orelse:
            self.visit(child)

    def _function(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        self._kinds.append("in a function")
        self.generic_visit(node)
        self._kinds.pop()

    visit_FunctionDef = _function
    visit_AsyncFunctionDef = _function

    def _add(self, target: str, line: int) -> None:
        kind = self._kinds[-1] if self._kinds else ""
        if "TYPE_CHECKING" in self._kinds:
            kind = "TYPE_CHECKING"
        self.found.append((target, line, kind))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name in self._modules:
                self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            package = self._name if _is_package(self._name, self._modules) else self._name.rpartition(".")[0]
            parts = package.split(".")
            if node.level > 1:
                parts = parts[: -(node.level - 1)]
            base = ".".join(parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        if base not in self._modules:  # another distribution's
            return
        for alias in node.names:
            module = f"{base}.{alias.name}"
            self._add(module if module in self._modules else base, node.lineno)


def import_graph(package: Path = PACKAGE) -> dict[str, list[Edge]]:
    """Each module's outgoing edges, as the docstring of this file defines them."""
    modules = _modules(package)
    graph: dict[str, list[Edge]] = {name: [] for name in modules}
    for name, path in modules.items():
        visitor = _Imports(name, modules)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        own = set(_ancestors(name))
        seen = {name}
        for target, line, kind in visitor.found:
            # The target's packages run first (implicit edges), less the importer's own.
            implicit = [a for a in _ancestors(target) if a not in own]
            for t in [*implicit, target]:
                if t not in seen:
                    seen.add(t)
                    graph[name].append(Edge(name, t, line, kind, "" if t == target else target))
    return graph


def strongly_connected(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """Tarjan's algorithm; components of more than one module, each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for edge in graph[v]:
            w = edge.target
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(found)


def shortest_cycle(graph: dict[str, list[Edge]], start: str, within: set[str]) -> list[Edge]:
    """The shortest path of edges from `start` back to itself inside one component."""
    came: dict[str, Edge] = {}
    queue = deque([start])
    while queue:
        v = queue.popleft()
        for edge in graph[v]:
            w = edge.target
            if w not in within or w in came:
                continue
            came[w] = edge
            if w == start:
                path = [edge]
                while path[0].source != start:
                    path.insert(0, came[path[0].source])
                return path
            queue.append(w)
    raise AssertionError(f"{start} is on no cycle in its component")


def describe(graph: dict[str, list[Edge]]) -> list[str]:
    """One paragraph per cycle component: its modules and a shortest cycle through each."""
    paragraphs = []
    for component in strongly_connected(graph):
        lines = [f"{len(component)} modules: {', '.join(component)}"]
        shown: set[frozenset[Edge]] = set()
        for module in component:
            cycle = shortest_cycle(graph, module, set(component))
            if frozenset(cycle) in shown:
                continue
            shown.add(frozenset(cycle))
            lines.append("  " + "\n    ".join(str(e) for e in cycle))
        paragraphs.append("\n".join(lines))
    return paragraphs


#: Third-party packages a `sandboxd` process imports only on the path that needs them
#: (tests/unit/test_lazy_imports.py says why and checks the effect in a fresh interpreter).
LAZY = frozenset({"alembic", "fastapi", "starlette", "uvicorn", "mcp", "httpx", "jinja2", "authlib", "joserfc"})


def _module_level_imports(path: Path) -> list[tuple[str, int]]:
    """(top-level package, line) of each import that runs when the module is imported: not in
    a function, not under `if TYPE_CHECKING:`."""
    found: list[tuple[str, int]] = []

    def walk(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.Import):
                found.extend((alias.name.split(".")[0], node.lineno) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                found.append((node.module.split(".")[0], node.lineno))
            elif isinstance(node, ast.If):
                test = node.test
                guarded = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
                    isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
                )
                walk(node.orelse if guarded else node.body + node.orelse)
            elif isinstance(node, (ast.Try, ast.With)):
                walk([*node.body, *getattr(node, "handlers", []), *getattr(node, "orelse", []),
                      *getattr(node, "finalbody", [])])
            elif isinstance(node, ast.ExceptHandler):
                walk(node.body)
            elif isinstance(node, ast.ClassDef):
                walk(node.body)

    walk(ast.parse(path.read_text(), str(path)).body)
    return found


def test_the_cli_loads_no_lazy_package_at_import() -> None:
    """Every module `import sandboxd.cli` runs (module-level edges from it) imports none of
    LAZY at module level; they belong in the function of the path that needs them."""
    graph, modules = import_graph(), _modules(PACKAGE)
    reached, todo = set(), ["sandboxd", "sandboxd.cli"]
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo.extend(e.target for e in graph[name] if e.kind == "")
    found = [
        f"{modules[name].relative_to(PACKAGE.parent)}:{line} imports {package}"
        for name in sorted(reached)
        for package, line in _module_level_imports(modules[name])
        if package in LAZY
    ]
    assert not found, "imported whenever sandboxd.cli is:\n" + "\n".join(found)


def test_module_level_imports_skip_functions_and_type_checking(tmp_path: Path) -> None:
    path = tmp_path / "m.py"
    path.write_text(
        "import a.b\nfrom c import d\nfrom . import e\nfrom typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import f\nelse:\n    import g\n"
        "try:\n    import h\nexcept ImportError:\n    import i\n"
        "def fn():\n    import j\nclass K:\n    import l\n"
    )
    assert [p for p, _ in _module_level_imports(path)] == ["a", "c", "typing", "g", "h", "i", "l"]


def test_no_import_cycles() -> None:
    cycles = describe(import_graph())
    assert not cycles, "import cycles in src/sandboxd:\n" + "\n\n".join(cycles)


def test_the_graph_counts_every_kind_of_import(tmp_path: Path) -> None:
    files = {
        "__init__.py": "",
        "top.py": "from .pkg.leaf import x\nfrom . import other\n",
        "other.py": "def f():\n    import p.pkg\n",
        "typed.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .top import T\n",
        "pkg/__init__.py": "from .leaf import x\nfrom .. import typed\n",
        "pkg/leaf.py": "from . import sibling\nfrom ..other import y\n",
        "pkg/sibling.py": "from . import NAME\n",
    }
    for name, text in files.items():
        (tmp_path / "p" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "p" / name).write_text(text)
    graph = import_graph(tmp_path / "p")
    edges = {(e.source, e.target, e.kind) for es in graph.values() for e in es}
    assert edges == {
        ("p.top", "p.pkg", ""),  # the package of p.pkg.leaf runs first
        ("p.top", "p.pkg.leaf", ""),
        ("p.top", "p.other", ""),
        ("p.other", "p.pkg", "in a function"),
        ("p.typed", "p.top", "TYPE_CHECKING"),
        ("p.pkg", "p.pkg.leaf", ""),
        ("p.pkg", "p.typed", ""),
        ("p.pkg.leaf", "p.pkg.sibling", ""),  # not p.pkg: its own package is running already
        ("p.pkg.leaf", "p.other", ""),
        ("p.pkg.sibling", "p.pkg", ""),  # explicit: a name from its package's __init__
    }
    assert strongly_connected(graph) == [
        ["p.other", "p.pkg", "p.pkg.leaf", "p.pkg.sibling", "p.top", "p.typed"]
    ]
    (cycle,) = describe({k: [e for e in v if e.kind == ""] for k, v in graph.items()})
    assert cycle.splitlines()[1:] == [
        "  p.pkg:1 -> p.pkg.leaf",
        "    p.pkg.leaf:1 -> p.pkg.sibling",
        "    p.pkg.sibling:1 -> p.pkg",
    ]
