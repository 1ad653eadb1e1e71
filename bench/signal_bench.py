"""How much signal the tiny miniature carries: seed noise of one trial and what a surrogate can learn.

Real tiny trials (objective.run_trial, in this process, one after another), on the shipped study
`studies/tiny-mxfp4-w4a4.yaml`:

- a grid of named configs spanning the space (no noise; the seeds' E13i-baseline and E13j-variable;
  a high and a low sigma; a zone-targeted one with alpha 1), each on the same `--seeds` seeds;
- `--random` configs drawn uniformly from the study's search space (fixed sampler seed), one seed each.

Printed: per config the mean, sd and 95 % CI (Student t) of the final-step accuracy and the paired
difference to no noise on the same seeds (common random numbers make pairs tighter than the sds);
the pooled seed sd of one trial (and how much of it one binomial evaluation error explains); and the
leave-one-out R^2 of a Gaussian-process surrogate (scikit-learn, ARD Matern + WhiteKernel) fitted to
every trial inside the search space (all but no-noise). Targets: seed sd <= 1.5 points, LOO R^2 >= 0.3.

Raw trials go to `--out` (default bench/data/signal.json) after each trial; a rerun with the same
settings resumes from it. `--quick` runs a shrunken version (short trials, few configs) for the
smoke test.

    nice python bench/signal.py [--seeds 5] [--random 10] [--quick] [--out PATH] [--json PATH]

(bench/signal.py is the entry point the issue names; the code lives here because a module called
`signal` cannot be imported without shadowing the standard library's.)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import _common as C

NO_NOISE = "no-noise"
# name -> search-space params (None: noise off). sigma_ratio = sigma_end / sigma_start.
CONFIGS: dict[str, dict[str, Any] | None] = {
    NO_NOISE: None,
    "E13i-baseline": {"sigma_start": 0.05, "sigma_ratio": 0.01, "num_stages": 10, "zones": "all", "alpha": 0.0},
    "E13j-variable": {"sigma_start": 0.05, "sigma_ratio": 0.01, "num_stages": 10, "zones": "all", "alpha": 1.0},
    "high-sigma": {"sigma_start": 0.2, "sigma_ratio": 0.01, "num_stages": 10, "zones": "all", "alpha": 0.0},
    "low-sigma": {"sigma_start": 0.005, "sigma_ratio": 0.01, "num_stages": 10, "zones": "all", "alpha": 0.0},
    "worst-zone-alpha1": {"sigma_start": 0.05, "sigma_ratio": 0.01, "num_stages": 10, "zones": "worst", "alpha": 1.0},
}
QUICK_CONFIGS = (NO_NOISE, "E13j-variable", "high-sigma")
QUICK_SETS = ("steps.total=2", "steps.val_at=[0,2]", "task.num_val=16", "task.num_val_intermediate=8",
              "algo.prompts_per_step=2", "algo.samples_per_prompt=2")
SEEDS_FROM = 1  # seeds SEEDS_FROM .. SEEDS_FROM + n - 1 (the study's own trial_seed is 0)
RANDOM_SAMPLER_SEED = 12345
TARGET_SEED_SD = 1.5
TARGET_LOO_R2 = 0.3


# ----------------------------------------------------------------------------- the design
def design(seeds: int, n_random: int, space: Any, *, quick: bool = False) -> list[dict[str, Any]]:
    """The trials to run: named configs x seeds, then random configs (one seed each)."""
    import optuna

    names = QUICK_CONFIGS if quick else tuple(CONFIGS)
    out: list[dict[str, Any]] = []
    for name in names:
        params = CONFIGS[name]
        for s in range(SEEDS_FROM, SEEDS_FROM + seeds):
            out.append({"config": name, "params": _resolve(params, space), "seed": s})
    sampler = optuna.samplers.RandomSampler(seed=RANDOM_SAMPLER_SEED)
    study = optuna.create_study(sampler=sampler)
    for i in range(n_random):
        trial = study.ask()
        space.define(trial)  # suggests the params (its return value is the derived constants)
        params = dict(trial.params)
        out.append({"config": f"random-{i}", "params": params, "seed": SEEDS_FROM + i % max(seeds, 1)})
        study.tell(trial, 0.0)
    return out


def _resolve(params: Mapping[str, Any] | None, space: Any) -> dict[str, Any] | None:
    """`worst` -> the profile's worst zone name, so the record says which layers were targeted."""
    if params is None:
        return None
    p = dict(params)
    if p["zones"] == "worst":
        p["zones"] = space.zone_rank[0]
    return p


def trial_config(space: Any, params: Mapping[str, Any] | None, seed: int) -> Any:
    """The study's trainer config for one (config, seed); noise off when params is None."""
    if params is not None:
        return space.to_trial_config(params, seed=seed)
    from objective.config import TrialConfig

    data = space.spec.objective.config.model_dump()
    data["seed"] = int(seed)
    data["noise"]["enabled"] = False
    return TrialConfig.model_validate(data)


