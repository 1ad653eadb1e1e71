"""PriorGuidedSampler: concentrates early trials on the prior, decays with evidence, 0 = base."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from sweep.prior import PRIOR_ATTR, PriorGuidedSampler

optuna.logging.set_verbosity(optuna.logging.WARNING)
CENTER = {"sigma_start": 0.05, "num_stages": 10, "zones": "high+medium", "alpha": 1.0}


def objective(trial: optuna.Trial) -> float:
    s = trial.suggest_float("sigma_start", 1e-3, 0.2, log=True)
    trial.suggest_int("num_stages", 3, 12)
    trial.suggest_categorical("zones", ["all", "high", "high+medium"])
    a = trial.suggest_float("alpha", 0.0, 2.0)
    return -abs(math.log(s / 0.01)) - abs(a - 0.3)  # optimum away from the prior's center


def run(sampler: optuna.samplers.BaseSampler, n: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=sampler, storage=optuna.storages.InMemoryStorage())
    study.optimize(objective, n_trials=n)
    return study


def prior(weight: float, seed: int = 0, scale: float = 0.15) -> PriorGuidedSampler:
    return PriorGuidedSampler(optuna.samplers.RandomSampler(seed=seed), CENTER, prior_scale=scale,
                              weight=weight, seed=seed)


def test_early_trials_concentrate_around_the_prior() -> None:
    near = lambda t: abs(math.log(t.params["sigma_start"] / 0.05)) < math.log(3)  # noqa: E731
    with_prior = run(prior(weight=1e9), 40).trials
    plain = run(optuna.samplers.RandomSampler(seed=0), 40).trials
    assert all(t.system_attrs[PRIOR_ATTR] for t in with_prior)
    # sd = 15 % of the log range (0.79): ~83 % within 3x; a uniform draw: log(9)/log(200) = 41 %
    assert sum(map(near, with_prior)) >= 28
    assert sum(map(near, plain)) <= 22
    assert sum(t.params["zones"] == "high+medium" for t in with_prior) >= 30
    assert all(1e-3 <= t.params["sigma_start"] <= 0.2 and 3 <= t.params["num_stages"] <= 12 for t in with_prior)


def test_prior_share_decays_with_finished_trials() -> None:
    s = prior(weight=3.0)
    assert s.prior_probability(0) == 1.0
    assert s.prior_probability(3) == pytest.approx(0.5)
    assert s.prior_probability(27) == pytest.approx(0.1)
    trials = run(prior(weight=3.0, seed=1), 60).trials
    used = [bool(t.system_attrs[PRIOR_ATTR]) for t in trials]
    assert used[0] is True  # n = 0: always the prior
    assert sum(used[:10]) > sum(used[30:40]) >= 0
    assert sum(used[:10]) / 10 > sum(used[30:]) / 30


def test_weight_zero_is_exactly_the_base_sampler() -> None:
    tpe = lambda: optuna.samplers.TPESampler(seed=5, n_startup_trials=4, multivariate=True)  # noqa: E731
    a = run(PriorGuidedSampler(tpe(), CENTER, weight=0.0, seed=5), 14)
    b = run(tpe(), 14)
    assert [t.params for t in a.trials] == [t.params for t in b.trials]
    assert not any(t.system_attrs[PRIOR_ATTR] for t in a.trials)


def test_same_seed_same_trials_and_enqueued_trials_skip_the_prior() -> None:
    def go() -> list[dict]:
        study = optuna.create_study(direction="maximize", sampler=prior(weight=2.0, seed=9))
        study.enqueue_trial({"sigma_start": 0.01, "num_stages": 5, "zones": "all", "alpha": 0.0})
        study.optimize(objective, n_trials=12)
        assert study.trials[0].system_attrs[PRIOR_ATTR] is False
        assert any(t.system_attrs[PRIOR_ATTR] for t in study.trials[1:])
        return [t.params for t in study.trials]

    assert go() == go()


def test_prior_draw_respects_int_step_log_and_categorical_scale() -> None:
    import numpy as np

    s = PriorGuidedSampler(optuna.samplers.RandomSampler(seed=0), {"k": 10, "x": 0.5, "c": "b"},
                           prior_scale={"k": 0.2, "x": 0.2, "c": 0.0}, seed=0)
    rng = np.random.RandomState(0)
    ks = [s.sample_prior("k", IntDistribution(4, 12, step=2), rng) for _ in range(200)]
    assert set(ks) <= {4, 6, 8, 10, 12} and ks.count(10) > 50
    xs = [s.sample_prior("x", FloatDistribution(0.0, 1.0, step=0.25), rng) for _ in range(50)]
    assert set(xs) <= {0.0, 0.25, 0.5, 0.75, 1.0}
    cs = {s.sample_prior("c", CategoricalDistribution(["a", "b", "c"]), rng) for _ in range(50)}
    assert cs == {"b"}  # scale 0: always the suggested choice
    with pytest.raises(ValueError, match="weight"):
        PriorGuidedSampler(optuna.samplers.RandomSampler(), {}, weight=-1)
