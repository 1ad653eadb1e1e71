"""Failing trials: each fault ends its trial FAIL with the reason recorded, and the sweep goes on.

One real sweep (run_sweep on a local Ray, TPE as the project configures it) over a 1-D space
x in [0, 1] where sigma_start = 10^(-3 + 2x). Normal trials run fake_verl through the real
command objective (~1 s). Enqueued points inject one fault each:
  * x = 0.11: the trainer's accuracy turns NaN at step 10;
  * x = 0.12: the trainer hangs and exceeds its 2 s time limit (its process group is killed);
  * x = 0.13: the trainer process is SIGKILLed from outside mid-run;
  * x = 0.14: the Ray worker running the trial dies (SIGKILL of its own pid);
  * x > 0.8: a deterministic crash region, the objective raises before training.
"""

from __future__ import annotations

import io
import math
import os
import signal
import sys
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

import faultlib
from objective.result import TrialResult
from sweep import runner
from sweep.budget import Budget
from sweep.runner import PruningPlan, SweepPlan, run_sweep

pytestmark = pytest.mark.slow

CRASH_LOW = 0.8
FAULTS = {0.11: "nan", 0.12: "timeout", 0.13: "trainer killed", 0.14: "worker killed", 0.95: "raise"}
GOOD = 0.5  # fake_verl's accuracy peaks at sigma_start = 0.01
BUDGET = 12


def sigma_of(x: float) -> float:
    return 10 ** (-3 + 2 * x)


def space(trial: optuna.Trial) -> dict[str, Any]:
    x = trial.suggest_float("x", 0.0, 1.0)
    return {"noise_plan": {"sigma_end": sigma_of(x) / 100, "multipliers": [1.0, 1.0 + x]}}


def objective(config: dict[str, Any], report) -> TrialResult:
    """Runs in a Ray worker; the fault is a pure function of the point."""
    x = float(config["x"])
    if x > CRASH_LOW:
        raise RuntimeError(f"deterministic crash region: x={x:.4f} > {CRASH_LOW}")
    values = {"sigma_start": sigma_of(x), "sigma_end": sigma_of(x) / 100}
    fault = FAULTS.get(round(x, 6))
    if fault == "worker killed":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "nan":
        return faultlib.fake_verl_trial(values, report, mode="nanmetric")
    if fault == "timeout":
        return faultlib.fake_verl_trial(values, report, mode="hang", timeout_s=2)
    if fault == "trainer killed":
        return faultlib.fake_verl_trial(values, report, kill_after_s=0.2)
    return faultlib.fake_verl_trial(values, report)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """Run the sweep once; the tests below read its study."""
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    cloudpickle.register_pickle_by_value(faultlib)
    tmp = tmp_path_factory.mktemp("faults-trials")
    url = f"sqlite:///{tmp / 'faults.db'}"
    with __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=0, n_startup_trials=3, multivariate=True, constant_liar=True)
    seeds = [(f"fault-{name.replace(' ', '-')}", {"x": x}) for x, name in FAULTS.items()] + [("good", {"x": GOOD})]
    plan = SweepPlan(
        study_name="faults", space=space, objective_fn=objective, metric=faultlib.ACC_KEY,
        budget=Budget(trials=BUDGET), seed_configs=seeds, pruning=PruningPlan(enabled=False, final_step=20),
        cpus_per_trial=1, max_concurrent=2, sampler=sampler, trial_seed=1, set_torch_threads=False,
    )
    runner.ensure_ray(num_cpus=2)
    try:
        summary = run_sweep(plan, storage_url=url, results_dir=tmp / "ray", stream=io.StringIO(), summary_every_s=60)
    finally:
        ray.shutdown()
    trials = optuna.load_study(study_name="faults", storage=url).get_trials()
    return summary, trials


def _by_seed(trials: list[optuna.trial.FrozenTrial]) -> dict[str, optuna.trial.FrozenTrial]:
    return {t.user_attrs["seed_config"]: t for t in trials if "seed_config" in t.user_attrs}


def test_every_fault_is_a_failed_trial_with_its_reason(swept):
    _, trials = swept
    by_seed = _by_seed(trials)
    expect = {
        "fault-nan": "nan at step 10",
        "fault-timeout": "timeout after 2 s",
        "fault-trainer-killed": "killed by sigkill",
        "fault-worker-killed": "crashed",
        "fault-raise": "deterministic crash region",
    }
    for name, needle in expect.items():
        t = by_seed[name]
        assert t.state == TrialState.FAIL, (name, t.state, t.user_attrs.get("fail_reason"))
        assert needle in t.user_attrs["fail_reason"].lower(), (name, t.user_attrs["fail_reason"])
        assert t.value is None
        assert "wall_time_s" in t.user_attrs and "compute_hours" in t.user_attrs
    # a NaN is never handed to Optuna: the NaN trial keeps only its finite steps
    nan_trial = by_seed["fault-nan"]
    assert nan_trial.intermediate_values and all(math.isfinite(v) for v in nan_trial.intermediate_values.values())
    assert max(nan_trial.intermediate_values) < 10
    good = by_seed["good"]
    assert good.state == TrialState.COMPLETE and good.value > 0.6
    assert sorted(good.intermediate_values) == [0, 5, 10, 15, 20]


def test_sweep_goes_on_to_its_budget_and_loses_nothing(swept):
    summary, trials = swept
    assert len(trials) == BUDGET
    assert faultlib.count_state(trials, TrialState.RUNNING) == 0
    assert faultlib.count_state(trials, TrialState.WAITING) == 0
    assert sorted(t.number for t in trials) == list(range(BUDGET))
    sampled = [t for t in trials if "seed_config" not in t.user_attrs]
    assert len(sampled) == BUDGET - len(FAULTS) - 1
    # the sampled trials outside the crash region completed: one fault never poisons the rest
    healthy = [t for t in sampled if t.params["x"] <= CRASH_LOW]
    assert healthy and all(t.state == TrialState.COMPLETE for t in healthy)
    assert summary.best_number is not None and summary.best_value > 0.6
    assert summary.ledger["trials"] == BUDGET


def test_sampler_does_not_keep_proposing_the_crash(swept):
    _, trials = swept
    points = [round(t.params["x"], 12) for t in trials]
    assert len(set(points)) == len(points), "a point was proposed twice"
    sampled = [t for t in trials if "seed_config" not in t.user_attrs]
    in_region = [t.params["x"] for t in sampled if t.params["x"] > CRASH_LOW]
    # the crash region is 20 % of the space; the sampler may probe it, but not keep at it
    assert len(in_region) <= 2, f"{len(in_region)} of {len(sampled)} sampled trials in the crash region: {in_region}"
    assert all(t.state == TrialState.FAIL for t in sampled if t.params["x"] > CRASH_LOW)