def run_design(plan: Sequence[dict[str, Any]], space: Any, out: Path, settings: Mapping[str, Any],
               run: Callable[[Any], Any] | None = None, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run every planned trial not already in `out` (same settings), saving after each one."""
    from objective import run_trial

    run = run or run_trial
    done: list[dict[str, Any]] = []
    if out.is_file():
        old = json.loads(out.read_text())
        if old.get("settings") == dict(settings):
            done = list(old.get("trials", []))
    have = {(t["config"], t["seed"]) for t in done}
    metric = space.spec.metric
    for i, item in enumerate(plan):
        if (item["config"], item["seed"]) in have:
            continue
        t0 = time.perf_counter()
        res = run(trial_config(space, item["params"], item["seed"]))
        rec = {**item, "status": res.status, "value": res.value, "reason": res.reason,
               "wall_time_s": round(time.perf_counter() - t0, 2),
               "history": [{"step": h["step"], "acc": h["metrics"].get(metric)} for h in res.history]}
        done.append(rec)
        C.write_json(out, {"settings": dict(settings), "trials": done})
        val = f"{100 * res.value:.1f}" if res.value is not None else "-"
        log(f"[{i + 1}/{len(plan)}] {item['config']} seed {item['seed']}: {res.status} {val} ({rec['wall_time_s']:.0f} s)")
    return done


# ----------------------------------------------------------------------------- statistics
def t_ci95(values: Sequence[float]) -> tuple[float, float]:
    """95 % Student-t interval of the mean (sweep.stats.mean_ci; NaNs for fewer than 2 values)."""
    from sweep.stats import mean_ci

    if len(values) < 2:
        return (math.nan, math.nan)
    _, low, high = mean_ci(list(values))
    assert low is not None and high is not None  # two or more values always give an interval
    return (low, high)


def per_config(trials: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean, sd, 95 % CI per named config (points), and the paired difference to no noise."""
    by: dict[str, dict[int, float]] = {}
    for t in trials:
        if t["status"] == "complete" and t["value"] is not None and not t["config"].startswith("random-"):
            by.setdefault(t["config"], {})[t["seed"]] = 100.0 * t["value"]
    base = by.get(NO_NOISE, {})
    rows = []
    for name, vals in by.items():
        v = list(vals.values())
        row: dict[str, Any] = {"config": name, "n": len(v), "mean": statistics.mean(v),
                               "sd": statistics.stdev(v) if len(v) > 1 else math.nan, "ci95": t_ci95(v)}
        if name != NO_NOISE:
            diffs = [vals[s] - base[s] for s in vals if s in base]
            if len(diffs) > 1:
                row["paired_diff"] = statistics.mean(diffs)
                row["paired_sd"] = statistics.stdev(diffs)
                row["paired_ci95"] = t_ci95(diffs)
        rows.append(row)
    return rows


def pooled_sd(rows: Sequence[Mapping[str, Any]]) -> float:
    """Pooled within-config sd: sqrt(sum (n_i - 1) s_i^2 / sum (n_i - 1))."""
    num = sum((r["n"] - 1) * r["sd"] ** 2 for r in rows if r["n"] > 1)
    den = sum(r["n"] - 1 for r in rows if r["n"] > 1)
    return math.sqrt(num / den) if den else math.nan


def binomial_sd(mean_points: float, num_problems: int) -> float:
    """One evaluation's binomial standard error in points: the floor any seed sd sits on."""
    p = mean_points / 100.0
    return 100.0 * math.sqrt(max(p * (1 - p), 0.0) / num_problems)


def features(params: Mapping[str, Any], zone_choices: Sequence[str]) -> list[float]:
    """Surrogate inputs: log10 sigma_start, log10 sigma_ratio, num_stages, alpha, one-hot zones."""
    return [math.log10(float(params["sigma_start"])), math.log10(float(params["sigma_ratio"])),
            float(params["num_stages"]), float(params["alpha"])] + [
        1.0 if params["zones"] == z else 0.0 for z in zone_choices]


def loo_r2(trials: Sequence[dict[str, Any]], zone_choices: Sequence[str]) -> dict[str, Any]:
    """Leave-one-out R^2 of a GP (ARD Matern 5/2 + WhiteKernel) on every trial in the search space."""
    import warnings

    import numpy as np
    from sklearn.gaussian_process import GaussianProcessRegressor
    from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel
    from sklearn.model_selection import LeaveOneOut, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pts = [t for t in trials if t["params"] is not None and t["status"] == "complete" and t["value"] is not None]
    if len(pts) < 6:
        return {"n": len(pts), "loo_r2": None}
    X = np.array([features(t["params"], zone_choices) for t in pts])
    y = np.array([100.0 * t["value"] for t in pts])
    n_in = X.shape[1]

    def make() -> Any:
        kernel = ConstantKernel(1.0, (1e-3, 1e3)) * Matern(np.ones(n_in), (5e-2, 1e2), nu=2.5) + WhiteKernel(
            0.5, (1e-4, 1e1))
        gp = GaussianProcessRegressor(kernel, normalize_y=True, n_restarts_optimizer=2, random_state=0)
        return make_pipeline(StandardScaler(), gp)

    from threadpoolctl import threadpool_limits

    # 30 x 9 matrices: BLAS threads only fight each other (and everything else on a shared box)
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")  # convergence notes at the length-scale bounds
        pred = cross_val_predict(make(), X, y, cv=LeaveOneOut())
        kernel = str(make().fit(X, y)[-1].kernel_)
    ss_res, ss_tot = float(((y - pred) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    return {"n": len(pts), "loo_r2": 1 - ss_res / ss_tot if ss_tot > 0 else None,
            "loo_rmse": math.sqrt(ss_res / len(y)), "y_sd": float(y.std(ddof=1)), "kernel": kernel}


def summarize(trials: Sequence[dict[str, Any]], zone_choices: Sequence[str], num_val: int) -> dict[str, Any]:
    """Everything the tables print, as one dict (also what --json writes)."""
    rows = per_config(trials)
    sd = pooled_sd(rows)
    means = [r["mean"] for r in rows]
    binom = binomial_sd(statistics.mean(means), num_val) if means else math.nan
    return {"configs": rows, "pooled_seed_sd": sd, "binomial_sd": binom, "gp": loo_r2(trials, zone_choices),
            "trials": len(trials), "failed": sum(t["status"] != "complete" for t in trials),
            "wall_time_s": sum(t["wall_time_s"] for t in trials), "num_val": num_val}


def render(summary: Mapping[str, Any]) -> str:
    """The per-config table and the headline figures, as markdown."""
    rows = []
    for r in summary["configs"]:
        lo, hi = r["ci95"]
        pd = r.get("paired_diff")
        paired = f"{pd:+.1f} [{r['paired_ci95'][0]:+.1f}, {r['paired_ci95'][1]:+.1f}] (sd {r['paired_sd']:.1f})" \
            if pd is not None else "-"
        rows.append([r["config"], r["n"], f"{r['mean']:.1f}", f"{r['sd']:.1f}", f"[{lo:.1f}, {hi:.1f}]", paired])
    table = C.render_table(["config", "seeds", "mean %", "sd", "95 % CI", "vs no-noise, same seeds"], rows)
    gp = summary["gp"]
    r2 = gp.get("loo_r2")
    sd = summary["pooled_seed_sd"]
    lines = [
        table,
        "",
        f"pooled seed sd of one trial: {sd:.2f} points (target <= {TARGET_SEED_SD}: "
        f"{'met' if sd <= TARGET_SEED_SD else 'NOT met'}); one evaluation's binomial sd on "
        f"{summary['num_val']} problems: {summary['binomial_sd']:.2f}",
        f"GP surrogate LOO R^2 on {gp['n']} real trials: "
        + (f"{r2:.2f} (target >= {TARGET_LOO_R2}: {'met' if r2 >= TARGET_LOO_R2 else 'NOT met'}; "
           f"LOO rmse {gp['loo_rmse']:.2f} vs sd {gp['y_sd']:.2f})" if r2 is not None
           else "n/a (" + ("too few trials" if gp["n"] < 6 else "no variance to explain") + ")"),
        f"{summary['trials']} trials ({summary['failed']} not complete), {summary['wall_time_s'] / 60:.1f} min of trials",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=5, help="seeds per named config (default 5)")
    ap.add_argument("--random", type=int, default=10, help="random configs from the space, one seed each (default 10)")
    ap.add_argument("--quick", action="store_true", help="short trials, 3 configs x 2 seeds + 2 random (smoke test)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="study override (repeatable)")
    ap.add_argument("--out", type=Path, default=None, help="raw trials JSON (default bench/data/signal[_quick].json)")
    ap.add_argument("--json", type=Path, default=None, help="also write the summary here")
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.random = min(args.seeds, 2), min(args.random, 2)
    C.quiet_libraries()
    sets = [*(QUICK_SETS if args.quick else ()), *args.set]
    spec = C.tiny_study_spec([f"objective.config.{s}" for s in sets])
    from sweep.space import SearchSpace

    space = SearchSpace.from_spec(spec)
    out = args.out or C.DATA / ("signal_quick.json" if args.quick else "signal.json")
    settings = {"seeds": args.seeds, "random": args.random, "quick": args.quick, "sets": sets,
                "profile_sha": spec.srdd_profile.source.get("checkpoint_sha256")}
    plan = design(args.seeds, args.random, space, quick=args.quick)
    t0 = time.perf_counter()
    trials = run_design(plan, space, out, settings)
    summary = summarize(trials, space.zone_choices, spec.objective.config.task.num_val)
    summary["settings"] = settings
    summary["driver_wall_s"] = time.perf_counter() - t0
    print(render(summary))
    C.write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
