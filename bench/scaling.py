"""How the cost grows: a trial's step time vs layers and rollout batch; the driver's time per trial vs study size.

1. Layers: the tiny architecture (hidden 128, the shipped tokenizer) with 2/4/8/16 decoder layers
   and random weights (seed 0), MXFP4 W4A4 + STE, RMSNorm noise on, a few GRPO steps; the figure
   is the median step time (steps 2.., step 1 pays the one-off compile) relative to 8 layers
   (the shipped size). Random weights generate full-length answers, so this is the upper end.
2. Rollout batch: the shipped checkpoint with prompts x samples = 4x4, 8x8, 16x8 (default),
   32x8; median step time relative to 16x8.
3. Study size: a SQLite study pre-filled with 0 / 100 / 1,000 finished trials (random params of
   the tiny space, via optuna.trial.create_trial + add_trials), then a few more trials driven
   through the product's searcher (sweep.bridge.NoisesweepSearch: budget check + TPE/prior
   sampling in suggest, four intermediate reports, tell + ledger bookkeeping in
   on_trial_complete), one trial per study in turn, timed per phase (median after the first);
   relative to the empty study. The empty study's first trials are the sampler's random
   start-up draws, so its suggest is the cheap case.

Trials (1, 2) run one at a time in child processes (1 torch thread each, as in the tiny sweep),
the configurations interleaved across repetitions. PNGs: bench/scaling_*.png.

    .venv/bin/python bench/scaling.py [--quick] [--json PATH] [--only layers,batch,study]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

METRIC = "val-core/tiny-arith/acc/mean@1"


# ----------------------------------------------------------------------------- trial children
def trial_config(model_path: str, prompts: int, samples: int, steps: int, num_val: int) -> dict[str, Any]:
    """A short tiny trial: `steps` GRPO steps, one validation at the end on `num_val` problems."""
    return {
        "model": {"path": model_path},
        "task": {"name": "tiny-arith", "num_val": num_val},
        "quant": {"format": "mxfp4", "mode": "w4a4", "ste": True},
        "algo": {"prompts_per_step": prompts, "samples_per_prompt": samples},
        "steps": {"total": steps, "val_at": [steps]},
        "noise": {"enabled": True, "sigma_start": 0.05, "sigma_end": 0.0005, "num_stages": 3},
        "threads": 1,
    }


def _child_main(cfg: dict[str, Any]) -> dict[str, Any]:
    from objective import run_trial

    t0 = time.perf_counter()
    res = run_trial(cfg)
    wall = time.perf_counter() - t0
    steps = [h["metrics"]["time/step_s"] for h in res.applied.get("train", [])]
    return {"status": res.status, "reason": res.reason, "wall_s": wall, "step_s": steps,
            "step_s_median": C.median(steps[1:] or steps) if steps else None,
            "phase_s": res.applied.get("phase_s", {}), "peak_rss_mb": C.peak_rss_mb()}


def run_child(cfg: dict[str, Any]) -> dict[str, Any]:
    """One trial in a fresh process (own thread pool, own compile cache state, own RSS)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(cfg)], capture_output=True, text=True,
                          env=env, cwd=C.ROOT)
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["(no stderr)"]
        raise RuntimeError(f"scaling: child trial failed: {tail[0]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["status"] != "complete":
        raise RuntimeError(f"scaling: child trial ended {out['status']}: {out['reason']}")
    return out


def make_random_model(num_layers: int, dest: Path) -> Path:
    """The tiny architecture with `num_layers` decoder layers and seeded random weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from objective.tiny import TINY_CHECKPOINT_DIR

    if num_layers < 1:
        raise ValueError(f"num_layers must be >= 1, got {num_layers}")
    dest.mkdir(parents=True, exist_ok=True)
    for f in TINY_CHECKPOINT_DIR.iterdir():
        if f.is_file() and f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, dest / f.name)
    cfg = AutoConfig.from_pretrained(TINY_CHECKPOINT_DIR, local_files_only=True)
    cfg.num_hidden_layers = num_layers
    if getattr(cfg, "layer_types", None):
        cfg.layer_types = [cfg.layer_types[0]] * num_layers
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(dest)
    return dest


def relative(values: dict[Any, float | None], ref: Any) -> dict[Any, float | None]:
    """Each value divided by the reference entry's (None where either is missing)."""
    if ref not in values:
        raise ValueError(f"reference {ref!r} not among {list(values)}")
    return {k: C.ratio(v, values[ref]) for k, v in values.items()}


def sweep_configs(named: dict[str, dict[str, Any]], reps: int) -> dict[str, list[dict[str, Any]]]:
    """Run every named config `reps` times, round-robin across configs (interleaved)."""
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in named}
    for _ in range(reps):
        for name, cfg in named.items():
            out[name].append(run_child(cfg))
    return out


