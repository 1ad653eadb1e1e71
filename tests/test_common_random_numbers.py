"""Common random numbers: the same trial seed gives the same prompts and sampling draws per step.

Why: configs are compared on one or a few seeds each, so draw noise that differs between two
configs on the same seed (a stream one config consumed more of) would look like a config effect.
Also: the final step is scored on all task.num_val problems, earlier validations on a prefix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modellib import save_random_qwen2, with_overrides
from objective import run_trial
from objective.trainer import SAMPLING_STREAM, Trainer, draw_prompts, step_seed


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_qwen2(
        tmp_path_factory.mktemp("crn"), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    )


def small(model_dir: Path, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "seed": 7,
        "threads": 1,
        "model": {"path": str(model_dir)},
        "task": {"num_val": 24, "num_val_intermediate": 10, "max_response_len": 6},
        "lora": {"rank": 4},
        "algo": {"prompts_per_step": 3, "samples_per_prompt": 2, "lr": 5e-2},
        "steps": {"total": 3, "val_at": [0, 2, 3]},
    }
    return with_overrides(cfg, over)


def test_prompt_draws_depend_on_seed_step_and_draw_only() -> None:
    pool = list(range(500))
    a = draw_prompts(pool, seed=1, step=4, draw=0, n=16)
    assert a == draw_prompts(pool, seed=1, step=4, draw=0, n=16)
    assert len(set(a)) == 16  # distinct within a draw
    assert draw_prompts(pool, seed=1, step=4, draw=0, n=8) == a[:8]  # fewer prompts: a prefix
    for other in ({"seed": 2, "step": 4, "draw": 0}, {"seed": 1, "step": 5, "draw": 0},
                  {"seed": 1, "step": 4, "draw": 1}):
        assert draw_prompts(pool, n=16, **other) != a, other
    seeds = {step_seed(1, s, stream) for s in range(3) for stream in ("prompts", SAMPLING_STREAM)}
    assert len(seeds) == 6 and all(0 <= x < 2**63 for x in seeds)


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """Record every generation: its prompts, temperature and the sampling generator's state."""
    calls: list[dict[str, Any]] = []
    real = Trainer._generate

    def spy(self: Trainer, prompts: list[str], temperature: float) -> Any:
        state = self.gen.get_state().clone()
        out = real(self, prompts, temperature)
        calls.append({"prompts": list(prompts), "temperature": temperature, "state": state, "texts": out.texts})
        return out

    monkeypatch.setattr(Trainer, "_generate", spy)
    return calls


def _run(cfg: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[Any, list[dict[str, Any]]]:
    with monkeypatch.context() as m:
        calls = _spy(m)
        return run_trial(cfg), calls


def test_same_seed_same_prompts_and_sampling_state_whatever_the_config(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, calls_a = _run(small(model_dir), monkeypatch)
    # a different learning rate and noise: the policies part after step 1, the draws must not
    other, calls_b = _run(small(model_dir, algo={"lr": 1e-3}, noise={"enabled": True, "sigma_start": 0.05,
                                                                      "sigma_end": 0.01, "num_stages": 3}), monkeypatch)
    assert base.status == other.status == "complete"
    sampled_a = [c for c in calls_a if c["temperature"] > 0]
    sampled_b = [c for c in calls_b if c["temperature"] > 0]
    assert len(sampled_a) == len(sampled_b) == 3  # one rollout per step (GRPO: no refills)
    for a, b in zip(sampled_a, sampled_b):
        assert a["prompts"] == b["prompts"]
        assert a["state"].equal(b["state"])  # the same uniforms feed the sampler at each step
    assert len({tuple(c["prompts"]) for c in sampled_a}) == 3  # new prompts every step
    assert not sampled_a[0]["state"].equal(sampled_a[1]["state"])
    # step 1 samples before any update and without noise (stage 0): the very same responses;
    # after it the policies differ, and so do the responses, yet each step starts from the same state
    assert sampled_a[0]["texts"] == sampled_b[0]["texts"]
    assert any(a["texts"] != b["texts"] for a, b in zip(sampled_a[1:], sampled_b[1:]))

    _, calls_c = _run(small(model_dir, seed=8), monkeypatch)
    sampled_c = [c for c in calls_c if c["temperature"] > 0]
    assert sampled_c[0]["prompts"] != sampled_a[0]["prompts"]
    assert not sampled_c[0]["state"].equal(sampled_a[0]["state"])


def test_final_step_is_scored_on_all_problems_and_earlier_ones_on_a_prefix(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    res, calls = _run(small(model_dir), monkeypatch)
    greedy = [c["prompts"] for c in calls if c["temperature"] == 0]
    assert [len(p) for p in greedy] == [10, 10, 24]  # steps 0 and 2: the prefix; step 3: all
    assert greedy[0] == greedy[1] == greedy[2][:10]
    assert [h["step"] for h in res.history] == [0, 2, 3] and res.step == 3
