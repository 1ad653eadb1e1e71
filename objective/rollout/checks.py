"""Checks on a trial config that the rollout backend imposes, runnable before any model loads.

`check_backend(cfg)` runs at trial start before any model loads (vLLM missing or broken, or a
noise site the engine cannot serve, is a one-line ValueError); `check_noise_sites(backend,
sites)` is the same rule for a whole study's space, for the sweep's study validation. No torch,
no vLLM import unless the backend is `vllm`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from objective.config import TrialConfig


# Noise sites each backend can serve: vLLM receives weights only, so noise on linear outputs
# (a forward hook in training) cannot reach it.
SERVABLE_SITES = {"hf": ("rmsnorm", "linear"), "vllm": ("rmsnorm",)}


def require_vllm() -> Any:
    """Import vllm or fail in one line: the `vllm` backend needs the gpu extra and a CUDA torch."""
    try:
        import vllm  # type: ignore[import-not-found]
    except ImportError:
        raise ValueError(
            "rollout.backend: 'vllm' needs vLLM, which is not installed; "
            "install the gpu extra (pip install 'noisesweep[gpu]') or use rollout.backend=hf"
        ) from None
    except Exception as exc:  # vLLM present but broken, e.g. on a CPU build of torch
        import torch

        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            raise ValueError(
                f"rollout.backend: 'vllm' needs a CUDA build of torch, this one is {torch.__version__} "
                "(install the CUDA wheel first: README, 'The real path (GPUs)')"
            ) from None
        raise ValueError(f"rollout.backend: 'vllm' failed to import: {type(exc).__name__}: {exc}"[:300]) from None
    return vllm


def check_noise_sites(backend: str, sites: Iterable[str], *, where: str = "noise.site") -> None:
    """Refuse noise sites the backend cannot serve; for a study, pass every site its space can pick.

    The sweep should call this when it validates a study (sites = the space's `site` choices,
    or the base config's noise.site when the site is not searched): a space that can pick
    `linear` on vLLM would otherwise fail about half of its trials at their start.
    """
    servable = SERVABLE_SITES.get(backend, ())
    bad = [s for s in sites if s not in servable]
    if bad:
        raise ValueError(
            f"{where}: '{bad[0]}' cannot run on rollout.backend={backend} (the engine only receives weights); "
            f"use {' or '.join(servable)} there, or rollout.backend=hf"
        )


def check_noise_site(cfg: TrialConfig) -> None:
    """One trial's noise site against its backend (noise off: nothing to serve)."""
    if cfg.noise.enabled:
        check_noise_sites(cfg.rollout.backend, [cfg.noise.site])


def check_backend(cfg: TrialConfig, *, need_installed: bool = True) -> None:
    """Everything the chosen backend refuses; need_installed=False skips the vLLM import (a
    driver validating a study need not have vLLM, only the GPU workers do)."""
    if cfg.rollout.backend != "vllm":
        return
    if need_installed:
        require_vllm()
    check_noise_site(cfg)
