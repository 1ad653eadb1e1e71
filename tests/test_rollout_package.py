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


def test_a_study_space_that_can_pick_linear_noise_on_vllm_is_refused() -> None:
    import pytest

    from objective.rollout.checks import check_noise_sites

    check_noise_sites("hf", ["rmsnorm", "linear"], where="space.site")
    check_noise_sites("vllm", ["rmsnorm"], where="space.site")
    with pytest.raises(ValueError, match=r"^space\.site: 'linear' cannot run on rollout\.backend=vllm .*rollout\.backend=hf$"):
        check_noise_sites("vllm", ["rmsnorm", "linear"], where="space.site")


def test_the_qwen_study_only_searches_sites_its_backend_serves() -> None:
    from objective.rollout.checks import check_noise_sites
    from sweep.study_loader import load_study

    spec = load_study(ROOT / "studies" / "qwen2.5-1.5b-mxfp4-w4a4.yaml")
    backend = spec.objective.config.rollout.backend
    assert backend == "vllm"
    check_noise_sites(backend, spec.space.site, where="space.site")


def test_vllm_that_breaks_at_import_on_a_cpu_torch_is_one_line(tmp_path: Path) -> None:
    """A CPU torch 2.13.0+cpu satisfies torch==2.13.0 and then breaks vLLM at import."""
    (tmp_path / "vllm").mkdir()
    (tmp_path / "vllm" / "__init__.py").write_text("raise RuntimeError('undefined symbol: cudaGetDeviceCount')\n")
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "import torch; torch.version.cuda = None\n"
            "from objective.rollout.checks import require_vllm\n"
            "try:\n    require_vllm()\nexcept ValueError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.startswith("rollout.backend: 'vllm' needs a CUDA build of torch, this one is ")
    assert out.stdout.count("\n") == 1
