"""PriorGuidedSampler: piBO in spirit, a decaying prior around the profile-suggested config.

piBO (Hvarfner et al., ICLR 2022) multiplies the acquisition function by the user's prior
raised to beta/n, so the prior steers early trials and fades as evidence accumulates. A cheap
equivalent for a sampler: for trial n (n = COMPLETE + PRUNED trials in the study), sample the
whole config from the prior with probability `weight / (weight + n)`, otherwise delegate to the
base sampler (TPE). With weight 0 the sampler is exactly the base sampler. The decision is a
pure function of (seed, trial number, n): reproducible and safe with several workers.

The prior per parameter (`prior_scale` = a float for all, or {param: scale}):
  * log-scale float/int: Gaussian in log space around the center, sd = scale * log(high/low);
  * linear float/int: Gaussian around the center, sd = scale * (high - low);
  both redrawn until inside the range (clipped after 32 tries), ints rounded;
  * categorical: the center with probability 1 - scale, else a uniform draw over all choices.
Parameters without a center are drawn uniformly. Enqueued trials (fixed params) are never
prior-sampled. The decision is written to the trial's system_attrs as `prior_sampled`.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from sweep import optuna_private

PRIOR_ATTR = "prior_sampled"
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class PriorGuidedSampler(BaseSampler):
    """Sample from a prior with probability weight/(weight + n), else from `base` (module doc)."""

    def __init__(
        self,
        base: BaseSampler,
        prior_params: Mapping[str, Any],
        prior_scale: Mapping[str, float] | float = 0.15,
        weight: float = 1.0,
        seed: int | None = None,
    ) -> None:
        if weight < 0 or not math.isfinite(weight):
            raise ValueError(f"prior weight must be a finite number >= 0, got {weight}")
        self.base = base
        self.prior_params = dict(prior_params)
        self.prior_scale = prior_scale
        self.weight = float(weight)
        self.seed = seed if seed is not None else int(np.random.SeedSequence().entropy % (2**31))
        self._decisions: dict[int, bool] = {}

    # ------------------------------------------------------------------ decision
    def prior_probability(self, n_finished: int) -> float:
        """Probability that a trial after `n_finished` finished trials samples the prior."""
        if self.weight == 0:
            return 0.0
        return self.weight / (self.weight + max(0, n_finished))

    def _rng(self, number: int, salt: str = "") -> np.random.RandomState:
        key = zlib.crc32(f"{self.seed}:{number}:{salt}".encode())
        return np.random.RandomState(key)

    def _uses_prior(self, trial: FrozenTrial) -> bool:
        return self._decisions.get(trial.number, bool(trial.system_attrs.get(PRIOR_ATTR, False)))

    def before_trial(self, study: Study, trial: FrozenTrial) -> None:
        self.base.before_trial(study, trial)
        fixed = "fixed_params" in trial.system_attrs
        use = False
        if not fixed and self.weight > 0:
            n = len(study.get_trials(deepcopy=False, states=_FINISHED))
            use = bool(self._rng(trial.number, "decide").random_sample() < self.prior_probability(n))
        self._decisions[trial.number] = use
        # no public setter for a trial's system attrs in optuna 5 (see sweep.optuna_private)
        storage = optuna_private.study_storage(study)
        storage.set_trial_system_attr(optuna_private.trial_id(study, trial.number), PRIOR_ATTR, use)

    def after_trial(
        self, study: Study, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None
    ) -> None:
        self._decisions.pop(trial.number, None)
        self.base.after_trial(study, trial, state, values)

    def reseed_rng(self) -> None:
        self.base.reseed_rng()

    # ------------------------------------------------------------------ sampling
    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        if self._uses_prior(trial):
            return {}
        return self.base.infer_relative_search_space(study, trial)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if self._uses_prior(trial):
            return {}
        return self.base.sample_relative(study, trial, search_space)

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if not self._uses_prior(trial):
            return self.base.sample_independent(study, trial, param_name, param_distribution)
        rng = self._rng(trial.number, param_name)
        return self.sample_prior(param_name, param_distribution, rng)

    def _scale(self, name: str) -> float:
        if isinstance(self.prior_scale, Mapping):
            return float(self.prior_scale.get(name, 0.15))
        return float(self.prior_scale)

    def sample_prior(self, name: str, dist: BaseDistribution, rng: np.random.RandomState) -> Any:
        """One draw of `name` from the prior (uniform when it has no center)."""
        center = self.prior_params.get(name)
        scale = self._scale(name)
        if isinstance(dist, CategoricalDistribution):
            choices = list(dist.choices)
            if center in choices and rng.random_sample() >= scale:
                return center
            return choices[int(rng.randint(len(choices)))]
        if not isinstance(dist, (FloatDistribution, IntDistribution)):
            raise TypeError(f"prior sampling of {type(dist).__name__} is not supported")
        lo, hi, log = float(dist.low), float(dist.high), bool(dist.log)
        if lo == hi:
            value = lo
        else:
            to = (lambda v: math.log(v)) if log else (lambda v: v)
            back = (lambda u: math.exp(u)) if log else (lambda u: u)
            a, b = to(lo), to(hi)
            if center is None:
                u = rng.uniform(a, b)
            else:
                mu = to(min(max(float(center), lo), hi))
                sd = scale * (b - a)
                u = mu
                for _ in range(32):
                    u = rng.normal(mu, sd)
                    if a <= u <= b:
                        break
                u = min(max(u, a), b)
            value = min(max(back(u), lo), hi)
        step = dist.step
        if isinstance(dist, IntDistribution):
            s = int(step or 1)
            value = int(round((value - dist.low) / s)) * s + int(dist.low)
            return int(min(max(value, dist.low), dist.high))
        if step is not None:
            value = round((value - lo) / step) * step + lo
            value = min(max(value, lo), hi)
        return float(value)
