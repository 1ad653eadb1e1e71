"""GRPO/DAPO math on hand-made tensors (values worked out by hand in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from objective import grpo


def test_group_advantages_normalize_within_each_group() -> None:
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 0.0]])
    adv = grpo.group_advantages(r)
    # group 0: mean 0.5, unbiased std sqrt(1/3) -> +-0.5/0.57735 = +-0.8660
    assert adv[0].tolist() == pytest.approx([0.866025, -0.866025, -0.866025, 0.866025], abs=1e-5)
    # group 1: mean 0.75, std 0.5 -> 0.5, 0.5, 0.5, -1.5
    assert adv[1].tolist() == pytest.approx([0.5, 0.5, 0.5, -1.5], abs=1e-5)


def test_identical_rewards_give_zero_advantage_and_are_dropped_by_dapo() -> None:
    r = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert grpo.group_advantages(r)[:2].abs().max() == 0
    assert grpo.informative_groups(r).tolist() == [False, False, True]


def _loss(token_mean: bool, eps_high: float) -> float:
    # seq 0: 1 token, ratio 1.5, A=+1 -> clipped at 1+eps_high: per-token -(1+eps_high)
    # seq 1: 3 tokens (4th masked), ratio 0.5, A=-1 -> min(-0.5, -0.8) = -0.8: per-token +0.8
    old = torch.zeros(2, 4)
    logp = torch.tensor([[math.log(1.5), 0, 0, 0], [math.log(0.5)] * 4])
    mask = torch.tensor([[1, 0, 0, 0], [1, 1, 1, 0]])
    adv = torch.tensor([1.0, -1.0])
    loss, info = grpo.policy_loss(logp, old, adv, mask, eps_low=0.2, eps_high=eps_high, token_mean=token_mean)
    assert info["clipfrac"] == pytest.approx(1.0)  # every real token is clipped here
    return float(loss)


def test_dapo_token_mean_uses_clip_high_and_weights_tokens() -> None:
    # token mean over 4 tokens: (-1.28 + 3 * 0.8) / 4
    assert _loss(True, 0.28) == pytest.approx((-1.28 + 2.4) / 4, abs=1e-6)


def test_grpo_sequence_mean_weights_sequences() -> None:
    # per sequence then mean: (-1.2 + 0.8) / 2
    assert _loss(False, 0.2) == pytest.approx((-1.2 + 0.8) / 2, abs=1e-6)


def test_unclipped_region_gradient_is_advantage_times_ratio() -> None:
    logp = torch.tensor([[0.1, 0.0]], requires_grad=True)
    loss, info = grpo.policy_loss(
        logp, torch.zeros(1, 2), torch.tensor([2.0]), torch.tensor([[1, 1]]), eps_low=0.2, eps_high=0.28, token_mean=True
    )
    loss.backward()
    # d/dlogp of -(ratio*A)/2 = -A*ratio/2 per token
    assert logp.grad.tolist()[0] == pytest.approx([-2.0 * math.exp(0.1) / 2, -1.0], abs=1e-6)
    assert info["clipfrac"] == 0.0


def test_dual_clip_bounds_the_loss_of_a_negative_advantage_token_with_a_large_ratio() -> None:
    # ratio e^2 = 7.39, A = -1: the PPO clip keeps -min(-7.39, -1.28) = 7.39;
    # dual clip (verl's clip_ratio_c = 3) caps the per-token loss at -A * 3 = 3
    logp, old, mask = torch.tensor([[2.0]]), torch.zeros(1, 1), torch.ones(1, 1)
    kw = dict(eps_low=0.2, eps_high=0.28, token_mean=True)
    plain, _ = grpo.policy_loss(logp, old, torch.tensor([-1.0]), mask, **kw)
    dual, _ = grpo.policy_loss(logp, old, torch.tensor([-1.0]), mask, clip_ratio_c=3.0, **kw)
    assert float(plain) == pytest.approx(math.exp(2.0)) and float(dual) == pytest.approx(3.0)
    pos, _ = grpo.policy_loss(logp, old, torch.tensor([1.0]), mask, clip_ratio_c=3.0, **kw)
    assert float(pos) == pytest.approx(-1.28)  # positive advantages: the ordinary clip only


def test_overlong_penalty_is_dapos_linear_ramp_over_the_buffer() -> None:
    # max 10 tokens, buffer 4 -> free up to 6; 7 tokens: -1/4 * 0.5; 10 tokens: -0.5
    pen = grpo.overlong_penalty(torch.tensor([5, 6, 7, 10]), max_len=10, buffer_len=4, factor=0.5)
    assert pen.tolist() == pytest.approx([0.0, 0.0, -0.125, -0.5])
    assert grpo.overlong_penalty(torch.tensor([10]), max_len=10, buffer_len=0, factor=0.5).tolist() == [0.0]
