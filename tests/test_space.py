"""The SRDD-seeded search space: zones, define-by-run, seed configs, trial configs, samplers."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from test_study import STUDIES, tiny_profile, write_study  # noqa: F401 - fixture re-export

from objective.config import TrialConfig
from quant.srdd import load_profile
from sweep.errors import UserError
from sweep.prior import PriorGuidedSampler
from sweep.space import SearchSpace
from sweep.study import DEFAULT_SEED_NAMES
from sweep.study_loader import load_study

optuna.logging.set_verbosity(optuna.logging.WARNING)
QWEN = STUDIES / "qwen2.5-1.5b-mxfp4-w4a4.yaml"


@pytest.fixture(scope="module")
def qwen_space() -> SearchSpace:
    return SearchSpace.from_spec(load_study(QWEN))


def _study(space: SearchSpace, sampler: optuna.samplers.BaseSampler | None = None) -> optuna.Study:
    return optuna.create_study(
        storage=optuna.storages.InMemoryStorage(), direction="maximize",
        sampler=sampler or space.make_sampler(seed=3),
    )


def test_auto_zones_rank_worst_first_and_accumulate(qwen_space: SearchSpace) -> None:
    # the Qwen profile's tiers: high = 10-19 (worst), medium = 4-9/20-25, low = 0-3/26-27
    assert qwen_space.zone_choices == ["all", "high", "high+medium"]
    assert qwen_space.zone_layers("high") == set(range(10, 20))
    assert qwen_space.zone_layers("all") is None
    assert qwen_space.zone_layers("high+medium") == set(range(4, 26))


def test_auto_zones_follow_a_measured_profile(tmp_path: Path, tiny_profile: Path) -> None:  # noqa: F811
    spec = load_study(write_study(tmp_path, tiny_profile))
    space = SearchSpace.from_spec(spec, load_profile(tiny_profile))
    errs = space.errors
    means = {z.name: sum(errs[i] for i in z.layers) / len(z.layers) for z in spec.srdd_profile.zones}
    worst = max(means, key=means.get)
    assert space.zone_choices[0] == "all"
    assert space.zone_choices[1] == worst
    assert len(space.zone_choices) == len(means)


def test_define_stays_in_range_and_sigma_end_never_exceeds_start(qwen_space: SearchSpace) -> None:
    study = _study(qwen_space, optuna.samplers.RandomSampler(seed=0))
    d = qwen_space.distributions
    for _ in range(40):
        trial = study.ask()
        derived = qwen_space.define(trial)["noise_plan"]
        p = trial.params
        assert set(p) == {"sigma_start", "sigma_ratio", "num_stages", "zones", "alpha"}  # site: rmsnorm only on vLLM
        for name, dist in d.items():
            assert dist._contains(dist.to_internal_repr(p[name])), (name, p[name])
        assert derived["sigma_end"] <= p["sigma_start"]
        assert math.isclose(derived["sigma_end"], p["sigma_start"] * p["sigma_ratio"])
        mult = derived["multipliers"]
        assert len(mult) == 28
        layers = qwen_space.zone_layers(p["zones"])
        for i, m in enumerate(mult):
            if layers is not None and i not in layers:
                assert m == 0.0
            else:
                assert m > 0
        study.tell(trial, p["sigma_start"])


def test_site_is_a_param_only_when_searched(tmp_path: Path, tiny_profile: Path) -> None:  # noqa: F811
    space = SearchSpace.from_spec(load_study(write_study(tmp_path, tiny_profile)))
    study = _study(space)
    trial = study.ask()
    space.define(trial)
    assert "site" not in trial.params and "site" not in space.distributions


def test_seed_configs_enqueue_first_and_match_the_distributions(qwen_space: SearchSpace) -> None:
    seeds = qwen_space.seed_configs()
    assert [n for n, _ in seeds] == list(DEFAULT_SEED_NAMES)
    by = dict(seeds)
    assert by["E13i-baseline"]["zones"] == "all" and by["E13i-baseline"]["alpha"] == 0
    assert by["E13i-targeted"]["zones"] == "high"  # layers 10-19
    assert by["E13i-high"]["sigma_start"] == 0.08 and math.isclose(by["E13i-high"]["sigma_ratio"] * 0.08, 0.001)
    assert by["E13i-low"]["sigma_start"] == 0.03
    assert by["E13j-variable"]["alpha"] == 1.0
    study = _study(qwen_space)
    for name, params in seeds:
        for key, value in params.items():
            dist = qwen_space.distributions[key]
            assert dist._contains(dist.to_internal_repr(value)), (name, key, value)
        study.enqueue_trial(params, user_attrs={"seed_config": name})
    for name, params in seeds:
        trial = study.ask()
        qwen_space.define(trial)
        assert trial.params == params
        assert trial.user_attrs["seed_config"] == name
        study.tell(trial, 0.5)
    assert not qwen_space.notes


def test_seeds_outside_user_ranges_are_clamped_and_deduplicated(tmp_path: Path, tiny_profile: Path) -> None:  # noqa: F811
    spec = load_study(write_study(tmp_path, tiny_profile), ["space.sigma_start.low=0.06", "space.zones=[all]"])
    space = SearchSpace.from_spec(spec)
    names = [n for n, _ in space.seed_configs()]
    # targeted/high/low are worst-zone-only: not searchable with zones [all]
    assert names == ["E13i-baseline", "E13j-variable"]
    assert all(p["sigma_start"] == 0.06 for _, p in space.seed_configs())
    assert any("clamped to 0.06" in n for n in space.notes)
    assert any("E13i-targeted skipped" in n for n in space.notes)


def test_to_trial_config_zeroes_layers_outside_the_zones(qwen_space: SearchSpace) -> None:
    params = {"sigma_start": 0.05, "sigma_ratio": 0.01, "num_stages": 10, "zones": "high+medium",
              "alpha": 1.0, "site": "linear"}
    cfg = qwen_space.to_trial_config(params, seed=7)
    assert isinstance(cfg, TrialConfig)
    assert cfg.seed == 7 and cfg.noise.enabled and cfg.noise.site == "linear"
    assert math.isclose(cfg.noise.sigma_end, 0.0005)
    m = cfg.noise.layer_multipliers
    assert all(m[i] == 0.0 for i in (0, 1, 2, 3, 26, 27))
    assert all(m[i] > 0 for i in range(4, 26))
    assert m[15] > m[5]  # alpha 1: the worst layer gets more noise
    # the fixed settings survive
    assert cfg.lora.rank == 32 and cfg.algo.name == "dapo" and cfg.steps.total == 20
    uniform = qwen_space.to_trial_config({**params, "alpha": 0.0}, seed=7).noise.layer_multipliers
    assert sorted(set(uniform)) == [0.0, 1.0]


def test_to_command_values_feed_the_fork_overrides() -> None:
    from objective.command import build_overrides

    spec = load_study(STUDIES / "verl-command-mxfp4-w4a4.yaml")
    space = SearchSpace.from_spec(spec)
    name, params = space.seed_configs()[1]  # E13i-targeted
    values = space.to_command_values(params, seed=1)
    assert values["target_layers"] == list(range(10, 20))
    overrides = build_overrides(spec.objective.command, values)
    assert "trainer.noise_injection.sigma_end=0.0005" in overrides
    # the zone reaches the fork as target patterns; uniform inside it, so no layer_sigma_config
    assert "trainer.noise_injection.target_modules=" + "[" + ",".join(f"'layers.{i}.'" for i in range(10, 20)) + "]" in overrides
    assert not any("layer_sigma_config" in o for o in overrides)
    with pytest.raises(UserError):
        space.to_trial_config(params, seed=1)


def test_make_sampler_kinds(qwen_space: SearchSpace) -> None:
    assert isinstance(qwen_space.make_sampler(), PriorGuidedSampler)
    prior = qwen_space.make_sampler()
    assert prior.prior_params["zones"] == "high+medium" and prior.prior_params["alpha"] == 1.0
    spec = qwen_space.spec.model_copy(update={"sampler": qwen_space.spec.sampler.model_copy(update={"kind": "tpe"})})
    tpe = SearchSpace(spec, qwen_space.profile).make_sampler()
    assert isinstance(tpe, optuna.samplers.TPESampler)
    spec = qwen_space.spec.model_copy(update={"sampler": qwen_space.spec.sampler.model_copy(update={"kind": "random"})})
    assert isinstance(SearchSpace(spec, qwen_space.profile).make_sampler(), optuna.samplers.RandomSampler)


def test_normalize_fills_the_prior_center_and_checks_values(qwen_space: SearchSpace) -> None:
    p = qwen_space.normalize({"sigma_start": 0.02, "sigma_end": 0.002})
    assert math.isclose(p["sigma_ratio"], 0.1) and p["zones"] == "high+medium" and p["num_stages"] == 10
    with pytest.raises(UserError, match="unknown parameter 'sigma'"):
        qwen_space.normalize({"sigma": 1})
    with pytest.raises(UserError, match="sigma_ratio must be in"):
        qwen_space.normalize({"sigma_start": 0.01, "sigma_end": 0.02})
    with pytest.raises(UserError, match="'middle' is not a zone"):
        qwen_space.normalize({"zones": "middle"})


def test_prior_center_override_takes_sigma_end_after_sigma_start(tmp_path: Path, tiny_profile: Path) -> None:  # noqa: F811
    spec = load_study(write_study(tmp_path, tiny_profile), ["sampler.prior={sigma_end: 0.001, sigma_start: 0.02}"])
    space = SearchSpace.from_spec(spec)
    center = space.prior_params()
    assert center["sigma_start"] == 0.02 and math.isclose(center["sigma_ratio"], 0.05)
    p = space.normalize({"sigma_end": 0.002})  # relative to the center's sigma_start
    assert math.isclose(p["sigma_ratio"], 0.1)


def test_default_alpha_range_comes_from_the_profile(qwen_space: SearchSpace, tmp_path: Path,
                                                   tiny_profile: Path) -> None:  # noqa: F811
    from sweep.space import MAX_SPREAD, default_alpha_high

    # Qwen2.5-1.5B: worst layer 42.65 / 36.4 = 1.17x the mean -> ln 1.5 / ln 1.17 = 2.6
    assert qwen_space.distributions["alpha"].low == 0.0
    assert qwen_space.distributions["alpha"].high == pytest.approx(2.6, abs=0.1)
    errs = qwen_space.errors
    top = max(errs) / (sum(errs) / len(errs))
    assert top ** qwen_space.distributions["alpha"].high == pytest.approx(MAX_SPREAD, rel=0.02)
    assert default_alpha_high([0.99, 1.0, 1.01]) == 25.0  # a flat profile: capped
    assert default_alpha_high([1.0, 1.0]) == 2.0
    spec = load_study(write_study(tmp_path, tiny_profile), ["space.alpha={low: 0.5, high: 1.5}"])
    assert (SearchSpace.from_spec(spec).distributions["alpha"].low, SearchSpace.from_spec(spec).distributions["alpha"].high) == (0.5, 1.5)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"sigma_start": float("inf")}, "params: sigma_start: must be a finite number"),
        ({"alpha": float("nan")}, "params: alpha: must be a finite number"),
        ({"sigma_start": True}, "params: sigma_start: must be a number"),
        ({"sigma_start": 0.01, "sigma_end": "x"}, "params: sigma_end: must be a number"),
        ({"alpha": 1e300}, "params: alpha 1e\\+300 gives no usable multipliers"),
    ],
)
def test_normalize_refuses_non_finite_and_overflowing_values(qwen_space: SearchSpace, params: dict,
                                                            message: str) -> None:
    """These passed normalize before and failed inside the trainer (after loading the model) or
    as an internal OverflowError."""
    with pytest.raises(UserError, match=message):
        qwen_space.normalize(params)


@pytest.mark.parametrize(
    "override, message",
    [
        ("sampler.prior.sigma_start=abc", "sampler.prior.sigma_start: must be a number"),
        ("sampler.prior.alpha=.nan", "sampler.prior.alpha: must be a finite number"),
        ("sampler.prior.sigma_end=1", r"sampler.prior.sigma_end: must be in \(0, sigma_start=0.05\]"),
        ("sampler.prior={sigma_end: 0.001, sigma_ratio: 0.1}", "sampler.prior: give sigma_end or sigma_ratio"),
    ],
)
def test_a_bad_prior_center_names_its_key(tmp_path: Path, tiny_profile: Path, override: str,  # noqa: F811
                                          message: str) -> None:
    with pytest.raises(UserError, match=message) as err:
        load_study(write_study(tmp_path, tiny_profile), [override])
    assert "\n" not in str(err.value) and str(err.value).startswith(str(tmp_path))


def test_gp_samplers_are_noise_aware_and_keep_the_prior(qwen_space: SearchSpace) -> None:
    """gp / gp-prior: Optuna's GPSampler with a learned noise variance; gp-prior wraps it in the
    same decaying SRDD prior as `prior` does TPE. Both must run on the real space (categorical
    zones, log sigmas, int stages) and propose in-range configs."""
    from sweep.prior import PriorGuidedSampler

    spec = qwen_space.spec
    for kind in ("gp", "gp-prior"):
        space = SearchSpace.from_spec(spec.model_copy(update={"sampler": spec.sampler.model_copy(update={"kind": kind})}),
                                      qwen_space.profile)
        sampler = space.make_sampler(0)
        gp = sampler.base if isinstance(sampler, PriorGuidedSampler) else sampler
        assert isinstance(gp, optuna.samplers.GPSampler) and gp._deterministic is False
        assert isinstance(sampler, PriorGuidedSampler) == (kind == "gp-prior")
        study = _study(space, sampler)
        for i in range(8):
            trial = study.ask()
            space.define(trial)
            study.tell(trial, 0.5 + 0.01 * math.log(trial.params["sigma_start"]) + 0.001 * i)
        assert all(space.distributions["sigma_start"]._contains(t.params["sigma_start"]) for t in study.trials)
