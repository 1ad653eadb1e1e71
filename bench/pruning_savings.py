"""Compute saved by pruning: the tiny study with ASHA at the validation steps vs the same budget without.

Both arms run the product end to end (sweep.runner.run_sweep on plan_from_spec of
studies/tiny-mxfp4-w4a4.yaml with the real built-in tiny trainer, the same sampler seed, the
same trial budget, two trials at a time); the only difference is `pruning.enabled`. Then the
best COMPLETE config of each arm is confirmed with sweep.confirm.confirm_study on fresh seeds
(the confirmed mean is what a user would trust). Figures: trial-steps run (sum of each trial's
last step) with / without pruning (target >= 40 % fewer) and the two confirmed means (target:
within noise, i.e. the difference inside the confirmation intervals).

Reduced setting, so the two sweeps fit on a shared 2-core CPU (`--quick` smaller still; the
settings used are printed and stored in the JSON):
  full : 10 trials, 20 steps validated at 0/5/10/15/20 on 100 problems, 8 prompts x 8 samples,
         best confirmed on 3 seeds;
  quick: 6 trials, 10 steps validated at 0/2/4/6/8/10 on 40 problems, 8 prompts x 4 samples,
         best confirmed on 2 seeds.
ASHA keeps the product's rule of cutting only when >= 3 other trials reached the rung, so in a
small budget the first trials are never cut: a larger budget saves more.

    .venv/bin/python bench/pruning_savings.py [--quick] [--trials N] [--json PATH]
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

TARGET_FEWER = 0.40


def settings(quick: bool) -> dict[str, Any]:
    """The reduced tiny setting for each mode, as study-file overrides."""
    if quick:
        return {"trials": 6, "confirm_seeds": 2, "overrides": [
            "objective.config.steps.total=10", "objective.config.steps.val_at=[0,2,4,6,8,10]",
            "objective.config.task.num_val=40", "objective.config.algo.prompts_per_step=8",
            "objective.config.algo.samples_per_prompt=4"]}
    return {"trials": 10, "confirm_seeds": 3, "overrides": [
        "objective.config.task.num_val=100", "objective.config.algo.prompts_per_step=8",
        "objective.config.algo.samples_per_prompt=8"]}


def trial_steps(trials: list[Any]) -> int:
    """Sum of the last step each finished trial ran (a pruned trial counts up to its cut)."""
    total = 0
    for t in trials:
        step = t.user_attrs.get("last_step")
        if step is not None and t.state.is_finished():
            total += int(step)
    return total


def savings(steps_pruned: int, steps_full: int) -> float | None:
    """Share of trial-steps pruning saved (0.4 = 40 % fewer); None without a baseline."""
    if steps_full <= 0:
        return None
    return 1.0 - steps_pruned / steps_full


def within_noise(a: dict[str, Any], b: dict[str, Any]) -> bool | None:
    """True when each arm's confirmed mean lies inside the other's 95 % interval (None: no interval)."""
    if None in (a.get("confirmed_mean"), b.get("confirmed_mean"), a.get("ci_low"), b.get("ci_low")):
        return None
    return (a["ci_low"] <= b["confirmed_mean"] <= a["ci_high"]) or (b["ci_low"] <= a["confirmed_mean"] <= b["ci_high"])


def run_arm(pruned: bool, cfg: dict[str, Any], workdir: Path) -> dict[str, Any]:
    from optuna.trial import TrialState

    from sweep.budget import Budget
    from sweep.confirm import confirm_study
    from sweep.record import open_record
    from sweep.runner import plan_from_spec, run_sweep

    name = "pruned" if pruned else "unpruned"
    spec = C.tiny_study_spec([*cfg["overrides"], f"pruning.enabled={str(pruned).lower()}", f"name=bench-{name}"])
    plan = plan_from_spec(spec)
    plan.budget = Budget(trials=cfg["trials"])
    url = f"sqlite:///{workdir / f'{name}.db'}"
    t0 = time.perf_counter()
    summary = run_sweep(plan, storage_url=url, max_trials=cfg["trials"], results_dir=workdir / f"ray-{name}",
                        stream=io.StringIO(), summary_every_s=1e9)
    sweep_s = time.perf_counter() - t0
    record = open_record(spec.name, storage=url)
    trials = record.study.get_trials(deepcopy=False)
    out: dict[str, Any] = {
        "sweep_s": sweep_s, "trial_steps": trial_steps(trials), "counts": summary.counts,
        "best_single": summary.best_value, "best_number": summary.best_number, "best_params": summary.best_params,
        "pruned_at": [t.user_attrs.get("last_step") for t in trials if t.state == TrialState.PRUNED],
    }
    if summary.best_number is not None:
        t1 = time.perf_counter()
        conf = confirm_study(record, top=1, seeds=cfg["confirm_seeds"], stream=io.StringIO())[0]
        out.update(confirmed_mean=conf.mean, ci_low=conf.ci_low, ci_high=conf.ci_high, confirm_values=conf.values,
                   confirm_s=time.perf_counter() - t1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--trials", type=int, help="trial budget of each arm (default 10; quick 6)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    cfg = settings(args.quick)
    if args.trials is not None:
        if args.trials < 1:
            raise SystemExit("pruning_savings: --trials must be >= 1")
        cfg["trials"] = args.trials
    C.quiet_libraries()
    from sweep import runner

    runner.ensure_ray()
    with tempfile.TemporaryDirectory(prefix="ns-bench-prune-") as tmp:
        arms = {"with ASHA": run_arm(True, cfg, Path(tmp)), "without pruning": run_arm(False, cfg, Path(tmp))}
    p, f = arms["with ASHA"], arms["without pruning"]
    saved = savings(p["trial_steps"], f["trial_steps"])
    res = {"settings": cfg, "arms": arms, "saved_fraction": saved, "target_saved": TARGET_FEWER,
           "met_steps": saved is not None and saved >= TARGET_FEWER, "within_noise": within_noise(p, f)}
    print(C.render_table(
        ["arm", "trials", "trial-steps", "pruned (at step)", "best single run", "confirmed mean [95% CI]", "sweep s"],
        [[k, sum(a["counts"].values()), a["trial_steps"], f"{len(a['pruned_at'])} {a['pruned_at']}", a["best_single"],
          (f"{a['confirmed_mean']:.3f} [{C.fmt(a.get('ci_low'), 3)}, {C.fmt(a.get('ci_high'), 3)}]"
           if a.get("confirmed_mean") is not None else "n/a"), a["sweep_s"]] for k, a in arms.items()]))
    print(f"trial-steps saved by pruning: {C.fmt(None if saved is None else saved * 100, 1)} % "
          f"(target >= {TARGET_FEWER * 100:.0f} %); confirmed bests within noise: {C.fmt(res['within_noise'])}")
    print("settings: " + "; ".join(cfg["overrides"]) + f"; {cfg['trials']} trials per arm; "
          f"best confirmed on {cfg['confirm_seeds']} seeds")
    C.write_json(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
