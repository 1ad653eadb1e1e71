"""The loss and advantage math of GRPO and DAPO, on plain tensors (easy to check by hand).

Shapes: `rewards` (groups, samples); per-token tensors (sequences, response_tokens) with a 0/1
`mask` that is 0 on padding and after EOS.
"""

from __future__ import annotations

import torch

ADV_EPS = 1e-6  # GRPO: (r - mean) / (std + 1e-6)
LOG_RATIO_BOUND = 20.0  # verl clamps log(pi/pi_old) to +-20 before exp (no inf ratios)


def group_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """Per-group normalized advantages (r - mean) / (std + eps); std is the unbiased one (torch's)."""
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True) if rewards.shape[1] > 1 else torch.zeros_like(mean)
    return (rewards - mean) / (std + ADV_EPS)


def informative_groups(rewards: torch.Tensor) -> torch.Tensor:
    """DAPO's dynamic sampling: a bool per group, False where every sample got the same reward.

    Such groups have zero advantage everywhere, so they only dilute a token-mean loss.
    """
    return (rewards.max(dim=1).values - rewards.min(dim=1).values) > 0


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float,
    eps_high: float,
    token_mean: bool,
    normalizer: float | None = None,
    clip_ratio_c: float | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The clipped surrogate -min(r*A, clip(r, 1-eps_low, 1+eps_high)*A), aggregated.

    As verl's compute_policy_loss_vanilla (verl/trainer/ppo/core_algos.py): the log-ratio is
    clamped to [-20, 20] before exp, and with `clip_ratio_c` (dual-clip PPO) a token with a
    negative advantage loses at most -A * clip_ratio_c, however large its ratio grew.

    `advantages` is per sequence (broadcast over tokens). `token_mean=True` (DAPO) averages over
    every response token in the batch, so long answers weigh more; False (GRPO) averages tokens
    within each sequence, then sequences. No KL term (neither algorithm uses one here).

    `normalizer` (gradient accumulation): the denominator of the whole mini-batch this call is a
    slice of, i.e. its response-token count (token_mean) or sequence count (per-sequence mean).
    The slices' losses then add up to the mini-batch's loss exactly, so micro-batching leaves the
    gradient unchanged. (verl's legacy FSDP actor instead scales each micro-batch's own token mean
    by 1/gradient_accumulation, a mean of means that depends on the micro-batch split; its newer
    engine passes the global token count to agg_loss, which is what this does.)
    """
    adv = advantages.unsqueeze(-1).to(logp.dtype)
    ratio = torch.exp(torch.clamp(logp - old_logp, -LOG_RATIO_BOUND, LOG_RATIO_BOUND))
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - eps_low, 1.0 + eps_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    if clip_ratio_c is not None:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * clip_ratio_c), per_token)
    m = mask.to(logp.dtype)
    if token_mean:
        denom = m.sum().clamp(min=1.0) if normalizer is None else normalizer
        loss = (per_token * m).sum() / denom
    else:
        per_seq = (per_token * m).sum(-1) / m.sum(-1).clamp(min=1.0)
        loss = per_seq.mean() if normalizer is None else per_seq.sum() / normalizer
    with torch.no_grad():
        was_clipped = ((clipped != unclipped) & (m > 0)).float().sum() / m.sum().clamp(min=1.0)
    return loss, {"clipfrac": float(was_clipped)}


def overlong_penalty(lengths: torch.Tensor, *, max_len: int, buffer_len: int, factor: float) -> torch.Tensor:
    """DAPO's soft overlong punishment (verl's DAPORewardManager with overlong_buffer enabled).

    A response of L tokens (EOS included) beyond max_len - buffer_len gets
    min(-(L - (max_len - buffer_len)) / buffer_len * factor, 0): 0 up to that length, -factor at max_len.
    """
    if buffer_len <= 0:
        return torch.zeros(lengths.shape, dtype=torch.float32)
    exceed = lengths.float() - (max_len - buffer_len)
    return torch.clamp(-exceed / buffer_len * factor, max=0.0)
