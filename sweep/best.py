"""Picking the config a study hands on: never a single run when more evidence exists.

PRUNED/FAIL trials never count. In order: the best confirmed mean (`noisesweep confirm`,
fresh seeds) -> `chosen_by: "confirmed"`; else the racing incumbent when it has >= 2 seeds,
scored by its mean over replicates (sweep.racing) -> `"replicates"`; else the best single
run -> `"single run"`. A single RL run is often luck.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from quant.noise_plan import PLAN_ATTR, NoisePlan
from sweep.errors import UserError
from sweep.racing import config_key, group_configs, incumbent
from sweep.stats import mean_ci
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
    chosen_by: str  # "confirmed", "replicates" or "single run"
    replicates: dict[int, float] = dataclasses.field(default_factory=dict)  # tuning seed -> value

    @property
    def search_score(self) -> float:
        """What the sweep itself saw: the mean over the config's tuning replicates (or its one run)."""
        return statistics.fmean(self.replicates.values()) if self.replicates else self.value

    @property
    def confirmed_score(self) -> float | None:
        if self.confirmation and finite_number(self.confirmation.get("mean")):
            return float(self.confirmation["mean"])
        return None

    @property
    def search_confirmed_gap(self) -> float | None:
        """search score - confirmed score: how much the search overfit its seeds (None: unconfirmed)."""
        confirmed = self.confirmed_score
        return None if confirmed is None else self.search_score - confirmed

    @property
    def n_seeds(self) -> int:
        """Seeds behind `score`: confirmation runs when confirmed, else tuning replicates."""
        if self.confirmed_score is not None:
            return len([v for v in self.confirmation.get("values", []) if finite_number(v)])  # type: ignore[union-attr]
        return max(len(self.replicates), 1)

    @property
    def ci95(self) -> list[float] | None:
        """[low, high] of the 95 % Student-t interval behind `score` (None with one seed)."""
        if self.confirmed_score is not None:
            lo, hi = self.confirmation.get("ci_low"), self.confirmation.get("ci_high")  # type: ignore[union-attr]
            return [float(lo), float(hi)] if finite_number(lo) and finite_number(hi) else None
        if len(self.replicates) < 2:
            return None
        _, lo, hi = mean_ci(list(self.replicates.values()))
        return [lo, hi]  # type: ignore[list-item]

    @property
    def sigma_end(self) -> float:
        return self.plan.sigma_end

    @property
    def multipliers(self) -> list[float] | None:
        return None if self.plan.multipliers is None else list(self.plan.multipliers)

    @property
    def score(self) -> float:
        """Confirmed mean where there is one, else the mean over replicates, else the single run."""
        confirmed = self.confirmed_score
        return confirmed if confirmed is not None else self.search_score


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


def replicates_of(record: StudyRecord, trial: FrozenTrial) -> dict[int, float]:
    """The COMPLETE tuning evaluations of `trial`'s config, seed -> objective (>= 2 to count)."""
    configs = group_configs(record.complete_trials())
    rec = configs.get(config_key(trial.params))
    if rec is None or rec.n < 2:
        return {}
    sign = 1.0 if record.maximize else -1.0
    return {s: sign * v for s, v in sorted(rec.values.items())}


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
        replicates=replicates_of(record, trial),
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
        return _result(record, complete[number], entry, "confirmed")
    inc = incumbent(group_configs(complete.values(), direction="maximize" if record.maximize else "minimize"))
    if inc is not None and inc.n >= 2:
        first = complete[min(t.number for t in complete.values() if config_key(t.params) == inc.key)]
        entry = record.confirmations.get(str(first.number))
        return _result(record, first, entry if isinstance(entry, dict) else None, "replicates")
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
