"""Pruning under noise, decided on real trials: how much does a rung value say about the final score?

Input: the real tiny trials that bench/signal.py ran and stored (bench/data/signal.json: full
20-step GRPO trials of the shipped study, validated at steps 0/5/10/15 on 300 problems and at
step 20 on 1,000; 6 configs x 5 seeds + random configs). Nothing here is a surrogate: each
trial's recorded curve is replayed through the pruning rule, as the sweep would have seen it.

Printed:
1. Per rung: the Spearman rank correlation of the rung value with the trial's final value and
   with its config's mean over seeds (the configs with >= 2 seeds), and the pooled seed sd of
   the rung value. A rung whose value does not rank the final one is a coin flip to prune on.
2. Per rule (ASHA on the rung sets {5,10,15} (the old default), {10,15}, {15}; no pruning),
   replayed over `--orders` random arrival orders with the product's rule (sweep.schedulers:
   Ray's ASHA cutoff, the (1 - 1/rf) quantile of the values already at the rung, and a cut only
   when >= 3 others reached it): the share of trial-steps saved, the share of trials cut, the
   share of the top-quartile trials (by final value) cut, and the chance the best trial is cut.
   A rule that cuts top-quartile trials as often as it cuts any trial is pruning at random.

    .venv/bin/python bench/pruning_noise.py [--data bench/data/signal.json] [--orders 500] [--json PATH] [--plot PATH]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from signal_bench import pooled_sd  # noqa: E402

RULES: dict[str, list[int]] = {"asha 5,10,15": [5, 10, 15], "asha 10,15": [10, 15], "asha 15": [15], "none": []}
MIN_OTHERS = 3  # sweep.schedulers.PruningPlan.min_samples
REDUCTION_FACTOR = 2.0


def load_trials(path: Path) -> list[dict[str, Any]]:
    """Complete trials with their rung values {step: acc} and final value."""
    data = json.loads(path.read_text())
    out = []
    for t in data["trials"]:
        if t.get("status") != "complete" or t.get("value") is None:
            continue
        hist = {int(h["step"]): float(h["acc"]) for h in t["history"]}
        out.append({"config": t["config"], "seed": t["seed"], "final": float(t["value"]), "rungs": hist})
    if len(out) < 8:
        raise SystemExit(f"pruning_noise: {path} holds {len(out)} complete trials; need >= 8")
    return out


def final_step(trials: list[dict[str, Any]]) -> int:
    return max(max(t["rungs"]) for t in trials)


def rung_signal(trials: list[dict[str, Any]], steps: list[int]) -> list[dict[str, Any]]:
    """Per rung: rank correlation with the final value and with the config's mean, pooled seed sd."""
    from scipy.stats import spearmanr

    by_config: dict[str, list[dict[str, Any]]] = {}
    for t in trials:
        by_config.setdefault(t["config"], []).append(t)
    replicated = {k: v for k, v in by_config.items() if len(v) >= 2}
    config_mean = {k: statistics.fmean(t["final"] for t in v) for k, v in replicated.items()}
    rows = []
    for step in steps:
        xs = [t["rungs"][step] for t in trials]
        rho_final = float(spearmanr(xs, [t["final"] for t in trials])[0]) if len(set(xs)) > 1 else None
        rep = [t for t in trials if t["config"] in replicated]
        rx = [t["rungs"][step] for t in rep]
        rho_mean = float(spearmanr(rx, [config_mean[t["config"]] for t in rep])[0]) if len(set(rx)) > 1 else None
        sds = [{"n": len(v), "sd": statistics.stdev([t["rungs"][step] for t in v])} for v in replicated.values()]
        rows.append({"step": step, "rho_final": rho_final, "rho_config_mean": rho_mean,
                     "seed_sd": pooled_sd(sds) if sds else None})
    return rows


