"""The package layering of docs/CONTRACTS.md, checked from the source: quant <- objective <- sweep, no import cycles.

Imports are read with `ast`, so nothing is imported (no torch, no Ray). Module-level and
function-level imports both count: a function-level import only delays a cycle, it does not
remove it. Imports under `if TYPE_CHECKING:` do not count for cycles (they never run), but they
do count for the layering rule (a lower layer must not even name a higher one).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("quant", "objective", "sweep")
# Lower layers first: a package may import from the packages before it, never after.
LAYER_ORDER = {"quant": 0, "objective": 1, "sweep": 2}



@dataclass(frozen=True)
class Import:
    """One import statement's target module, as found in `source`."""

    source: str
    target: str
    line: int
    type_checking_only: bool


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules(root: Path, packages: tuple[str, ...] = PACKAGES) -> dict[str, Path]:
    """Module name -> file for every .py file of the given top-level packages under `root`."""
    found: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            found[_module_name(path, root)] = path
    return found


def _is_type_checking_test(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk_with_guard(node: ast.AST, guarded: bool = False) -> Iterator[tuple[ast.AST, bool]]:
    """Every node below `node`, with whether it sits in the body of an `if TYPE_CHECKING:`."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking_test(child.test):
            for stmt in child.body:
                yield stmt, True
                yield from _walk_with_guard(stmt, True)
            for stmt in child.orelse:
                yield stmt, guarded
                yield from _walk_with_guard(stmt, guarded)
            continue
        yield child, guarded
        yield from _walk_with_guard(child, guarded)


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[Import]:
    """The project modules that module `name` (file `path`) imports, wherever the import sits."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    out: list[Import] = []
    for node, guarded in _walk_with_guard(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = name.split(".") if is_package else name.split(".")[:-1]
                base_parts = base_parts[: len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                targets.append(sub if sub in modules else base)
        for target in targets:
            # `import a.b.c` names a.b.c; keep the longest prefix that is a project module.
            parts = target.split(".")
            while parts and ".".join(parts) not in modules:
                parts.pop()
            if parts and ".".join(parts) != name:
                out.append(Import(name, ".".join(parts), node.lineno, guarded))
    return out


def import_graph(root: Path, packages: tuple[str, ...] = PACKAGES) -> list[Import]:
    """All imports between project modules under `root`."""
    modules = project_modules(root, packages)
    return [imp for name, path in modules.items() for imp in imports_of(name, path, modules)]


def import_cycles(edges: list[Import]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (each holds at least one cycle).

    Tarjan's algorithm over the run-time imports (TYPE_CHECKING-only imports left out).
    """
    graph: dict[str, set[str]] = {}
    for e in edges:
        if not e.type_checking_only:
            graph.setdefault(e.source, set()).add(e.target)
            graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc: set[str] = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.add(w)
                if w == v:
                    break
            if len(scc) > 1:
                found.append(frozenset(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _describe(cycle: frozenset[str], edges: list[Import]) -> str:
    inside = sorted(
        {f"{e.source} -> {e.target} (line {e.line})"
        for e in edges
        if e.source in cycle and e.target in cycle and not e.type_checking_only}
    )
    return "{" + ", ".join(sorted(cycle)) + "}: " + "; ".join(inside)


# ----------------------------------------------------------------------------- the project
def test_lower_layers_never_import_higher_ones() -> None:
    upward = [
        f"{e.source} imports {e.target} (line {e.line})"
        for e in import_graph(REPO)
        if LAYER_ORDER[e.target.split(".")[0]] > LAYER_ORDER[e.source.split(".")[0]]
    ]
    assert upward == [], "imports against the layering quant <- objective <- sweep:\n" + "\n".join(upward)


def test_no_import_cycles_among_project_modules() -> None:
    edges = import_graph(REPO)
    cycles = import_cycles(edges)
    assert cycles == [], "import cycles:\n" + "\n".join(_describe(c, edges) for c in cycles)


def test_quant_has_no_import_cycle() -> None:
    edges = import_graph(REPO, ("quant",))
    assert import_cycles(edges) == []


# ----------------------------------------------------------------------------- the checker itself
def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")


def test_checker_finds_function_level_and_relative_cycles_but_not_type_checking_ones(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "quant/__init__.py": "",
            "quant/a.py": "def f():\n    from quant import b\n",  # function-level
            "quant/b.py": "from .a import f\n",  # relative
            "quant/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from quant.d import X\n",
            "quant/d.py": "import quant.c\n",
            "quant/sub/__init__.py": "from quant.sub.e import g\n",
            "quant/sub/e.py": "import os\ng = 1\n",
        },
    )
    edges = import_graph(tmp_path, ("quant",))
    assert import_cycles(edges) == [frozenset({"quant.a", "quant.b"})]
    assert any(e.source == "quant.c" and e.target == "quant.d" and e.type_checking_only for e in edges)
    assert {(e.source, e.target) for e in edges if e.source.startswith("quant.sub")} == {("quant.sub", "quant.sub.e")}


def test_checker_sees_an_upward_import(tmp_path: Path) -> None:
    _write(tmp_path, {"quant/__init__.py": "", "quant/x.py": "import sweep.cli\n", "sweep/__init__.py": "", "sweep/cli.py": ""})
    edges = import_graph(tmp_path)
    assert [(e.source, e.target) for e in edges] == [("quant.x", "sweep.cli")]
