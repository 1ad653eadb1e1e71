"""One training step's policy update: mini-batches, micro-batches, gradient accumulation.

The loop follows verl's actor (verl/workers/actor/dp_actor.py, `DataParallelPPOActor.update_policy`):
the step's sequences are split in order (verl's `data.split`, no shuffle) into mini-batches of
`algo.mini_batch_size` prompts x `samples_per_prompt` responses (verl multiplies its
ppo_mini_batch_size by rollout.n the same way); each mini-batch is one optimizer step (gradient
clipping at `grad_clip` first), computed as micro-batches of `micro_batch_size` sequences whose
losses are accumulated in `.grad`; `ppo_epochs` passes over the mini-batches. Differences, on purpose:
- the micro-batch losses are normalized by the whole mini-batch's denominator (grpo.policy_loss's
  `normalizer`), so the gradient does not depend on the micro-batch size;
- a non-finite loss raises instead of being skipped: a diverged trial is a failed trial.

Old log-probs (the PPO ratio's denominator), like verl: with one mini-batch and one epoch the
update is on-policy and the old log-probs are the training forward's own, detached (ratio 1);
otherwise they are computed once, before any update, by a no-grad forward of the policy as it
was at rollout time (verl's `compute_log_prob`), or taken from the sampler (`rollout`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from objective import grpo
from objective.rollout import NonFiniteError, Rollout

if TYPE_CHECKING:
    from objective.config import AlgoCfg

LogpFn = Callable[[Rollout], torch.Tensor]
ContextFn = Callable[[], contextlib.AbstractContextManager[object]]


def warmup_lr(step: int, base_lr: float, warmup_steps: int) -> float:
    """The learning rate of training step `step` (1-based), verl's constant schedule with warm-up.

    verl (verl/utils/torch_functional.py, get_constant_schedule_with_warmup; the scheduler is
    stepped after each update_actor) gives step s the factor (s - 1) / warmup while s - 1 < warmup:
    0 at step 1, 0.9 at step 10 of 10, 1 from step 11 on.
    """
    if warmup_steps <= 0 or step - 1 >= warmup_steps:
        return base_lr
    return base_lr * (step - 1) / warmup_steps


def slice_rollout(ro: Rollout, lo: int, hi: int) -> Rollout:
    """Rows lo..hi-1 of a rollout (views, no copies)."""
    return Rollout(ro.prompt_ids[lo:hi], ro.prompt_mask[lo:hi], ro.response_ids[lo:hi], ro.response_mask[lo:hi],
                   ro.logp[lo:hi], ro.texts[lo:hi])


def spans(n: int, size: int | None) -> list[tuple[int, int]]:
    """[0, n) cut into consecutive spans of `size` (the last may be shorter); None = one span."""
    step = n if not size else size
    return [(lo, min(lo + step, n)) for lo in range(0, n, max(step, 1))]


@dataclass
class UpdateStats:
    """What one step's update did, for the trainer's metrics."""

    losses: list[float] = field(default_factory=list)  # one per optimizer step
    grad_norms: list[float] = field(default_factory=list)  # before clipping, one per optimizer step
    clipped_tokens: float = 0.0
    tokens: float = 0.0
    # each sequence's log-probs at its first forward of the step (detached, CPU)
    first_logp: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    @property
    def clipfrac(self) -> float:
        return self.clipped_tokens / self.tokens if self.tokens else 0.0


@torch.no_grad()
def old_logprobs(logp_fn: LogpFn, ro: Rollout, micro_batch_size: int | None) -> torch.Tensor:
    """The policy's log-probs before any update, micro-batch by micro-batch (no graph kept)."""
    parts = [logp_fn(slice_rollout(ro, lo, hi)).detach().cpu() for lo, hi in spans(len(ro.texts), micro_batch_size)]
    return torch.cat(parts)


def ppo_update(
    logp_fn: LogpFn,
    ro: Rollout,
    advantages: torch.Tensor,
    *,
    algo: AlgoCfg,
    optimizer: torch.optim.Optimizer,
    params: list[torch.nn.Parameter],
    step: int,
    training: ContextFn = contextlib.nullcontext,
    scoring: ContextFn = contextlib.nullcontext,
) -> UpdateStats:
    """Run the step's optimizer updates on `ro`; see the module docstring.

    `logp_fn(micro_rollout)` returns (b, R) log-probs with a graph. Each mini-batch's forward and
    backward passes run inside `training()`, the old-log-prob forward inside `scoring()`, and every
    optimizer step outside both (the trainer's noise contexts: quant.noise.NoiseInjector wants
    the optimizer step outside them; scoring also switches to eval mode, as verl's
    compute_log_prob does).
    """
    n = len(ro.texts)
    per_mini = algo.mini_batch_size * algo.samples_per_prompt if algo.mini_batch_size else None
    minis = spans(n, per_mini)
    on_policy = len(minis) == 1 and algo.ppo_epochs == 1
    old: torch.Tensor | None = None
    if algo.old_logprobs == "rollout":
        old = ro.logp
    elif not on_policy:
        with scoring():
            old = old_logprobs(logp_fn, ro, algo.micro_batch_size)
    stats = UpdateStats(first_logp=torch.zeros_like(ro.logp))
    seen = torch.zeros(n, dtype=torch.bool)
    token_mean = algo.name == "dapo"
    for _ in range(algo.ppo_epochs):
        for lo, hi in minis:
            mask = ro.response_mask[lo:hi]
            normalizer = float(mask.sum().clamp(min=1)) if token_mean else float(hi - lo)
            optimizer.zero_grad(set_to_none=True)
            total = 0.0
            with training():
                for mlo, mhi in spans(hi - lo, algo.micro_batch_size):
                    a, b = lo + mlo, lo + mhi
                    micro = slice_rollout(ro, a, b)
                    logp = logp_fn(micro)
                    dev = logp.device
                    base = logp.detach() if old is None else old[a:b].to(dev)
                    loss, info = grpo.policy_loss(
                        logp, base, advantages[a:b].to(dev), micro.response_mask.to(dev),
                        eps_low=algo.eps_low, eps_high=algo.eps_high, token_mean=token_mean, normalizer=normalizer,
                        clip_ratio_c=algo.clip_ratio_c,
                    )
                    if not torch.isfinite(loss):
                        raise NonFiniteError(f"loss is {float(loss.detach())} at step {step}")
                    loss.backward()
                    total += float(loss.detach())
                    real = float(micro.response_mask.sum())
                    stats.clipped_tokens += info["clipfrac"] * real
                    stats.tokens += real
                    fresh = ~seen[a:b]
                    if bool(fresh.any()):
                        stats.first_logp[a:b][fresh] = logp.detach().cpu()[fresh].to(stats.first_logp.dtype)
                        seen[a:b] = True
            stats.grad_norms.append(float(torch.nn.utils.clip_grad_norm_(params, algo.grad_clip)))
            optimizer.step()
            stats.losses.append(total)
    return stats