def bench_layers(layers: list[int], steps: int, reps: int, num_val: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="ns-bench-layers-") as tmp:
        named = {str(n): trial_config(str(make_random_model(n, Path(tmp) / f"L{n}")), 16, 8, steps, num_val)
                 for n in layers}
        runs = sweep_configs(named, reps)
    step = {int(k): C.median([r["step_s_median"] for r in v]) for k, v in runs.items()}
    ref = 8 if 8 in step else layers[0]
    return {"x": layers, "step_s": step, "relative": relative(step, ref), "ref": ref,
            "wall_s": {int(k): C.median([r["wall_s"] for r in v]) for k, v in runs.items()}}


def bench_batch(batches: list[tuple[int, int]], steps: int, reps: int, num_val: int) -> dict[str, Any]:
    named = {f"{p}x{s}": trial_config("tiny", p, s, steps, num_val) for p, s in batches}
    runs = sweep_configs(named, reps)
    step = {k: C.median([r["step_s_median"] for r in v]) for k, v in runs.items()}
    ref = "16x8" if "16x8" in step else next(iter(step))
    return {"x": [p * s for p, s in batches], "labels": list(named), "step_s": step,
            "relative": relative(step, ref), "ref": ref}


# ----------------------------------------------------------------------------- driver vs study size
def prefill(study: Any, space: Any, n: int, seed: int = 0) -> None:
    """Add `n` finished trials with random params of the space (values from a smooth bowl)."""
    import math

    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    rng = random.Random(seed)
    trials = []
    for _ in range(n):
        params: dict[str, Any] = {}
        for name, d in space.distributions.items():
            if isinstance(d, CategoricalDistribution):
                params[name] = rng.choice(list(d.choices))
            elif isinstance(d, IntDistribution):
                params[name] = rng.randint(d.low, d.high)
            elif isinstance(d, FloatDistribution) and d.log:
                params[name] = math.exp(rng.uniform(math.log(d.low), math.log(d.high)))
            else:
                params[name] = rng.uniform(d.low, d.high)
        value = 0.9 - 0.05 * (math.log10(params["sigma_start"]) + 1.6) ** 2 + rng.gauss(0, 0.01)
        trials.append(optuna.trial.create_trial(
            params=params, distributions=dict(space.distributions), value=value,
            intermediate_values={5: value * 0.8, 10: value * 0.9, 15: value * 0.95, 20: value},
            user_attrs={"wall_time_s": 30.0, "compute_hours": 30 / 3600, "last_step": 20, "seed": 0},
        ))
    study.add_trials(trials)


class DriverProbe:
    """One pre-filled SQLite study and the product's searcher on it; `step()` times one more trial."""

    def __init__(self, size: int, extra: int, workdir: Path) -> None:
        import optuna

        from sweep import bridge
        from sweep.budget import Budget
        from sweep.space import SearchSpace
        from sweep.storage import open_storage

        self.bridge, self.size, self.i = bridge, size, 0
        space = SearchSpace.from_spec(C.tiny_study_spec())
        storage = open_storage(f"sqlite:///{workdir / f'size-{size}.db'}")
        name = f"size-{size}"
        self.study = optuna.create_study(storage=storage, study_name=name, direction="maximize")
        t0 = time.perf_counter()
        prefill(self.study, space, size)
        self.prefill_s = time.perf_counter() - t0
        self.searcher = bridge.NoisesweepSearch(space.define, storage=storage, study_name=name,
                                                sampler=space.make_sampler(0), final_step=20,
                                                budget=Budget(trials=size + extra + 1), heartbeat_interval=None)
        self.suggest_ms: list[float] = []
        self.complete_ms: list[float] = []

    def step(self) -> None:
        """suggest (budget check + sampling), four intermediate reports, complete (tell + ledger)."""
        b, tid = self.bridge, f"t{self.i}"
        self.i += 1
        t0 = time.perf_counter()
        config = self.searcher.suggest(tid)
        t1 = time.perf_counter()
        if not isinstance(config, dict):
            raise RuntimeError(f"searcher refused a trial on a study of {self.size}: {self.searcher.stop_reason}")
        for step in (5, 10, 15, 20):
            self.searcher.on_trial_result(tid, {b.STEP_KEY: step, b.OBJECTIVE_KEY: 0.5 + step / 100})
        self.searcher.on_trial_complete(tid, {b.FINAL_KEY: True, b.STATUS_KEY: "complete", b.OBJECTIVE_KEY: 0.7,
                                              b.STEP_KEY: 20, "ns_wall_time_s": 1.0})
        t2 = time.perf_counter()
        self.suggest_ms.append((t1 - t0) * 1000)
        self.complete_ms.append((t2 - t1) * 1000)

    def result(self) -> dict[str, float]:
        self.searcher.close()
        n_done = len(self.study.get_trials(deepcopy=False))
        if n_done != self.size + self.i:
            raise RuntimeError(f"study of {self.size}: {n_done} trials after the run, expected {self.size + self.i}")
        s, c = C.median(self.suggest_ms[1:] or self.suggest_ms), C.median(self.complete_ms[1:] or self.complete_ms)
        return {"suggest_ms": s, "complete_ms": c, "total_ms": s + c, "prefill_s": self.prefill_s}


