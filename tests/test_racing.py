"""sweep.racing: which config gets another seed (SMAC-style intensification over study trials)."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from sweep.racing import (
    RacingPolicy,
    config_key,
    group_configs,
    incumbent,
    next_replicate,
    pooled_noise_sd,
)

DIST = {"x": FloatDistribution(0.0, 1.0)}


def add(study: optuna.Study, x: float, seed: int, value: float | None, state: TrialState = TrialState.COMPLETE) -> None:
    study.add_trial(create_trial(
        params={"x": x}, distributions=DIST, value=value if state == TrialState.COMPLETE else None,
        state=state, user_attrs={"seed": seed},
    ))


@pytest.fixture
def study() -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna.create_study(direction="maximize")


POLICY = RacingPolicy(max_seeds=3, first_seed=0, incumbent_every=3, z=1.0, default_noise_sd=0.03)


def test_config_key_is_canonical() -> None:
    assert config_key({"b": 1, "a": 0.1}) == config_key({"a": 0.1, "b": 1})
    assert config_key({"a": 0.1}) != config_key({"a": 0.1000001})


def test_no_trials_means_ask_the_sampler(study: optuna.Study) -> None:
    assert next_replicate(study.get_trials(), POLICY) is None


def test_incumbent_gets_a_seed_only_once_enough_configs_were_seen(study: optuna.Study) -> None:
    add(study, 0.1, 0, 0.60)
    add(study, 0.2, 0, 0.70)
    assert next_replicate(study.get_trials(), POLICY) is None  # 2 configs < incumbent_every
    add(study, 0.3, 0, 0.40)
    rep = next_replicate(study.get_trials(), POLICY)
    assert rep is not None and rep.reason == "incumbent"
    assert rep.params == {"x": 0.2} and rep.seed == 1 and rep.replicate_of == 1


def test_competitive_challenger_runs_on_the_incumbents_seeds_and_a_clear_loser_does_not(study: optuna.Study) -> None:
    add(study, 0.2, 0, 0.70)
    add(study, 0.2, 1, 0.72)  # incumbent: 2 seeds
    add(study, 0.5, 0, 0.69)  # 1 point behind on seed 0: within z * 0.03 * sqrt(2)
    add(study, 0.9, 0, 0.50)  # 20 points behind: out
    rep = next_replicate(study.get_trials(), POLICY)
    assert rep is not None and rep.reason == "challenger" and rep.params == {"x": 0.5} and rep.seed == 1
    # once it runs, the race waits for it instead of launching it twice
    add(study, 0.5, 1, None, TrialState.RUNNING)
    rep = next_replicate(study.get_trials(), POLICY)
    assert rep is None or rep.params != {"x": 0.5}
    assert rep is None or rep.params != {"x": 0.9}


def test_a_challenger_that_wins_on_all_shared_seeds_becomes_incumbent(study: optuna.Study) -> None:
    add(study, 0.2, 0, 0.70)
    add(study, 0.2, 1, 0.70)
    add(study, 0.5, 0, 0.74)
    add(study, 0.5, 1, 0.76)
    inc = incumbent(group_configs(study.get_trials()))
    assert inc is not None and inc.params == {"x": 0.5} and math.isclose(inc.mean, 0.75)


def test_pruned_or_failed_challengers_are_not_raced(study: optuna.Study) -> None:
    add(study, 0.2, 0, 0.70)
    add(study, 0.2, 1, 0.70)
    add(study, 0.5, 0, 0.71)
    add(study, 0.5, 1, None, TrialState.PRUNED)
    assert next_replicate(study.get_trials(), POLICY) is None


def test_incumbent_stops_at_max_seeds(study: optuna.Study) -> None:
    for s, v in enumerate((0.7, 0.71, 0.69)):
        add(study, 0.2, s, v)
    for x in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99):
        add(study, x, 0, 0.1)  # far behind: no challenger
    assert next_replicate(study.get_trials(), POLICY) is None


def test_minimize_races_the_lowest(study: optuna.Study) -> None:
    low = optuna.create_study(direction="minimize")
    for x, v in ((0.1, 0.3), (0.2, 0.1), (0.3, 0.5)):
        add(low, x, 0, v)
    rep = next_replicate(low.get_trials(), POLICY, direction="minimize")
    assert rep is not None and rep.params == {"x": 0.2}


def test_pooled_noise_sd_uses_replicates_only(study: optuna.Study) -> None:
    add(study, 0.2, 0, 0.70)
    add(study, 0.2, 1, 0.74)
    add(study, 0.3, 0, 0.60)
    add(study, 0.3, 1, 0.64)
    add(study, 0.4, 0, 0.10)
    sd = pooled_noise_sd(group_configs(study.get_trials()), default=9.0)
    assert math.isclose(sd, math.sqrt((2 * 0.02**2 + 2 * 0.02**2) / 2))
    assert pooled_noise_sd(group_configs(study.get_trials()[4:]), default=9.0) == 9.0


def test_policy_rejects_bad_settings_and_names_its_pool() -> None:
    with pytest.raises(ValueError, match="max_seeds"):
        RacingPolicy(max_seeds=0)
    assert RacingPolicy(first_seed=7, max_seeds=3).tuning_seeds == [7, 8, 9]