def replay(trials: list[dict[str, Any]], rungs: list[int], order: list[int], total: int) -> dict[str, Any]:
    """One arrival order through ASHA as sweep.schedulers builds it (sequential: one trial reaches
    each rung after the ones before it). Returns the trial-steps run and which trials were cut."""
    import numpy as np

    recorded: dict[int, list[float]] = {r: [] for r in rungs}
    steps = 0
    cut: set[int] = set()
    for i in order:
        t = trials[i]
        stopped_at = None
        for r in sorted(rungs):
            value = t["rungs"][r]
            prior = recorded[r]
            cutoff = float(np.nanpercentile(prior, (1 - 1 / REDUCTION_FACTOR) * 100)) if prior else None
            recorded[r].append(value)
            if cutoff is not None and value < cutoff and len(prior) >= MIN_OTHERS:
                stopped_at = r
                break
        steps += stopped_at if stopped_at is not None else total
        if stopped_at is not None:
            cut.add(i)
    return {"steps": steps, "cut": cut}


def evaluate(trials: list[dict[str, Any]], orders: int, seed: int = 0) -> list[dict[str, Any]]:
    total = final_step(trials)
    finals = sorted((t["final"] for t in trials), reverse=True)
    q = max(1, len(trials) // 4)
    top = {i for i, t in enumerate(trials) if t["final"] >= finals[q - 1]}
    best = {i for i, t in enumerate(trials) if t["final"] == finals[0]}
    rng = random.Random(seed)
    perms = []
    for _ in range(orders):
        p = list(range(len(trials)))
        rng.shuffle(p)
        perms.append(p)
    rows = []
    for name, rungs in RULES.items():
        runs = [replay(trials, rungs, p, total) for p in perms]
        full = len(trials) * total
        rows.append({
            "rule": name, "rungs": rungs,
            "saved": 1 - statistics.fmean(r["steps"] for r in runs) / full,
            "cut": statistics.fmean(len(r["cut"]) for r in runs) / len(trials),
            "top_quartile_cut": statistics.fmean(len(r["cut"] & top) for r in runs) / len(top),
            "best_cut": statistics.fmean(1.0 if r["cut"] & best else 0.0 for r in runs),
        })
    return rows


def plot(trials: list[dict[str, Any]], steps: list[int], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, len(steps), figsize=(4 * len(steps), 3.6), sharey=True)
    for ax, step in zip(axes, steps):
        ax.scatter([100 * t["rungs"][step] for t in trials], [100 * t["final"] for t in trials], s=14, label="one trial")
        ax.set_xlabel(f"accuracy at step {step} (%, 300 problems)")
        ax.set_title(f"rung {step}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("final accuracy (%, 1,000 problems)")
    fig.suptitle("Real tiny trials: rung value vs final value")
    fig.tight_layout()
    return C.save_plot(fig, axes[0], path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=C.DATA / "signal.json")
    ap.add_argument("--orders", type=int, default=500)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--plot", type=Path, default=C.BENCH / "pruning_noise.png")
    args = ap.parse_args(argv)
    if not args.data.is_file():
        raise SystemExit(f"pruning_noise: no trials at {args.data} (run bench/signal.py --json {args.data} first)")
    if args.orders < 1:
        raise SystemExit("pruning_noise: --orders must be >= 1")
    trials = load_trials(args.data)
    total = final_step(trials)
    steps = sorted({s for t in trials for s in t["rungs"] if 0 < s < total})
    signal_rows = rung_signal(trials, steps)
    print(C.render_table(
        ["rung step", "Spearman vs final", "Spearman vs config mean", "seed sd (points)"],
        [[r["step"], C.fmt(r["rho_final"]), C.fmt(r["rho_config_mean"]),
          C.fmt(None if r["seed_sd"] is None else 100 * r["seed_sd"], 1)] for r in signal_rows]))
    rule_rows = evaluate(trials, args.orders)
    print(C.render_table(
        ["rule", "trial-steps saved", "trials cut", "top-quartile trials cut", "best trial cut"],
        [[r["rule"], f"{100 * r['saved']:.1f} %", f"{100 * r['cut']:.1f} %", f"{100 * r['top_quartile_cut']:.1f} %",
          f"{100 * r['best_cut']:.1f} %"] for r in rule_rows]))
    print(f"settings: {len(trials)} real trials from {args.data.name}, final step {total}, "
          f"{args.orders} arrival orders, reduction factor {REDUCTION_FACTOR:g}, cut only with >= {MIN_OTHERS} others")
    png = plot(trials, steps, args.plot)
    if png is not None:
        print(f"wrote {png}")
    C.write_json(args.json, {"rungs": signal_rows, "rules": rule_rows, "trials": len(trials), "orders": args.orders})
    return 0


if __name__ == "__main__":
    sys.exit(main())
