"""The compute ledger: what a study has spent, and whether one more trial still fits.

Definitions (also in the report):
- A trial *counts* toward the `trials` budget when it finished and consumed compute as a real
  result: COMPLETE, PRUNED, or FAIL for any reason except one that says nothing about the config
  (NOT_COUNTED_REASONS: a dead driver, a lost Ray node, a storage outage as it started). Those
  are re-queued and run again, so counting them would charge the budget twice; their
  compute-hours still count.
- Compute-hours = wall time x cpus_per_trial (CPU-hours), or x gpus_per_trial when
  gpus_per_trial > 0 (GPU-hours). Every finished trial stores its `compute_hours` user_attr;
  the ledger is the sum over the study, recomputed from the trials (so several drivers never
  lose each other's updates).
- Launch rule: a new trial starts only if spent + (running + 1) x mean finished-trial cost
  stays within `compute_hours`, and counted + running + 1 <= `trials`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

DRIVER_DIED = "driver died"
STORAGE_OUTAGE = "storage outage while starting"
NODE_LOST = "Ray node lost"
# FAIL reasons that say nothing about the config: the trial is re-queued and not counted.
NOT_COUNTED_REASONS = frozenset({DRIVER_DIED, STORAGE_OUTAGE, NODE_LOST})
# A trial that two drivers' simultaneous asks created past the trial budget: it never ran, is not
# counted and not re-queued (the budget is spent). See surplus_trial.
BUDGET_SURPLUS = "budget already taken by another driver"


def trial_cost_hours(wall_time_s: float, cpus_per_trial: float, gpus_per_trial: float) -> float:
    """GPU-hours when the trial holds GPUs, else CPU-hours."""
    units = gpus_per_trial if gpus_per_trial > 0 else max(cpus_per_trial, 0.0)
    return max(wall_time_s, 0.0) * units / 3600.0


def counts(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a finished trial counts toward the `trials` budget (see module doc)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    if trial.state == TrialState.FAIL:
        reason = trial.user_attrs.get("fail_reason")
        return reason not in NOT_COUNTED_REASONS and reason != BUDGET_SURPLUS
    return False


def surplus_trial(trials: list[optuna.trial.FrozenTrial], number: int, budget_trials: int | None) -> bool:
    """Is the just-created trial `number` one too many for the `trials` budget?

    The launch check (Budget.launch_refusal) reads the ledger, then asks the study for a trial;
    two drivers sharing a study can both read "one more fits" before either creates its trial.
    The storage numbers trials uniquely, so after the ask the trial whose lower-numbered
    counted-or-running trials already fill the budget is the surplus one, and only it.
    """
    if budget_trials is None:
        return False
    ahead = sum(1 for t in trials if t.number < number and (t.state == TrialState.RUNNING or counts(t)))
    return ahead >= budget_trials


@dataclass
class Ledger:
    """What the study has spent so far."""

    compute_hours: float = 0.0
    trials: int = 0
    running: int = 0
    mean_trial_hours: float | None = None

    def to_attr(self) -> dict[str, Any]:
        """The study user_attr `ledger` (schema in docs/CONTRACTS.md)."""
        return {"compute_hours": round(self.compute_hours, 6), "trials": self.trials}


def ledger_of(trials: list[optuna.trial.FrozenTrial]) -> Ledger:
    """Recompute the ledger from the trials themselves (authoritative, race-free)."""
    spent = 0.0
    finished_costs: list[float] = []
    counted = running = 0
    for t in trials:
        cost = t.user_attrs.get("compute_hours")
        if t.state == TrialState.RUNNING:
            running += 1
            continue
        if isinstance(cost, (int, float)) and math.isfinite(cost):
            spent += float(cost)
            if counts(t):
                finished_costs.append(float(cost))
        if counts(t):
            counted += 1
    mean = sum(finished_costs) / len(finished_costs) if finished_costs else None
    return Ledger(compute_hours=spent, trials=counted, running=running, mean_trial_hours=mean)


@dataclass(frozen=True)
class Budget:
    """A number of counted trials and/or compute-hours; None = no limit on that axis."""

    trials: int | None = None
    compute_hours: float | None = None

    def __post_init__(self) -> None:
        if self.trials is None and self.compute_hours is None:
            raise ValueError("budget: set budget.trials and/or budget.compute_hours")
        if self.trials is not None and self.trials < 0:
            raise ValueError(f"budget.trials must be >= 0, got {self.trials}")
        if self.compute_hours is not None and not self.compute_hours > 0:
            raise ValueError(f"budget.compute_hours must be > 0, got {self.compute_hours}")

    def remaining_trials(self, ledger: Ledger) -> int | None:
        """Trials still to launch (None = unlimited by count)."""
        if self.trials is None:
            return None
        return max(self.trials - ledger.trials - ledger.running, 0)

    def launch_refusal(self, ledger: Ledger, running: int | None = None) -> str | None:
        """None when one more trial fits, else the one-line reason it does not."""
        running = ledger.running if running is None else running
        if self.trials is not None and ledger.trials + running + 1 > self.trials:
            return f"trial budget reached ({ledger.trials} counted + {running} running of {self.trials})"
        if self.compute_hours is not None:
            if ledger.compute_hours >= self.compute_hours:
                return (
                    f"compute budget spent ({ledger.compute_hours:.4f} of "
                    f"{self.compute_hours:g} h)"
                )
            if ledger.mean_trial_hours is not None:
                projected = ledger.compute_hours + (running + 1) * ledger.mean_trial_hours
                if projected > self.compute_hours:
                    return (
                        f"compute budget would be passed (projected {projected:.4f} of "
                        f"{self.compute_hours:g} h)"
                    )
        return None
