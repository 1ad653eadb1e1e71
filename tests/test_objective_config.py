"""TrialConfig: the embedded tiny defaults and one-line errors naming the key path."""

from __future__ import annotations

import pytest

from objective.config import ALL_PROJECTIONS, TrialConfig, load_config


def test_defaults_are_the_tiny_cpu_setup() -> None:
    c = load_config({})
    assert c.model.path == "tiny" and c.task.name == "tiny-arith"
    assert (c.quant.format, c.quant.mode, c.quant.ste) == ("mxfp4", "w4a4", True)
    assert c.lora.rank == 8 and c.lora.target_modules == ALL_PROJECTIONS
    assert (c.algo.prompts_per_step, c.algo.samples_per_prompt, c.algo.lr) == (16, 8, 2e-3)
    assert c.steps.total == 20 and c.steps.val_at == [0, 5, 10, 15, 20]
    assert c.rollout.backend == "hf" and c.threads >= 1 and not c.noise.enabled


def test_clip_defaults_follow_the_algorithm() -> None:
    assert (load_config({}).algo.eps_low, load_config({}).algo.eps_high) == (0.2, 0.2)
    dapo = load_config({"algo": {"name": "dapo"}}).algo
    assert (dapo.eps_low, dapo.eps_high) == (0.2, 0.28)
    assert load_config({"algo": {"name": "dapo", "clip_high": 0.3}}).algo.eps_high == 0.3


@pytest.mark.parametrize(
    ("cfg", "needle"),
    [
        ({"noise": {"sigma_start": 0.001, "sigma_end": 0.01}}, "noise.sigma_end"),
        ({"noise": {"num_stages": 2}}, "noise.num_stages"),
        ({"steps": {"total": 10, "val_at": [0, 5, 15]}}, "steps.val_at"),
        ({"steps": {"total": 10, "val_at": [0, 5]}}, "steps.val_at must include steps.total=10"),
        ({"steps": {"total": 4}}, "steps.val_at"),  # the default val_at reaches past a shorter run
        ({"task": {"num_val_intermediate": 0}}, "task.num_val_intermediate"),
        ({"algo": {"nme": "grpo"}}, "algo.nme: unknown key"),
        ({"quant": {"format": "int4"}}, "quant.format"),
        ({"algo": {"lr": -1}}, "algo.lr"),
    ],
)
def test_bad_values_raise_one_line_value_errors(cfg: dict, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        load_config(cfg)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


def test_config_object_passes_through_and_val_at_is_sorted() -> None:
    c = TrialConfig.model_validate({"steps": {"total": 4, "val_at": [4, 0, 2, 2]}})
    assert load_config(c) is c and c.steps.val_at == [0, 2, 4]


def test_final_step_is_scored_on_the_full_set_and_earlier_ones_on_a_subset() -> None:
    c = load_config({})
    assert (c.task.num_val, c.task.num_val_intermediate) == (1000, 300)
    assert load_config({"task": {"num_val_intermediate": None}}).task.num_val_intermediate is None
