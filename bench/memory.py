"""Peak memory: one training step vs batch size, one tiny trial, the sweep driver during a small sweep.

0. Training step (issue: the step's memory must not grow with the batch): a random Qwen2 (hidden
   512, 8 layers, 32k vocabulary, LoRA r=8) saved to a temp dir and loaded by the real
   objective.trainer.Trainer; one policy update (Trainer.update: micro-batched forward/backward,
   chunked log-probs) on a synthetic rollout of B sequences, at 3 batch sizes with a fixed
   `algo.micro_batch_size`, each in a fresh child process. Memory: the child resets its peak RSS
   (writes 5 to /proc/self/clear_refs) after a warm-up update, then reads VmHWM after the measured
   update; "step MB" = that peak minus the RSS just before the update (model and optimizer state
   excluded). Side by side, the same batches without micro-batching (one forward over the batch).

1. Tiny trial: the shipped tiny study's trial config (MXFP4 W4A4 + STE, LoRA r=8, 16x8 rollout,
   RMSNorm noise at the E13i-baseline schedule) run by objective.run_trial in a child process;
   peak RSS from the child's own getrusage and, independently, the parent's
   getrusage(RUSAGE_CHILDREN). --quick runs 4 steps and 2 validations on 64 problems instead of
   20 steps and 5 validations on 300 (memory depends on the batch, not on the step count).
2. Driver: a child process running sweep.runner.run_sweep on the tiny study with a no-op
   objective (bench/sweep_overhead.py's); its own peak RSS (getrusage) and, sampled every 0.2 s
   with psutil, the peak of the summed RSS of the driver and all its descendants (Ray's GCS,
   raylet, workers), which is what the machine actually has to hold.

    .venv/bin/python bench/memory.py [--quick] [--step-only] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def trial_config(quick: bool) -> dict[str, Any]:
    """The tiny study's trial config for the E13i-baseline seed config (shorter when quick)."""
    from sweep.space import SearchSpace

    spec = C.tiny_study_spec()
    space = SearchSpace.from_spec(spec)
    name, params = space.seed_configs()[0]
    cfg = space.to_trial_config(params, seed=0).model_dump()
    if quick:
        cfg["steps"] = {"total": 4, "val_at": [0, 4]}
        cfg["task"]["num_val"] = 64
    return cfg


STEP_MODEL = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                  num_key_value_heads=2, vocab_size=32768, max_position_embeddings=1024, tie_word_embeddings=False)
FLAT_TARGET = 1.3  # largest / smallest step memory across batch sizes, with micro-batching


def step_plan(quick: bool) -> dict[str, Any]:
    """Batch sizes (sequences), the fixed micro-batch, and the sequence shape of the step benchmark."""
    if quick:
        return {"batches": [4, 8, 16], "micro": 2, "prompt": 24, "response": 72}
    return {"batches": [4, 16, 48], "micro": 4, "prompt": 32, "response": 96}


