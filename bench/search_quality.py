"""Search quality on real tiny trials: does noisesweep's answer beat plain search, confirmed on fresh seeds?

The arms, each run end to end by the product (sweep.runner.run_sweep on plan_from_spec of
studies/tiny-mxfp4-w4a4.yaml with the real built-in tiny trainer; no surrogate), repeated with
different sweep seeds (sampler seed and trial seed change together):

  1. noisesweep  : the study's defaults (sampler under the SRDD prior + racing + pruning + the
                   seeds' hand configs first), with HALF the trial budget of the others;
  2. tpe         : plain Optuna TPE, one run per config, no pruning, no hand configs;
  3. random      : random search, one run per config, no pruning, no hand configs;
  4. hand        : the seeds' five hand configs, one run each;
  5. ns-tpe, ns-gp : noisesweep's defaults with the sampler pinned to `prior` (TPE + the decaying
                   SRDD prior) or `gp-prior` (Optuna's GPSampler, noisy objective, under the same
                   prior): the sampler comparison at noisesweep's budget;
  6. ns-noprune  : noisesweep's defaults with pruning off: what ASHA saves, and what it costs;
  7. ns-open, ns-tpe-open, ns-gp-open : the sampler comparison proper. With half the budget and
                   the five hand configs first, arms 1 and 5 leave the sampler one or two configs
                   to choose, so these run without hand configs on the full budget (racing and
                   pruning on): the defaults, then each sampler pinned;
  8. ns-norace-open : ns-tpe-open with racing off (one run per config): what racing costs or buys.

The arms that pin nothing follow the defaults of the tree they run on: in the recorded run of
2026-12-01 (bench/RESULTS.md) the default sampler was still `prior`, so there `noisesweep` and
`ns-open` are TPE + prior; the default is `gp-prior` since.

Each arm's answer (`noisesweep best`: replicates where they exist, else the best single run) is
then confirmed on fresh seeds from the confirmation pool (sweep.confirm.confirm_study, top 1).
Per arm: the chosen config, its confirmed mean and 95 % CI, compute spent (trial-steps and
CPU-hours, confirmations excluded) and the search-vs-confirmed gap. Targets: noisesweep's
confirmed mean >= every other arm's, on <= 1/2 of their compute.

The trial is reduced so the arms fit on a shared 2-core CPU (printed and stored):
10 GRPO steps validated at 0/5/10, 8 prompts x 8 samples. `--quick` is a smoke run.

    .venv/bin/python bench/search_quality.py [--quick] [--budget N] [--reps R] [--confirm-seeds S] [--json PATH]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

NOISESWEEP_ARMS = ("noisesweep", "ns-tpe", "ns-gp", "ns-noprune")  # half the budget, hand configs first
SAMPLER_ARMS = ("ns-open", "ns-tpe-open", "ns-gp-open", "ns-norace-open")  # full budget, no hand configs
ARMS = ("noisesweep", "tpe", "random", "hand", *NOISESWEEP_ARMS[1:], *SAMPLER_ARMS)
DEFAULT_ARMS = ("noisesweep", "tpe", "random", "hand", "ns-tpe", "ns-noprune")
TRIAL = [
    "objective.config.steps.total=10", "objective.config.steps.val_at=[0,5,10]",
    "objective.config.algo.prompts_per_step=8", "objective.config.algo.samples_per_prompt=8",
]
QUICK_TRIAL = [
    "objective.config.steps.total=4", "objective.config.steps.val_at=[0,2,4]",
    "objective.config.task.num_val=40", "objective.config.algo.prompts_per_step=4",
    "objective.config.algo.samples_per_prompt=4",
]


def arm_overrides(arm: str, rep: int) -> list[str]:
    """Study-file overrides that make `arm` out of the shipped tiny study, for repetition `rep`."""
    seed = [f"sampler.seed={rep}", f"trial_seed={100 * rep}"]
    if arm == "noisesweep":
        return seed
    pinned = {"ns-tpe": ["sampler.kind=prior"], "ns-gp": ["sampler.kind=gp-prior"],
              "ns-noprune": ["pruning.enabled=false"], "ns-open": ["seed_configs=[]"],
              "ns-tpe-open": ["seed_configs=[]", "sampler.kind=prior"],
              "ns-gp-open": ["seed_configs=[]", "sampler.kind=gp-prior"],
              "ns-norace-open": ["seed_configs=[]", "sampler.kind=prior", "racing.enabled=false"]}
    if arm in pinned:
        return [*seed, *pinned[arm]]
    single = ["racing.enabled=false", "pruning.enabled=false"]
    if arm == "tpe":
        return [*seed, *single, "sampler.kind=tpe", "seed_configs=[]"]
    if arm == "random":
        return [*seed, *single, "sampler.kind=random", "seed_configs=[]"]
    if arm == "hand":
        return [*seed, *single, "seed_configs=default"]
    raise ValueError(f"unknown arm {arm!r}")


def trial_steps(trials: list[Any]) -> int:
    """Sum of the last step each finished trial ran (a pruned trial counts up to its cut)."""
    return sum(int(t.user_attrs["last_step"]) for t in trials
               if t.state.is_finished() and t.user_attrs.get("last_step") is not None)


def run_arm(arm: str, rep: int, budget: int, trial: list[str], confirm_seeds: int, workdir: Path) -> dict[str, Any]:
    from sweep.best import best_result
    from sweep.budget import Budget
    from sweep.confirm import confirm_study
    from sweep.record import open_record
    from sweep.runner import plan_from_spec, run_sweep

    name = f"sq-{arm}-{rep}"
    spec = C.tiny_study_spec([*trial, *arm_overrides(arm, rep), f"name={name}"])
    trials_budget = 5 if arm == "hand" else (max(budget // 2, 1) if arm in NOISESWEEP_ARMS else budget)
    plan = plan_from_spec(spec)
    plan.budget = Budget(trials=trials_budget)
    url = f"sqlite:///{workdir / f'{name}.db'}"
    t0 = time.perf_counter()
    run_sweep(plan, storage_url=url, max_trials=trials_budget, results_dir=workdir / f"ray-{name}",
              stream=io.StringIO(), summary_every_s=1e9)
    sweep_s = time.perf_counter() - t0
    record = open_record(spec.name, storage=url)
    trials = record.study.get_trials(deepcopy=False)
    hours = sum(float(t.user_attrs.get("compute_hours") or 0.0) for t in trials)
    best = best_result(record)
    conf = confirm_study(record, top=1, seeds=confirm_seeds, stream=io.StringIO())[0]
    out = {
        "arm": arm, "rep": rep, "trials": sum(t.state.is_finished() for t in trials), "trial_steps": trial_steps(trials), "cpu_hours": hours,
        "sweep_s": sweep_s, "chosen_trial": best.trial.number, "chosen_by": best.chosen_by, "n_seeds": best.n_seeds,
        "params": best.params, "search_score": best.search_score, "confirmed_mean": conf.mean,
        "ci_low": conf.ci_low, "ci_high": conf.ci_high, "confirm_values": conf.values,
        "confirmed_trial": conf.trial,
    }
    out["gap"] = None if conf.mean is None else out["search_score"] - conf.mean
    print(f"search_quality: {arm} rep {rep}: {out['trials']} trials, {out['trial_steps']} trial-steps, "
          f"chosen {best.trial.number} by {best.chosen_by}, search {out['search_score']:.3f}, "
          f"confirmed {C.fmt(conf.mean, 3)} ({sweep_s:.0f} s)", file=sys.stderr, flush=True)
    return out


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per arm: mean confirmed accuracy over repetitions, compute, gap."""
    out: dict[str, dict[str, Any]] = {}
    for arm in ARMS:
        rs = [r for r in runs if r["arm"] == arm and r["confirmed_mean"] is not None]
        if not rs:
            continue
        out[arm] = {
            "confirmed_mean": statistics.fmean(r["confirmed_mean"] for r in rs),
            "trial_steps": statistics.fmean(r["trial_steps"] for r in rs),
            "cpu_hours": statistics.fmean(r["cpu_hours"] for r in rs),
            "gap": statistics.fmean(r["gap"] for r in rs),
            "reps": len(rs),
        }
    return out


