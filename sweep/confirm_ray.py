"""Confirmation runs through Ray Tune, with the sweep's own resources and parallelism.

A GPU user's confirmations must run where the sweep's trials run (the cluster, one GPU a
trial), not one after another in the driver. Each (config, seed) becomes one Tune trial of the
same function trainable the sweep uses (`sweep.runner._make_trainable`, so threads, reports and
failure handling are identical), launched from a grid over job indices with the study's
`resources.cpus_per_trial` / `gpus_per_trial` and at most `resources.max_concurrent` at once.
Results reach `on_done` in the driver as each trial ends (a Tune Callback), so an interrupted
confirmation keeps every run it finished. Nothing here opens the storage in a worker.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from quant.noise_plan import PLAN_ATTR
from sweep.record import StudyRecord


@dataclass(frozen=True)
class Outcome:
    """What one confirmation run ended with."""

    status: str  # "complete" | "pruned" | "failed"
    value: float | None
    reason: str | None
    wall_time_s: float


Job = tuple[dict[str, Any], int]  # (params, seed)
OnDone = Callable[[int, Outcome], None]  # (job index, outcome), called in the driver
OnStep = Callable[[int, int, Any], None]  # (job index, training step, objective there): progress


def outcome_of(result: dict[str, Any] | None) -> Outcome:
    """The final Tune result our trainable reports, read back as an Outcome."""
    from sweep import bridge

    if not result or not result.get(bridge.FINAL_KEY):
        return Outcome("failed", None, "trial process crashed or raised (see Ray logs)", 0.0)
    value = result.get(bridge.OBJECTIVE_KEY)
    value = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
    status = str(result.get(bridge.STATUS_KEY) or "failed")
    if status == "complete" and value is None:
        status, reason = "failed", "final objective is not a finite number"
    else:
        reason = result.get(bridge.REASON_KEY) or None
    return Outcome(status, value, reason, float(result.get("ns_wall_time_s") or 0.0))


def _done_callback_class() -> type:
    from ray.tune import Callback

    class DoneCallback(Callback):
        """Hands each finished trial's last result to `emit` in the driver."""

        def __init__(self, emit: Callable[[int, dict[str, Any] | None], None], step: OnStep | None) -> None:
            self.emit = emit
            self.step = step

        def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
            from sweep import bridge

            if self.step is not None and not result.get(bridge.FINAL_KEY) and bridge.STEP_KEY in result:
                self.step(int(trial.config["job"]), int(result[bridge.STEP_KEY]), result.get(bridge.OBJECTIVE_KEY))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if self.emit is not None:
                self.emit(int(trial.config["job"]), trial.last_result)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            if self.emit is not None:
                self.emit(int(trial.config["job"]), None)

        def __getstate__(self) -> dict[str, Any]:
            """Tune pickles callbacks into its experiment state; the driver-side sink can't be."""
            return {"emit": None, "step": None}

    return DoneCallback


def _DoneCallback(emit: Callable[[int, dict[str, Any] | None], None], step: OnStep | None) -> Any:  # noqa: N802
    return _done_callback_class()(emit, step)


def run_on_ray(
    record: StudyRecord, jobs: list[Job], on_done: OnDone, *, on_step: OnStep | None = None,
    results_dir: Path | None = None,
) -> None:
    """Run every job as a Tune trial of the study's objective; report each outcome to `on_done`."""
    from ray import tune

    from sweep import bridge
    from sweep.runner import _make_trainable, builtin_objective, command_objective, default_results_dir, ensure_ray
    from sweep.study import BuiltinObjective

    if not jobs:
        return
    spec = record.spec
    space = record.require_space("confirm")
    objective_fn = (
        builtin_objective(space) if isinstance(spec.objective, BuiltinObjective)
        else command_objective(space, spec.objective.command)
    )
    configs = [{PLAN_ATTR: space.plan(params).to_dict(), bridge.SEED_KEY: int(seed)} for params, seed in jobs]

    def job_objective(config: dict[str, Any], report: Callable[[int, dict[str, float]], None]) -> Any:
        return objective_fn(configs[int(config["job"])], report)

    res = spec.resources
    trainable = _make_trainable(job_objective, spec.metric, True, res.cpus_per_trial)
    reported: set[int] = set()

    def emit(job: int, result: dict[str, Any] | None) -> None:
        if job not in reported:
            reported.add(job)
            on_done(job, outcome_of(result))

    ensure_ray()
    out = results_dir or default_results_dir(record.name) / "confirm"
    out.mkdir(parents=True, exist_ok=True)
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial}),
        param_space={"job": tune.grid_search(list(range(len(jobs))))},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=max(res.max_concurrent, 1),
            reuse_actors=True,
            trial_name_creator=lambda t: f"confirm_{t.trial_id}",
            trial_dirname_creator=lambda t: f"confirm_{t.trial_id}",
        ),
        run_config=tune.RunConfig(
            name="confirm",
            storage_path=str(out.resolve()),
            verbose=0,
            callbacks=[_DoneCallback(emit, on_step)],
            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
            log_to_file=False,
        ),
    )
    tuner.fit()
    for job in range(len(jobs)):  # a trial Tune never started or finished is a failure, not a gap
        if job not in reported:
            reported.add(job)
            on_done(job, Outcome("failed", None, "Ray Tune ended without running it", 0.0))