def save_step_model(out: Path) -> Path:
    """The mid-size random Qwen2 + the tiny tokenizer (its ids are < the vocabulary) as an HF directory."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from objective.tiny.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(**STEP_MODEL, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.bos_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _status_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"memory: /proc/self/status has no {field}")


def _synthetic_rollout(n: int, prompt: int, response: int, vocab: int, seed: int) -> tuple[Any, Any]:
    """n full-length sequences (no padding: the worst case for a fixed shape) and their advantages."""
    import torch

    from objective.rollout import Rollout

    g = torch.Generator().manual_seed(seed)
    rid = torch.randint(0, vocab, (n, response), generator=g)
    ro = Rollout(torch.randint(0, vocab, (n, prompt), generator=g), torch.ones(n, prompt, dtype=torch.long), rid,
                 torch.ones(n, response, dtype=torch.long), -torch.rand(n, response, generator=g), [""] * n)
    return ro, torch.randn(n, generator=g)


def _step_child(args: dict[str, Any]) -> dict[str, Any]:
    """One Trainer.update at batch args['batch'] after a warm-up update; the peak RSS it added."""

    from objective.config import load_config
    from objective.trainer import Trainer

    cfg = load_config({
        "seed": 0, "threads": 1, "model": {"path": args["model_dir"]}, "quant": {"format": "none"},
        "task": {"num_val": 1}, "lora": {"rank": 8},
        "algo": {"name": "dapo", "micro_batch_size": args["micro"], "lr": 1e-4},
    })
    trainer = Trainer(cfg)
    try:
        vocab = STEP_MODEL["vocab_size"]
        warm, adv = _synthetic_rollout(min(args["micro"] or 1, args["batch"]), args["prompt"], args["response"], vocab, 1)
        trainer.update(warm, adv, 1)  # optimizer state, allocator pools, lazy imports
        ro, adv = _synthetic_rollout(args["batch"], args["prompt"], args["response"], vocab, 2)
        Path("/proc/self/clear_refs").write_text("5")  # peak RSS := current RSS
        before = _status_kb("VmRSS")
        t0 = time.monotonic()
        stats = trainer.update(ro, adv, 2)
        wall = time.monotonic() - t0
        peak = _status_kb("VmHWM")
    finally:
        trainer.close()
    return {"batch": args["batch"], "micro": args["micro"], "before_mb": before / 1024, "peak_mb": peak / 1024,
            "step_mb": (peak - before) / 1024, "wall_s": wall, "loss": stats.losses[0]}


def measure_step_memory(quick: bool) -> dict[str, Any]:
    """The step benchmark: each (batch, micro) case in a fresh child process; ratios largest/smallest."""
    plan = step_plan(quick)
    cases: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ns-bench-step-") as tmp:
        model_dir = save_step_model(Path(tmp) / "model")
        for micro in (plan["micro"], None):
            for batch in plan["batches"]:
                args = {"batch": batch, "micro": micro, "prompt": plan["prompt"], "response": plan["response"],
                        "model_dir": str(model_dir)}
                res, _ = run_child(["--step-child", json.dumps(args)], watch=False)
                cases.append(res)
    ratios = {}
    for micro, label in ((plan["micro"], "micro"), (None, "full")):
        mb = [c["step_mb"] for c in cases if c["micro"] == micro]
        ratios[label] = max(mb) / max(min(mb), 1e-9)
    return {"plan": {**plan, "model": STEP_MODEL}, "cases": cases, "ratio_micro": ratios["micro"],
            "ratio_full": ratios["full"], "target": FLAT_TARGET, "met": ratios["micro"] <= FLAT_TARGET}


def print_step_memory(res: dict[str, Any]) -> None:
    plan = res["plan"]
    tokens = plan["prompt"] + plan["response"]
    rows = []
    for c in res["cases"]:
        how = f"micro-batch {c['micro']}" if c["micro"] else "one forward (no micro-batching)"
        rows.append([c["batch"], how, c["step_mb"], c["peak_mb"], c["wall_s"]])
    print(f"training step memory: random Qwen2 hidden {plan['model']['hidden_size']}, "
          f"{plan['model']['num_hidden_layers']} layers, vocab {plan['model']['vocab_size']}, LoRA r=8, "
          f"{tokens} tokens per sequence ({plan['prompt']} prompt + {plan['response']} response)")
    print(C.render_table(["sequences", "forward", "step MB (peak - before)", "peak RSS MB", "update s"], rows))
    print(f"largest / smallest step MB: micro-batch {plan['micro']}: {res['ratio_micro']:.2f} "
          f"(target <= {res['target']}: {'met' if res['met'] else 'NOT met'}); "
          f"without micro-batching: {res['ratio_full']:.2f}")


def _trial_child(cfg: dict[str, Any]) -> dict[str, Any]:
    from objective import run_trial

    res = run_trial(cfg)
    return {"status": res.status, "reason": res.reason, "peak_rss_mb": C.peak_rss_mb(), "wall_s": res.wall_time_s}


def _driver_child(trials: int, workdir: str) -> dict[str, Any]:
    import io

    import sweep_overhead as so

    from sweep.budget import Budget
    from sweep.runner import plan_from_spec, run_sweep

    C.quiet_libraries()
    plan = plan_from_spec(C.tiny_study_spec(), objective_fn=so.noop_objective)
    plan.study_name = "memory"
    plan.budget = Budget(trials=trials)
    summary = run_sweep(plan, storage_url=f"sqlite:///{workdir}/memory.db", max_trials=trials,
                        results_dir=Path(workdir) / "ray", stream=io.StringIO(), summary_every_s=1e9)
    return {"trials": sum(summary.counts.values()), "peak_rss_mb": C.peak_rss_mb()}


class TreeRSS(threading.Thread):
    """Samples the summed RSS of a process and its descendants; keeps the peak (MB)."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.peak_mb = pid, interval, 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self.stop.is_set():
            total = 0
            try:
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            for p in procs:
                try:
                    total += p.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak_mb = max(self.peak_mb, total / 2**20)
            self.stop.wait(self.interval)