def bench_study(sizes: list[int], extra: int) -> dict[str, Any]:
    """Per-trial driver time for each study size; one trial per size in turn (interleaved)."""
    C.quiet_libraries()
    with tempfile.TemporaryDirectory(prefix="ns-bench-size-") as tmp:
        probes = {n: DriverProbe(n, extra, Path(tmp)) for n in sizes}
        for _ in range(extra):
            for p in probes.values():
                p.step()
        per = {n: p.result() for n, p in probes.items()}
    total = {n: v["total_ms"] for n, v in per.items()}
    return {"x": sizes, "per_size": per, "total_ms": total, "relative": relative(total, sizes[0]), "ref": sizes[0]}


# ----------------------------------------------------------------------------- plots
def plot(x: list[Any], ys: dict[str, list[float | None]], *, xlabel: str, ylabel: str, title: str, path: Path,
         xticklabels: list[str] | None = None, logx: bool = False) -> Path:
    """One line per series; written with the Agg backend (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6), dpi=100)
    for label, y in ys.items():
        pts = [(a, b) for a, b in zip(x, y) if b is not None]
        ax.plot([a for a, _ in pts], [b for _, b in pts], marker="o", label=label)
    if logx:
        ax.set_xscale("symlog", linthresh=10)
    ax.set_xticks(x)
    if xticklabels:
        ax.set_xticklabels(xticklabels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    return C.save_plot(fig, ax, path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="3 steps, 1 repetition, 2 extra trials per study size")
    ap.add_argument("--only", default="layers,batch,study", help="comma list of layers, batch, study")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plots", type=Path, default=C.BENCH, help="folder for the PNGs (default bench/)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(_child_main(json.loads(args.child))))
        return 0
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    unknown = parts - {"layers", "batch", "study"}
    if unknown:
        raise SystemExit(f"scaling: --only: unknown part(s) {sorted(unknown)} (known: layers, batch, study)")
    steps, reps = (3, 1) if args.quick else (5, 2)
    num_val = 32 if args.quick else 64
    out: dict[str, Any] = {"steps": steps, "reps": reps, "num_val": num_val, "plots": {}}
    if "layers" in parts:
        layers = [2, 4, 8, 16]
        r = bench_layers(layers, steps, reps, num_val)
        out["layers"] = r
        out["plots"]["layers"] = str(plot(layers, {"step time / 8 layers": [r["relative"][n] for n in layers],
                                                   "proportional (n/8)": [n / 8 for n in layers]},
                                          xlabel="decoder layers (random weights)", ylabel="relative step time",
                                          title="Trial step time vs layers (MXFP4 W4A4, 16x8 rollout)",
                                          path=args.plots / "scaling_layers.png"))
        print(C.render_table(["layers", "median step s", "relative to 8", "trial wall s"],
                             [[n, r["step_s"][n], r["relative"][n], r["wall_s"][n]] for n in layers]))
    if "batch" in parts:
        batches = [(4, 4), (8, 8), (16, 8), (32, 8)]
        r = bench_batch(batches, steps, reps, num_val)
        out["batch"] = r
        rel = [r["relative"][k] for k in r["labels"]]
        out["plots"]["batch"] = str(plot(r["x"], {"step time / 16x8": rel, "proportional (batch/128)": [x / 128 for x in r["x"]]},
                                         xlabel="rollout batch (prompts x samples)", ylabel="relative step time",
                                         title="Trial step time vs rollout batch (tiny, MXFP4 W4A4)",
                                         path=args.plots / "scaling_batch.png", xticklabels=r["labels"]))
        print(C.render_table(["batch", "median step s", "relative to 16x8"],
                             [[k, r["step_s"][k], r["relative"][k]] for k in r["labels"]]))
    if "study" in parts:
        sizes = [0, 100, 1000]
        r = bench_study(sizes, 5 if args.quick else 10)
        out["study"] = r
        per = r["per_size"]
        out["plots"]["study"] = str(plot(sizes, {"suggest (budget + TPE/prior sample)": [per[n]["suggest_ms"] for n in sizes],
                                                 "report + complete (tell + ledger)": [per[n]["complete_ms"] for n in sizes]},
                                         xlabel="finished trials already in the study", ylabel="ms per trial",
                                         title="Driver time per trial vs study size (SQLite)",
                                         path=args.plots / "scaling_study_size.png", logx=True))
        print(C.render_table(["stored trials", "suggest ms", "complete ms", "total ms", "relative to 0"],
                             [[n, per[n]["suggest_ms"], per[n]["complete_ms"], per[n]["total_ms"], r["relative"][n]]
                              for n in sizes]))
    C.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
