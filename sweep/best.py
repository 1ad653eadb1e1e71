"""Picking the config a study hands on: the best COMPLETE trial, the best confirmed mean first.

PRUNED/FAIL trials never count; when confirmations exist, the config with the best confirmed
mean wins, because a single RL run is often luck.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from quant.noise_plan import PLAN_ATTR, NoisePlan
from sweep.errors import UserError
from sweep.record import StudyRecord, finite_number


@dataclass
class BestResult:
    """The config the post-sweep commands hand on, and why it was chosen."""

    trial: FrozenTrial
    value: float  # the single sweep run's objective value
    params: dict[str, Any]
    plan: NoisePlan  # the noise the trial ran (see trial_plan)
    seed: int | None
    seed_config: str | None
    confirmation: dict[str, Any] | None  # the `confirmations` entry, when confirmed
    chosen_by: str  # "confirmed mean" or "single run"

    @property
    def sigma_end(self) -> float:
        return self.plan.sigma_end

    @property
    def multipliers(self) -> list[float] | None:
        return None if self.plan.multipliers is None else list(self.plan.multipliers)

    @property
    def score(self) -> float:
        """Confirmed mean where there is one, else the single run's value."""
        if self.confirmation and finite_number(self.confirmation.get("mean")):
            return float(self.confirmation["mean"])
        return self.value


def trial_plan(record: StudyRecord, trial: FrozenTrial) -> NoisePlan:
    """The NoisePlan a trial ran: its recorded plan, with the values it reported as applied winning.

    Trials from before the plan was recorded get it rebuilt from their params on the profile
    (or, without a usable profile, from the params alone: uniform noise).
    """
    plan: NoisePlan | None = None
    raw = trial.user_attrs.get(PLAN_ATTR)
    if isinstance(raw, dict):
        try:
            plan = NoisePlan.from_dict(raw)
        except (KeyError, TypeError, ValueError):
            plan = None
    if plan is None and record.space is not None:
        try:
            plan = record.space.plan(trial.params)
        except (KeyError, ValueError, UserError):
            plan = None
    if plan is None:
        p = trial.params
        plan = NoisePlan(
            sigma_start=float(p["sigma_start"]),
            sigma_end=float(p["sigma_start"]) * float(p.get("sigma_ratio", 1.0)),
            num_stages=int(p["num_stages"]),
            site=p.get("site", "rmsnorm"),
            zones=str(p.get("zones", "all")),
            alpha=float(p.get("alpha", 0.0)),
        )
    applied: dict[str, Any] = {}
    m = trial.user_attrs.get("multipliers")
    if isinstance(m, list) and m and all(finite_number(x) and x >= 0 for x in m):
        applied["multipliers"] = tuple(float(x) for x in m)
    end = trial.user_attrs.get("sigma_end")
    if finite_number(end) and 0 <= end <= plan.sigma_start:
        applied["sigma_end"] = float(end)
    return dataclasses.replace(plan, **applied) if applied else plan


def _result(record: StudyRecord, trial: FrozenTrial, confirmation: dict[str, Any] | None, how: str) -> BestResult:
    seed = trial.user_attrs.get("seed")
    return BestResult(
        trial=trial,
        value=float(trial.value),  # type: ignore[arg-type]
        params=dict(trial.params),
        plan=trial_plan(record, trial),
        seed=int(seed) if isinstance(seed, int) else None,
        seed_config=trial.user_attrs.get("seed_config"),
        confirmation=confirmation,
        chosen_by=how,
    )


def best_result(record: StudyRecord) -> BestResult:
    """The best COMPLETE trial, the best confirmed mean winning over single runs."""
    complete = {t.number: t for t in record.complete_trials()}
    if not complete:
        counts = count_states(record)
        summary = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) or "no trials"
        raise UserError(f"study {record.name!r} has no COMPLETE trial yet ({summary})")
    confirmed = []
    for key, entry in record.confirmations.items():
        try:
            number = int(key)
        except ValueError:
            continue
        if number in complete and isinstance(entry, dict) and finite_number(entry.get("mean")):
            confirmed.append((float(entry["mean"]), number, entry))
    if confirmed:
        confirmed.sort(key=lambda x: (x[0] if record.maximize else -x[0], -x[1]), reverse=True)
        _, number, entry = confirmed[0]
        return _result(record, complete[number], entry, "confirmed mean")
    trials = sorted(complete.values(), key=lambda t: (t.value if record.maximize else -t.value, -t.number), reverse=True)  # type: ignore[operator]
    best = trials[0]
    entry = record.confirmations.get(str(best.number))
    return _result(record, best, entry if isinstance(entry, dict) else None, "single run")


def count_states(record: StudyRecord) -> dict[str, int]:
    """Trials per state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING always present)."""
    out = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)}
    for t in record.trials():
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out
