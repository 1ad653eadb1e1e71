"""Racing: which config gets another seed, in the spirit of SMAC3's intensification.

One RL run is one noisy draw (the tiny study's seed sd is about as large as the differences
between configs), so the best single run of a sweep is partly luck. Racing spends extra runs
where they decide something (automl/SMAC3 `smac/intensifier/intensifier.py`: challengers are
run on the incumbent's seeds and dropped as soon as they fall behind on the seeds they share):

- every (config, seed) evaluation is its own Optuna trial, never overwritten: the study keeps
  each replicate with its own state (COMPLETE, PRUNED, FAIL);
- a new config starts on the first tuning seed (so new configs share their random numbers);
- a challenger gets the incumbent's next seed only while it stays competitive with the
  incumbent on the seeds they share: mean difference >= -z * noise_sd * sqrt(2 / shared);
- the incumbent (most seeds, then best mean) gets one more seed each time the sweep has seen
  `incumbent_every` more distinct configs, up to `max_seeds`;
- tuning seeds and confirmation seeds are disjoint pools (Eimer et al., ICML 2023): tuning uses
  `first_seed + k`, k < max_seeds; sweep.confirm's fresh seeds skip that whole pool.

Everything here is a pure function of the study's trials, so a resumed driver or a second
driver on the same study makes the same decisions.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial, TrialState

SEED_ATTR = "seed"
REPLICATE_ATTR = "replicate_of"  # the trial number of the config's first evaluation
RACING_ATTR = "racing"  # why this evaluation was launched: "challenger" | "incumbent"
DEFAULT_NOISE_SD = 0.03  # one seed's sd before the study has replicates to measure it (tiny: ~3 points)


def config_key(params: Mapping[str, Any]) -> str:
    """A config's identity: its params as canonical JSON (floats by repr, so equal means equal)."""
    return json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True, default=repr)


@dataclass(frozen=True)
class RacingPolicy:
    """How hard the race pushes; see the module docstring."""

    max_seeds: int = 5
    first_seed: int = 0
    incumbent_every: int = 3
    z: float = 1.0
    default_noise_sd: float = DEFAULT_NOISE_SD

    def __post_init__(self) -> None:
        if self.max_seeds < 1:
            raise ValueError(f"racing.max_seeds must be >= 1, got {self.max_seeds}")
        if self.incumbent_every < 1:
            raise ValueError(f"racing.incumbent_every must be >= 1, got {self.incumbent_every}")
        if not math.isfinite(self.z) or self.z < 0:
            raise ValueError(f"racing.z must be a finite number >= 0, got {self.z}")

    @property
    def tuning_seeds(self) -> list[int]:
        return [self.first_seed + k for k in range(self.max_seeds)]


@dataclass
class ConfigRecord:
    """Every evaluation of one config in the study, by seed."""

    key: str
    params: dict[str, Any]
    first_number: int
    values: dict[int, float] = field(default_factory=dict)  # COMPLETE: seed -> objective
    pending: set[int] = field(default_factory=set)  # RUNNING / WAITING seeds
    lost: set[int] = field(default_factory=set)  # PRUNED / FAIL seeds (not retried)
    pruned: bool = False

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values.values()) if self.values else -math.inf

    def mean_on(self, seeds: Iterable[int]) -> float:
        return statistics.fmean(self.values[s] for s in seeds)

    @property
    def tried(self) -> set[int]:
        return set(self.values) | self.pending | self.lost


def trial_seed_of(trial: FrozenTrial, default: int = 0) -> int:
    seed = trial.user_attrs.get(SEED_ATTR)
    return int(seed) if isinstance(seed, int) and not isinstance(seed, bool) else default


