"""Rollout backends: generate responses (and their log-probs at the sampling temperature).

- `base`: the `Rollout` batch, the `RolloutBackend` Protocol every backend implements (generate,
  sync weights and noise, release), prompt encoding, the timeout / divergence errors.
- `hf`: sampling from the policy module itself (nothing to sync).
- `vllm_backend` + `vllm_sync`: a colocated vLLM engine fed the policy's merged, quantized, noisy
  weights at each sync. vLLM is imported lazily: without it, choosing it is one line
  (`checks.require_vllm`), and nothing here imports it at module level.
- `checks`: what a backend refuses, runnable on a trial config before any model loads.

`make_rollout` is the only place the backend is chosen. Dependencies run one way:
base <- hf, base <- vllm_sync <- vllm_backend, checks (no torch); this package's __init__ imports
vllm_backend only inside make_rollout.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from objective.rollout.base import (
    NonFiniteError,
    Rollout,
    RolloutBackend,
    TrialTimeout,
    encode_prompts,
    select_rows,
)
from objective.rollout.checks import check_backend, require_vllm
from objective.rollout.hf import HfRollout, hf_generate

if TYPE_CHECKING:
    from objective.config import TrialConfig
    from quant.model import QuantHandle
    from quant.noise import NoiseInjector

__all__ = [
    "HfRollout",
    "NonFiniteError",
    "Rollout",
    "RolloutBackend",
    "TrialTimeout",
    "check_backend",
    "encode_prompts",
    "hf_generate",
    "make_rollout",
    "require_vllm",
    "select_rows",
]


def make_rollout(
    cfg: TrialConfig,
    model: torch.nn.Module,
    tokenizer: Any,
    *,
    quant: QuantHandle | None = None,
    injector: NoiseInjector | None = None,
    generator: torch.Generator | None = None,
    deadline: float | None = None,
) -> RolloutBackend:
    """The one place the backend is chosen (see RolloutBackend for the call protocol)."""
    if cfg.rollout.backend == "vllm":
        from objective.rollout import vllm_backend

        return vllm_backend.VllmRollout(cfg, model, tokenizer, quant=quant, injector=injector, deadline=deadline)
    return HfRollout(cfg, model, tokenizer, generator=generator, deadline=deadline)