def verdict(summary: dict[str, dict[str, Any]]) -> dict[str, Any]:
    ns = summary.get("noisesweep")
    others = {k: v for k, v in summary.items() if k not in NOISESWEEP_ARMS + SAMPLER_ARMS}
    if ns is None or not others:
        return {"best_mean": None, "half_compute": None}
    return {
        "best_mean": all(ns["confirmed_mean"] >= v["confirmed_mean"] for v in others.values()),
        "half_compute": all(ns["trial_steps"] <= 0.5 * v["trial_steps"] for k, v in others.items() if k != "hand"),
    }


def paired(runs: list[dict[str, Any]], a: str, b: str) -> dict[str, Any] | None:
    """`b` against `a`, paired by repetition (same sweep seed, same trial seeds): the confirmed
    difference b - a per repetition, its mean and 95 % CI, and b's trial-steps relative to a's."""
    from sweep.stats import mean_ci

    by = {(r["arm"], r["rep"]): r for r in runs if r["confirmed_mean"] is not None}
    reps = sorted(rep for (arm, rep) in by if arm == a and (b, rep) in by)
    if not reps:
        return None
    diffs = [by[(b, r)]["confirmed_mean"] - by[(a, r)]["confirmed_mean"] for r in reps]
    steps_a = sum(by[(a, r)]["trial_steps"] for r in reps)
    steps_b = sum(by[(b, r)]["trial_steps"] for r in reps)
    mean, low, high = mean_ci(diffs)
    return {"a": a, "b": b, "reps": len(reps), "diffs": diffs, "mean_diff": mean, "ci_low": low, "ci_high": high,
            "steps_ratio": steps_b / steps_a if steps_a else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--budget", type=int, default=20, help="trials of the tpe/random arms (the noisesweep arms get half)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--confirm-seeds", type=int, default=5)
    ap.add_argument("--arms", default=",".join(DEFAULT_ARMS), help=f"comma list of: {', '.join(ARMS)}")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.budget, args.reps, args.confirm_seeds = 2, 1, 2
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown or args.budget < 2 or args.reps < 1 or args.confirm_seeds < 2:
        raise SystemExit(f"search_quality: bad arguments (arms {unknown or arms}, budget >= 2, reps >= 1, confirm-seeds >= 2)")
    trial = QUICK_TRIAL if args.quick else TRIAL
    C.quiet_libraries()
    from sweep import runner

    runner.ensure_ray()
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="ns-bench-sq-") as tmp:
        for rep in range(args.reps):  # interleaved: each repetition runs every arm under the same load
            for arm in arms:
                runs.append(run_arm(arm, rep, args.budget, trial, args.confirm_seeds, Path(tmp)))
                C.write_json(args.json, {"partial": True, "runs": runs})  # a long run keeps what it finished
    print(C.render_table(
        ["arm", "rep", "trials", "trial-steps", "CPU-h", "chosen (by, seeds)", "search", "confirmed [95% CI]", "gap"],
        [[r["arm"], r["rep"], r["trials"], r["trial_steps"], C.fmt(r["cpu_hours"], 3),
          f"{r['chosen_trial']} ({r['chosen_by']}, {r['n_seeds']})", C.fmt(r["search_score"], 3),
          f"{C.fmt(r['confirmed_mean'], 3)} [{C.fmt(r['ci_low'], 3)}, {C.fmt(r['ci_high'], 3)}]", C.fmt(r["gap"], 3)]
         for r in runs]))
    summary = summarize(runs)
    print(C.render_table(
        ["arm", "reps", "mean confirmed", "mean trial-steps", "mean CPU-h", "mean gap"],
        [[k, v["reps"], C.fmt(v["confirmed_mean"], 3), C.fmt(v["trial_steps"], 1), C.fmt(v["cpu_hours"], 3),
          C.fmt(v["gap"], 3)] for k, v in summary.items()]))
    pairs = [p for p in (paired(runs, "ns-tpe", "ns-gp"), paired(runs, "ns-tpe-open", "ns-gp-open"),
                         paired(runs, "noisesweep", "ns-gp"), paired(runs, "ns-open", "ns-gp-open"),
                         paired(runs, "ns-noprune", "noisesweep"), paired(runs, "ns-norace-open", "ns-tpe-open"),
                         paired(runs, "ns-norace-open", "ns-open")) if p]
    if pairs:
        print(C.render_table(
            ["comparison", "reps", "confirmed diff (b - a) per rep", "mean diff [95% CI]", "b's trial-steps / a's"],
            [[f"{p['b']} vs {p['a']}", p["reps"], ", ".join(f"{d:+.3f}" for d in p["diffs"]),
              f"{C.fmt(p['mean_diff'], 3)} [{C.fmt(p['ci_low'], 3)}, {C.fmt(p['ci_high'], 3)}]",
              C.fmt(p["steps_ratio"], 2)] for p in pairs]))
    v = verdict(summary)
    print(f"noisesweep's confirmed mean >= every other arm's: {C.fmt(v['best_mean'])}; "
          f"on <= 1/2 of tpe/random's trial-steps: {C.fmt(v['half_compute'])}")
    print(f"settings: {'; '.join(trial)}; budget {args.budget} trials (tpe, random, *-open; "
          f"noisesweep, ns-tpe, ns-gp, ns-noprune {max(args.budget // 2, 1)}; hand 5); "
          f"{args.reps} repetition(s); confirmed on {args.confirm_seeds} fresh seeds")
    C.write_json(args.json, {"settings": {"trial": trial, "budget": args.budget, "reps": args.reps,
                                          "confirm_seeds": args.confirm_seeds},
                             "runs": runs, "summary": summary, "verdict": v, "paired": pairs, "machine": C.machine_info()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
