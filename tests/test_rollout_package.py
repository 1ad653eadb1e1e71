"""objective.rollout: module-level imports form no circle, and vLLM stays behind lazy imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "objective" / "rollout"


def _module_level_imports(path: Path) -> set[str]:
    """Project modules imported at module level (not inside functions: those are the lazy ones)."""
    out: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("objective"):
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("objective"))
    return out


def test_rollout_modules_import_each_other_without_a_circle() -> None:
    mods = {f"objective.rollout.{p.stem}" if p.stem != "__init__" else "objective.rollout": p for p in PKG.glob("*.py")}
    graph = {m: {d for d in _module_level_imports(p) if d in mods and d != m} for m, p in mods.items()}
    # submodules importing the package itself would close a circle through __init__
    assert all("objective.rollout" not in deps for m, deps in graph.items() if m != "objective.rollout"), graph
    seen: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        if seen.get(m) == 1:
            raise AssertionError(f"import circle: {' -> '.join([*stack, m])}")
        if seen.get(m) == 2:
            return
        seen[m] = 1
        for d in graph[m]:
            visit(d, [*stack, m])
        seen[m] = 2

    for m in graph:
        visit(m, [])


def test_importing_the_package_loads_neither_vllm_nor_its_backend() -> None:
    code = ("import sys, objective.rollout, objective.trainer; "
            "print(sorted(m for m in sys.modules if m == 'vllm' or m.endswith('vllm_backend')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"
