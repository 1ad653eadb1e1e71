"""The compute ledger and the launch rule (no Ray)."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from sweep.budget import BUDGET_SURPLUS, DRIVER_DIED, Budget, counts, ledger_of, surplus_trial, trial_cost_hours


def frozen(state: TrialState, hours: float | None, reason: str | None = None):
    attrs = {} if hours is None else {"compute_hours": hours}
    if reason:
        attrs["fail_reason"] = reason
    t = create_trial(state=state, value=0.5 if state == TrialState.COMPLETE else None, user_attrs=attrs)
    return t


def test_cost_is_gpu_hours_when_gpus_else_cpu_hours():
    assert trial_cost_hours(1800, cpus_per_trial=2, gpus_per_trial=0) == pytest.approx(1.0)
    assert trial_cost_hours(1800, cpus_per_trial=16, gpus_per_trial=8) == pytest.approx(4.0)


def test_ledger_counts_and_driver_death_does_not():
    trials = [
        frozen(TrialState.COMPLETE, 1.0),
        frozen(TrialState.PRUNED, 0.25),
        frozen(TrialState.FAIL, 0.5, "NaN objective at step 10"),
        frozen(TrialState.FAIL, 0.75, DRIVER_DIED),
        frozen(TrialState.WAITING, None),
    ]
    ledger = ledger_of(trials)
    assert ledger.trials == 3  # the re-queued driver-death trial is not charged twice
    assert ledger.compute_hours == pytest.approx(2.5)  # but its spend was real
    assert ledger.mean_trial_hours == pytest.approx((1.0 + 0.25 + 0.5) / 3)
    assert ledger.to_attr() == {"compute_hours": 2.5, "trials": 3}


def test_launch_rule_projects_running_trials():
    b = Budget(compute_hours=3.0)
    ledger = ledger_of([frozen(TrialState.COMPLETE, 1.0)])
    assert b.launch_refusal(ledger, running=0) is None  # 1 + 1 x 1.0 = 2 <= 3
    assert b.launch_refusal(ledger, running=1) is None  # 1 + 2 x 1.0 = 3 <= 3
    assert "projected 4.0000" in b.launch_refusal(ledger, running=2)
    t = Budget(trials=2)
    assert t.launch_refusal(ledger, running=0) is None
    assert "trial budget reached" in t.launch_refusal(ledger, running=1)
    assert t.remaining_trials(ledger) == 1


def test_budget_needs_a_limit():
    with pytest.raises(ValueError, match="budget"):
        Budget()
    with pytest.raises(ValueError, match="compute_hours"):
        Budget(compute_hours=0)


def test_ledger_of_a_real_study_sums_user_attrs(tmp_path):
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'l.db'}")
    for h in (0.1, 0.2):
        t = study.ask()
        t.set_user_attr("compute_hours", h)
        study.tell(t, 1.0)
    study.ask()  # one running
    ledger = ledger_of(study.get_trials())
    assert (ledger.trials, ledger.running) == (2, 1)
    assert ledger.compute_hours == pytest.approx(0.3)


def test_the_trial_past_the_budget_is_the_surplus_one_and_is_not_counted():
    """Two drivers both saw "one more fits" and asked: the storage numbers their trials 5 and 6."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    for _ in range(4):
        t = study.ask()
        study.tell(t, 0.5)
    died = study.ask()  # a dead driver's trial: re-queued, not counted, so it does not fill the budget
    died.set_user_attr("fail_reason", DRIVER_DIED)
    study.tell(died, state=TrialState.FAIL)
    first, second = study.ask(), study.ask()  # numbers 5 and 6, both RUNNING
    trials = study.get_trials(deepcopy=False)
    assert not surplus_trial(trials, first.number, 5)  # 4 counted ahead of it: it fits
    assert surplus_trial(trials, second.number, 5)  # 4 counted + 1 running ahead: one too many
    assert not surplus_trial(trials, second.number, 6) and not surplus_trial(trials, second.number, None)
    second.set_user_attr("fail_reason", BUDGET_SURPLUS)
    study.tell(second, state=TrialState.FAIL)
    study.tell(first, 0.5)
    trials = study.get_trials(deepcopy=False)
    assert not counts(trials[-1]) and ledger_of(trials).trials == 5
