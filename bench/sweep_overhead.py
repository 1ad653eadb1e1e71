"""Sweep overhead per trial: the product's run_sweep (Ray Tune + Optuna + SQLite) vs plain study.optimize.

Both sides run the shipped tiny study's search space (SearchSpace.define), its sampler
(space.make_sampler: TPE + the SRDD prior) and a fresh SQLite file, with a no-op objective that
reports the four validation steps (5, 10, 15, 20) and returns at once. The product side is
sweep.runner.run_sweep on plan_from_spec(spec, objective_fn=noop): the real driver, searcher
corrections, ASHA scheduler, ledger and progress lines; one trial at a time (max_concurrent=1)
so both sides do the same sequential work. Ray's one-off start is timed separately and left out
of the per-trial figure (it is paid once per sweep, not per trial). Repetitions alternate the two
sides (plain, sweep, plain, sweep, ...) and the figure is the difference of the medians.

    .venv/bin/python bench/sweep_overhead.py [--quick] [--trials N] [--reps R] [--json PATH]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

STEPS = (5, 10, 15, 20)
TARGET_S = 1.0


def _value(params: dict[str, Any]) -> float:
    """A cheap deterministic 'accuracy' so samplers see a real signal, not a constant."""
    import math

    return 0.9 - 0.1 * (math.log10(float(params["sigma_start"])) + 1.6) ** 2


def noop_objective(config: dict[str, Any], report: Any) -> Any:
    """The product's objective_fn shape; reports each validation step and returns at once."""
    from objective.result import TrialResult

    acc = _value(config)
    history = []
    for step in STEPS:
        metrics = {"val-core/tiny-arith/acc/mean@1": acc * step / STEPS[-1]}
        report(step, metrics)
        history.append({"step": step, "metrics": metrics})
    return TrialResult(status="complete", value=history[-1]["metrics"]["val-core/tiny-arith/acc/mean@1"],
                       step=STEPS[-1], history=history, wall_time_s=0.0)


def run_plain(trials: int, workdir: Path, tag: str) -> float:
    """Seconds for `trials` trials of plain study.optimize, same space, sampler and storage kind."""
    import optuna

    from sweep.runner import plan_from_spec

    spec = C.tiny_study_spec()
    plan = plan_from_spec(spec, objective_fn=noop_objective)
    url = f"sqlite:///{workdir / f'plain-{tag}.db'}"
    t0 = time.perf_counter()
    study = optuna.create_study(storage=url, study_name=f"plain-{tag}", direction="maximize", sampler=plan.sampler)

    def objective(trial: optuna.Trial) -> float:
        config = plan.space(trial)
        config.update(trial.params)
        value = 0.0
        for step in STEPS:
            value = _value(config) * step / STEPS[-1]
            trial.report(value, step)
        return value

    study.optimize(objective, n_trials=trials)
    return time.perf_counter() - t0


def run_product(trials: int, workdir: Path, tag: str) -> float:
    """Seconds for `trials` trials through sweep.runner.run_sweep with the no-op objective."""
    from sweep.budget import Budget
    from sweep.runner import plan_from_spec, run_sweep

    spec = C.tiny_study_spec()
    plan = plan_from_spec(spec, objective_fn=noop_objective)
    plan.study_name = f"sweep-{tag}"
    plan.max_concurrent = 1
    plan.budget = Budget(trials=trials)  # no compute-hours cap: the no-op trials are the point
    url = f"sqlite:///{workdir / f'sweep-{tag}.db'}"
    t0 = time.perf_counter()
    summary = run_sweep(plan, storage_url=url, max_trials=trials, results_dir=workdir / f"ray-{tag}",
                        stream=io.StringIO(), summary_every_s=1e9)
    elapsed = time.perf_counter() - t0
    done = sum(summary.counts.values())
    if done != trials:
        raise RuntimeError(f"sweep ran {done} trials, expected {trials} (counts {summary.counts})")
    return elapsed


def overhead(plain_s: list[float], sweep_s: list[float], trials: int) -> dict[str, float]:
    """Extra seconds per trial from the medians of the alternated repetitions."""
    if trials < 1:
        raise ValueError("trials must be >= 1")
    p, s = C.median(plain_s), C.median(sweep_s)
    return {"plain_s": p, "sweep_s": s, "plain_per_trial_s": p / trials, "sweep_per_trial_s": s / trials,
            "extra_per_trial_s": (s - p) / trials, "ratio": s / p if p > 0 else float("inf")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 trials, 1 repetition")
    ap.add_argument("--trials", type=int, default=None, help="trials per run (default 20; quick 8)")
    ap.add_argument("--reps", type=int, default=None, help="alternated repetitions (default 3; quick 1)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    trials = args.trials or (8 if args.quick else 20)
    reps = args.reps or (1 if args.quick else 3)
    if trials < 1 or reps < 1:
        raise SystemExit("sweep_overhead: --trials and --reps must be >= 1")
    C.quiet_libraries()
    from sweep import runner

    t0 = time.perf_counter()
    runner.ensure_ray()
    ray_start = time.perf_counter() - t0
    plain_s: list[float] = []
    sweep_s: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ns-bench-overhead-") as tmp:
        work = Path(tmp)
        run_plain(2, work, "warm")  # imports + first sampler call out of the timing
        for r in range(reps):
            plain_s.append(run_plain(trials, work, f"r{r}"))
            sweep_s.append(run_product(trials, work, f"r{r}"))
    res = overhead(plain_s, sweep_s, trials)
    res.update(trials=trials, reps=reps, ray_start_s=ray_start, plain_runs_s=plain_s, sweep_runs_s=sweep_s,
               target_extra_s=TARGET_S, met=res["extra_per_trial_s"] <= TARGET_S, driver_peak_rss_mb=C.peak_rss_mb())
    print(C.render_table(
        ["side", "trials", "median wall s", "s / trial"],
        [["plain study.optimize (TPE+prior, sqlite)", trials, res["plain_s"], res["plain_per_trial_s"]],
         ["run_sweep (Ray Tune + Optuna + sqlite)", trials, res["sweep_s"], res["sweep_per_trial_s"]]],
    ))
    print(f"extra per trial: {res['extra_per_trial_s']:.2f} s (target <= {TARGET_S} s); ratio {res['ratio']:.1f}x; "
          f"Ray start (once per sweep, not included): {ray_start:.1f} s; {reps} alternated repetition(s)")
    C.write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