def run_child(args: list[str], watch: bool) -> tuple[dict[str, Any], float | None]:
    """Run this script as a child with `args`; its JSON line and (when watched) the tree's peak RSS."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=C.ROOT)
    watcher = TreeRSS(proc.pid) if watch else None
    if watcher:
        watcher.start()
    out, err = proc.communicate()
    if watcher:
        watcher.stop.set()
        watcher.join()
    if proc.returncode != 0:
        tail = err.strip().splitlines()[-1:] or ["(no stderr)"]
        raise RuntimeError(f"memory: child {args[0]} failed: {tail[0]}")
    return json.loads(out.strip().splitlines()[-1]), (watcher.peak_mb if watcher else None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 4-step trial; a 6-trial no-op sweep")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--step-only", action="store_true", help="only the training-step memory vs batch size")
    ap.add_argument("--step-child", help=argparse.SUPPRESS)
    ap.add_argument("--trial-child", help=argparse.SUPPRESS)
    ap.add_argument("--driver-child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.step_child:
        print(json.dumps(_step_child(json.loads(args.step_child))))
        return 0
    if args.trial_child:
        print(json.dumps(_trial_child(json.loads(args.trial_child))))
        return 0
    step = measure_step_memory(args.quick)
    print_step_memory(step)
    if args.step_only:
        C.write_json(args.json, {"step": step})
        return 0 if step["met"] else 1
    if args.driver_child:
        print(json.dumps(_driver_child(int(args.driver_child[0]), args.driver_child[1])))
        return 0
    cfg = trial_config(args.quick)
    trial, trial_tree = run_child(["--trial-child", json.dumps(cfg)], watch=True)
    if trial["status"] != "complete":
        raise SystemExit(f"memory: the tiny trial ended {trial['status']}: {trial['reason']}")
    children_peak = C.peak_rss_mb("children")
    trials = 6 if args.quick else 16
    with tempfile.TemporaryDirectory(prefix="ns-bench-mem-") as tmp:
        driver, driver_tree = run_child(["--driver-child", str(trials), tmp], watch=True)
    res = {
        "step": step,
        "trial": {"peak_rss_mb": trial["peak_rss_mb"], "rusage_children_mb": children_peak, "wall_s": trial["wall_s"],
                  "steps": cfg["steps"]["total"], "num_val": cfg["task"]["num_val"]},
        "driver": {"peak_rss_mb": driver["peak_rss_mb"], "tree_peak_rss_mb": driver_tree, "trials": driver["trials"]},
    }
    print(C.render_table(["process", "peak RSS MB", "how"], [
        [f"tiny trial ({cfg['steps']['total']} steps, {cfg['task']['num_val']} val problems)", trial["peak_rss_mb"],
         "child's getrusage(SELF)"],
        ["tiny trial (parent's view)", children_peak, "getrusage(CHILDREN)"],
        [f"sweep driver ({driver['trials']} no-op trials)", driver["peak_rss_mb"], "driver's getrusage(SELF)"],
        ["sweep driver + Ray processes", driver_tree, "psutil, summed tree, 0.2 s samples"],
    ]))
    C.write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
