"""The trainer as a sweep trial, on a random 2-layer Qwen2 saved as a local HF directory.

Tiny settings everywhere (2 steps, 4 prompts x 4 samples, 20 validation problems, 1 thread):
the full-size trial is bench/trial_time.py's job.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from objective import StopTrial, run_trial
from objective import grpo as grpo_mod
from modellib import save_random_qwen2, with_overrides
from objective import reward as reward_mod

VAL = "val-core/tiny-arith/acc/mean@1"
TIMING = ("time/step_s", "time/rollout_s", "time/train_s", "perf/tokens_per_s")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_random_qwen2(
        tmp_path_factory.mktemp("tiny2"), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True,
    )


def small(model_dir: Path, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "seed": 3,
        "threads": 1,
        "model": {"path": str(model_dir)},
        "task": {"num_val": 20, "max_response_len": 6},
        "lora": {"rank": 4},
        "algo": {"prompts_per_step": 4, "samples_per_prompt": 4},
        "steps": {"total": 2, "val_at": [0, 2]},
    }
    return with_overrides(cfg, over)


def strip_timing(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"step": h["step"], "metrics": {k: v for k, v in h["metrics"].items() if k not in TIMING}} for h in history]


def test_short_trial_completes_and_reports_each_validation(model_dir: Path) -> None:
    calls: list[tuple[int, dict[str, float]]] = []
    res = run_trial(small(model_dir), lambda s, m: calls.append((s, m)))
    assert res.status == "complete" and res.reason is None
    assert [h["step"] for h in res.history] == [0, 2] and res.step == 2
    assert [s for s, _ in calls] == [0, 2]
    assert set(calls[0][1]) == {VAL}
    for key in ("train/reward_mean", "train/loss", "train/response_length", "train/entropy",
                "perf/tokens_per_s", "time/step_s", "noise/sigma", VAL):
        assert key in calls[1][1]
    assert res.value == calls[1][1][VAL] == res.history[-1]["metrics"][VAL]
    assert res.applied["sigma"] == [0.0, 0.0] and res.applied["multipliers"] is None
    assert "MXFP4 W4A4" in res.applied["quant"]
    assert 0 < calls[1][1]["train/response_length"] <= 6
    assert res.wall_time_s > 0


def test_stop_trial_from_report_prunes_with_last_value(model_dir: Path) -> None:
    def report(step: int, metrics: dict[str, float]) -> None:
        raise StopTrial("asha")

    res = run_trial(small(model_dir), report)
    assert res.status == "pruned" and res.step == 0 and "asha" in res.reason
    assert res.value == res.history[0]["metrics"][VAL] and len(res.history) == 1


def test_other_report_exception_fails_the_trial(model_dir: Path) -> None:
    def report(step: int, metrics: dict[str, float]) -> None:
        raise RuntimeError("database is locked")

    res = run_trial(small(model_dir), report)
    assert res.status == "failed" and "database is locked" in res.reason and "\n" not in res.reason


def test_nan_loss_fails_with_reason(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = grpo_mod.policy_loss

    def nan_loss(*a: Any, **kw: Any) -> Any:
        loss, info = real(*a, **kw)
        return loss * float("nan"), info

    monkeypatch.setattr(grpo_mod, "policy_loss", nan_loss)
    res = run_trial(small(model_dir))
    assert res.status == "failed" and "loss is nan at step 1" in res.reason
    assert [h["step"] for h in res.history] == [0]


def test_timeout_fails_with_reason(model_dir: Path) -> None:
    res = run_trial(small(model_dir, timeout_s=0.01))
    assert res.status == "failed" and res.reason.startswith("timeout")


def test_same_seed_same_history_other_seed_differs(model_dir: Path) -> None:
    cfg = small(model_dir, noise={"enabled": True, "num_stages": 3, "sigma_start": 0.1, "sigma_end": 0.01})
    a, b = run_trial(cfg), run_trial(cfg)
    c = run_trial({**cfg, "seed": 4})
    assert strip_timing(a.history) == strip_timing(b.history)
    assert a.applied["noise_records"] == b.applied["noise_records"]
    assert strip_timing(a.history) != strip_timing(c.history)


def test_noise_records_show_the_multipliers_actually_applied(model_dir: Path) -> None:
    cfg = small(model_dir, steps={"total": 3, "val_at": [3]},
                noise={"enabled": True, "num_stages": 3, "sigma_start": 0.1, "sigma_end": 0.01,
                       "layer_multipliers": [0.5, 2.0]})
    res = run_trial(cfg)
    assert res.status == "complete"
    # update s uses sigma_at(s - 1, 3, ...): stage 0 is noise-free, then 0.1 and 0.01
    assert res.applied["sigma"] == pytest.approx([0.0, 0.1, 0.01])
    assert res.applied["multipliers"] == [0.5, 2.0]
    rec = res.applied["noise_records"][1]
    assert rec["sigma"] == pytest.approx(0.1)
    assert rec["std"][1] / rec["std"][0] == pytest.approx(4.0, rel=0.35)  # drawn std follows m_l
    assert [h["metrics"]["noise/sigma"] for h in res.applied["train"]] == pytest.approx([0.0, 0.1, 0.01])


def test_layer_multipliers_length_checked_against_the_model(model_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"noise\.layer_multipliers: 3 values but the model has 2"):
        run_trial(small(model_dir, noise={"enabled": True, "layer_multipliers": [1.0, 1.0, 1.0]}))


def test_dapo_drops_uniform_groups_and_caps_refills(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # every response scores 0: every group is uninformative, so DAPO refills until the cap
    monkeypatch.setattr(reward_mod, "gsm8k_strict_score", lambda response, truth: 0.0)
    res = run_trial(small(model_dir, algo={"name": "dapo", "max_refills": 2}, steps={"total": 1, "val_at": [1]}))
    m = res.history[-1]["metrics"]
    assert res.status == "complete"
    assert m["train/groups_generated"] == 4 * (1 + 2)
    assert m["train/refills"] == 2 and m["train/groups_used"] == 0 and m["train/loss"] == 0.0


def test_dapo_keeps_informative_groups_and_learns_from_them(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a reward that differs within a group (depends on the sampled text): groups are kept, loss is real
    monkeypatch.setattr(reward_mod, "gsm8k_strict_score", lambda response, truth: float(len(response) % 2))
    res = run_trial(small(model_dir, algo={"name": "dapo", "max_refills": 3}, steps={"total": 1, "val_at": [1]}))
    m = res.history[-1]["metrics"]
    used, refills = m["train/groups_used"], m["train/refills"]
    assert 1 <= used <= 4 and refills <= 3 and (used == 4 or refills == 3)  # full batch, or the cap hit
    assert m["train/groups_generated"] >= used + refills  # each refill asks for at least one group
    assert m["train/loss"] != 0.0 and 0 < m["train/reward_mean"] < 1


def test_vllm_backend_without_vllm_is_a_clear_error(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm -> ImportError, as without the gpu extra
    with pytest.raises(ValueError, match="install the gpu extra") as info:
        run_trial(small(model_dir, rollout={"backend": "vllm"}))
    assert "\n" not in str(info.value)


def test_vllm_check_comes_before_any_model_is_loaded(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from objective import trainer as trainer_mod

    loaded: list[Any] = []
    monkeypatch.setattr(trainer_mod, "load_model", lambda cfg: loaded.append(cfg))
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ValueError, match=r"^rollout.backend: 'vllm' needs vLLM.*pip install 'noisesweep\[gpu\]'"):
        run_trial(small(model_dir, rollout={"backend": "vllm"}))
    assert loaded == []


def test_rl_raises_a_learnable_reward_on_the_tiny_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    """The update has the right sign: rewarding an even last digit makes the policy produce more of them."""

    def even_last_digit(response: str, truth: str) -> float:
        digits = [c for c in response if c.isdigit()]
        return float(bool(digits) and int(digits[-1]) % 2 == 0)

    monkeypatch.setattr(reward_mod, "gsm8k_strict_score", even_last_digit)
    cfg = {"seed": 0, "threads": 1, "quant": {"format": "none"}, "task": {"num_val": 1},
           "algo": {"lr": 5e-2, "prompts_per_step": 8, "samples_per_prompt": 8},
           "steps": {"total": 8, "val_at": [0, 8]}}
    res = run_trial(cfg)
    r = [h["metrics"]["train/reward_mean"] for h in res.applied["train"]]
    assert sum(r[-2:]) / 2 > sum(r[:2]) / 2 + 0.2, r


def test_warmup_starts_at_lr_zero_and_weight_decay_reaches_the_optimizer(model_dir: Path) -> None:
    from objective.config import load_config
    from objective.trainer import Trainer

    cfg = load_config(small(model_dir, algo={"lr_warmup_steps": 2, "weight_decay": 0.1, "lr": 1e-2}))
    trainer = Trainer(cfg)
    try:
        assert trainer.optim.param_groups[0]["weight_decay"] == 0.1
        lora = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

        def moved() -> float:
            return max(float((p.detach() - lora[n]).abs().max()) for n, p in trainer.model.named_parameters()
                       if p.requires_grad)

        m1 = trainer.train_step(1, 0.0)
        assert m1["train/lr"] == 0.0 and moved() == 0.0  # verl: step 1 of a warm-up runs at lr 0
        m2 = trainer.train_step(2, 0.0)
        assert m2["train/lr"] == pytest.approx(5e-3) and moved() > 0
        assert trainer.train_step(3, 0.0)["train/lr"] == pytest.approx(1e-2)
    finally:
        trainer.close()


def test_mini_batches_give_several_updates_per_step(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reward_mod, "gsm8k_strict_score", lambda response, truth: float(len(response) % 2))
    res = run_trial(small(model_dir, algo={"mini_batch_size": 1, "micro_batch_size": 3},
                          steps={"total": 1, "val_at": [1]}))
    assert res.status == "complete", res.reason
    assert res.history[-1]["metrics"]["train/updates"] == 4  # 4 prompts / mini-batch 1


def test_dapo_filters_on_the_score_and_adds_the_overlong_penalty_to_the_reward(
        model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(reward_mod, "gsm8k_strict_score", lambda response, truth: 1.0)
    over = {"overlong_buffer_len": 5, "overlong_penalty_factor": 0.5}  # responses of > 1 token are penalized
    grpo_run = run_trial(small(model_dir, algo=over, steps={"total": 1, "val_at": [1]}))
    m = grpo_run.history[-1]["metrics"]
    assert m["train/overlong_frac"] > 0 and m["train/overlong_penalty_mean"] < 0
    assert m["train/reward_mean"] == pytest.approx(1.0 + m["train/overlong_penalty_mean"])
    # DAPO: every group scores 1 everywhere, so every group is dropped, whatever the penalties
    dapo_run = run_trial(small(model_dir, algo={**over, "name": "dapo", "max_refills": 0}, steps={"total": 1, "val_at": [1]}))
    assert dapo_run.history[-1]["metrics"]["train/groups_used"] == 0


def test_bad_ppo_shapes_are_one_line_errors(model_dir: Path) -> None:
    with pytest.raises(ValueError, match=r"algo.mini_batch_size \(5\) > algo.prompts_per_step \(4\)"):
        run_trial(small(model_dir, algo={"mini_batch_size": 5}))
    with pytest.raises(ValueError, match=r"algo.overlong_buffer_len \(6\) must be < the response length \(6\)"):
        run_trial(small(model_dir, algo={"overlong_buffer_len": 6}))
