"""What every rollout backend shares: the Rollout batch, the backend Protocol, prompt encoding.

Nothing here imports a backend, so `hf` and `vllm` both build on this module and neither on the
other (the old objective/rollout.py <-> objective/vllm_engine.py import circle is gone).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


class TrialTimeout(Exception):
    """The trial's wall-clock budget ran out (checked between steps and per generated token)."""


class NonFiniteError(Exception):
    """Logits or loss became NaN/Inf: the run diverged."""


@dataclass
class Rollout:
    """A batch of prompts and their sampled responses, padded on the right after the prompt.

    prompt_ids (B, P) left-padded; response_ids (B, R) with pad after EOS; response_mask (B, R)
    is 1 on real response tokens (EOS included, nothing after it); logp (B, R) the sampling
    policy's log-prob of each token at the sampling temperature (0 where masked).
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    response_ids: torch.Tensor
    response_mask: torch.Tensor
    logp: torch.Tensor
    texts: list[str]


class RolloutBackend(Protocol):
    """What the trainer needs from a rollout backend (objective.rollout.make_rollout builds one).

    Contract, per optimizer step: `sync()` once inside the noise context the generation needs
    (rollout: noisy; validation: outside it, clean), then any number of `generate` calls; `close()`
    once when the trial ends, after which the backend holds no model memory (a reused Ray worker
    runs the next trial in the same process).
    """

    def sync(self) -> None:
        """Make the generator serve the policy as it is now: current LoRA weights and noise."""

    def generate(self, prompts: list[str], temperature: float) -> Rollout:
        """One response per prompt (temperature 0: greedy), with the sampler's token log-probs."""

    def close(self) -> None:
        """Release everything the backend allocated (idempotent)."""


def select_rows(ro: Rollout, rows: torch.Tensor) -> Rollout:
    """The rollout's rows where the bool mask `rows` is True (DAPO keeps informative groups)."""
    idx = rows.nonzero().flatten()
    return Rollout(ro.prompt_ids[idx], ro.prompt_mask[idx], ro.response_ids[idx], ro.response_mask[idx],
                   ro.logp[idx], [ro.texts[i] for i in idx.tolist()])


def pad_token_id(tokenizer: Any) -> int:
    """The tokenizer's pad id, or its EOS id when it has none (Qwen's and the tiny one's both work)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def encode_prompts(tokenizer: Any, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad a batch of prompt strings (decoder-only generation needs the prompts aligned at the end)."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    width = max(len(x) for x in ids)
    out = torch.full((len(ids), width), pad_token_id(tokenizer), dtype=torch.long)
    mask = torch.zeros((len(ids), width), dtype=torch.long)
    for i, x in enumerate(ids):
        if x:
            out[i, width - len(x) :] = torch.tensor(x, dtype=torch.long)
            mask[i, width - len(x) :] = 1
    return out, mask