def group_configs(trials: Iterable[FrozenTrial], *, direction: str = "maximize") -> dict[str, ConfigRecord]:
    """The study's evaluations grouped by config; values negated for `minimize` (bigger = better)."""
    sign = 1.0 if direction == "maximize" else -1.0
    out: dict[str, ConfigRecord] = {}
    waiting: list[FrozenTrial] = []
    for t in sorted(trials, key=lambda t: t.number):
        if not t.params and t.state == TrialState.WAITING:
            waiting.append(t)  # enqueued: Optuna fills params only when the trial is asked
            continue
        key = config_key(t.params)
        rec = out.get(key)
        if rec is None:
            rec = out[key] = ConfigRecord(key=key, params=dict(t.params), first_number=t.number)
        seed = trial_seed_of(t)
        if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value):
            rec.values[seed] = sign * float(t.value)
        elif t.state in (TrialState.RUNNING, TrialState.WAITING):
            rec.pending.add(seed)
        else:
            rec.lost.add(seed)
            rec.pruned = rec.pruned or t.state == TrialState.PRUNED
    by_first = {rec.first_number: rec for rec in out.values()}
    for t in waiting:  # an enqueued replicate names its config by the first trial's number
        rec = by_first.get(t.user_attrs.get(REPLICATE_ATTR, -1))
        if rec is not None:
            rec.pending.add(trial_seed_of(t))
    return out


def incumbent(configs: Mapping[str, ConfigRecord]) -> ConfigRecord | None:
    """The config with the most completed seeds, then the best mean (SMAC's incumbent rule)."""
    done = [c for c in configs.values() if c.n > 0]
    if not done:
        return None
    return max(done, key=lambda c: (c.n, c.mean, -c.first_number))


def pooled_noise_sd(configs: Mapping[str, ConfigRecord], default: float) -> float:
    """Pooled within-config sd of one evaluation (configs with >= 2 seeds), else `default`."""
    ss, dof = 0.0, 0
    for c in configs.values():
        if c.n >= 2:
            vals = list(c.values.values())
            m = statistics.fmean(vals)
            ss += sum((v - m) ** 2 for v in vals)
            dof += c.n - 1
    return math.sqrt(ss / dof) if dof >= 2 else default


@dataclass(frozen=True)
class Replicate:
    """One more evaluation of an existing config."""

    params: dict[str, Any]
    seed: int
    replicate_of: int
    reason: str  # "challenger" | "incumbent"


def competitive(challenger: ConfigRecord, inc: ConfigRecord, noise_sd: float, z: float) -> bool:
    """Is the challenger within z standard errors of the incumbent on the seeds they share?"""
    shared = sorted(set(challenger.values) & set(inc.values))
    if not shared:
        return True
    diff = challenger.mean_on(shared) - inc.mean_on(shared)
    return diff >= -z * noise_sd * math.sqrt(2.0 / len(shared))


def next_replicate(trials: Iterable[FrozenTrial], policy: RacingPolicy, *, direction: str = "maximize") -> Replicate | None:
    """The next evaluation the race wants, or None for "ask the sampler for a new config"."""
    configs = group_configs(trials, direction=direction)
    inc = incumbent(configs)
    if inc is None:
        return None
    noise_sd = pooled_noise_sd(configs, policy.default_noise_sd)
    pool = policy.tuning_seeds
    challengers = sorted(
        (c for c in configs.values() if c is not inc and 0 < c.n < inc.n and not c.pending and not c.pruned),
        key=lambda c: (-c.mean, c.first_number),  # the most promising challenger first
    )
    for c in challengers:
        if not competitive(c, inc, noise_sd, policy.z):
            continue
        seed = next((s for s in sorted(inc.values) if s not in c.tried), None)
        if seed is not None:
            return Replicate(dict(c.params), seed, c.first_number, "challenger")
    if inc.n < policy.max_seeds and not inc.pending and len(configs) >= policy.incumbent_every * inc.n:
        seed = next((s for s in pool if s not in inc.tried), None)
        if seed is not None:
            return Replicate(dict(inc.params), seed, inc.first_number, "incumbent")
    return None
