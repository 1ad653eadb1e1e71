"""Checks on a trial config that the rollout backend imposes, runnable before any model loads.

`check_backend(cfg)` is what a study validation should call on each trial config it builds (the
trainer calls it too, at trial start): vLLM missing, or a noise site the engine cannot serve, is
a one-line ValueError instead of a trial that fails minutes later. No torch, no vLLM import
unless the backend is `vllm`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from objective.config import TrialConfig


def require_vllm() -> Any:
    """Import vllm or fail in one line: the `vllm` backend needs the gpu extra."""
    try:
        import vllm  # type: ignore[import-not-found]
    except ImportError:
        raise ValueError(
            "rollout.backend: 'vllm' needs vLLM, which is not installed; "
            "install the gpu extra (pip install 'noisesweep[gpu]') or use rollout.backend=hf"
        ) from None
    return vllm


def check_noise_site(cfg: TrialConfig) -> None:
    """vLLM only receives weights: noise on linear outputs (site "linear") cannot reach it."""
    if cfg.rollout.backend == "vllm" and cfg.noise.enabled and cfg.noise.site != "rmsnorm":
        raise ValueError(
            f"noise.site: '{cfg.noise.site}' cannot run on rollout.backend=vllm (the engine only receives "
            "weights); use noise.site=rmsnorm or rollout.backend=hf"
        )


def check_backend(cfg: TrialConfig, *, need_installed: bool = True) -> None:
    """Everything the chosen backend refuses; need_installed=False skips the vLLM import (a
    driver validating a study need not have vLLM, only the GPU workers do)."""
    if cfg.rollout.backend != "vllm":
        return
    if need_installed:
        require_vllm()
    check_noise_site(cfg)
