"""bench/gpu_check.py: its CPU smoke run, as the GPU machine would run it (no pydantic, optuna, ray, vllm)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
# The GPU image has torch, transformers, peft, numpy and the project with --no-deps: refuse the
# project's other dependencies at import, so the smoke run proves the script does not need them.
WITHOUT_DEPS = """
import builtins, runpy, sys
real = builtins.__import__
def guarded(name, *a, **kw):
    if name.split('.')[0] in ('pydantic', 'optuna', 'ray', 'sqlalchemy', 'vllm', 'matplotlib'):
        raise ImportError('not on the GPU image: ' + name)
    return real(name, *a, **kw)
builtins.__import__ = guarded
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_path(sys.argv[0], run_name='__main__')
"""


def test_cpu_smoke_runs_the_grpo_path_without_the_projects_other_dependencies(tmp_path: Path) -> None:
    out_json = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, "-c", WITHOUT_DEPS, str(SCRIPT), "--cpu-smoke", "--json", str(out_json)],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = json.loads(out_json.read_text())
    steps = res["grpo"]["steps"]
    assert len(steps) == 2 and res["grpo"]["ran_shape"] == [4, 4, 16]
    for s in steps:
        assert s["rollout_s"] > 0 and s["train_s"] > 0 and s["step_s"] >= s["rollout_s"] + s["train_s"] - 1e-6
        assert 1 <= s["updates"] <= 4 and s["response_tokens"] > 0  # DAPO may drop a uniform group
    assert {(r["dtype"], r["format"]) for r in res["fake_quant"]} == {
        ("float32", "mxfp4"), ("float32", "nvfp4"), ("bfloat16", "mxfp4"), ("bfloat16", "nvfp4")}
    assert all(r["bit_exact"] and r["clone_gbs"] > 0 and r["compiled_gbs"] > 0 for r in res["fake_quant"])
    assert res["environment"]["device"] == "cpu"
    assert "rollout" in proc.stdout and "shape: ran 4 prompts x 4 samples" in proc.stdout
    assert "bit-exact vs eager" in proc.stdout


def test_without_a_gpu_and_without_cpu_smoke_it_says_so_in_one_line() -> None:
    pytest.importorskip("torch")
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here")
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == (
        "gpu_check: error: no CUDA device: this check is for a GPU machine (run --cpu-smoke on CPU)")


def test_the_algo_view_reads_the_study_like_algocfg() -> None:
    sys.path.insert(0, str(ROOT / "bench"))
    import gpu_check as G

    from objective.config import AlgoCfg

    values = dict(G.study_sections()["algo"])
    view = G.AlgoView(**{k: v for k, v in values.items() if k in G.AlgoView.__dataclass_fields__})
    cfg = AlgoCfg(**values)
    for name in ("name", "lr", "mini_batch_size", "micro_batch_size", "ppo_epochs", "clip_ratio_c", "grad_clip",
                 "eps_low", "eps_high", "lr_warmup_steps", "old_logprobs", "logprob_chunk_tokens", "samples_per_prompt"):
        assert getattr(view, name) == getattr(cfg, name), name
    assert view.eps_high == 0.25 and view.mini_batch_size == 32
