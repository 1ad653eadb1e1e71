"""quant: MXFP4/NVFP4 fake quantization, model quantization, SRDD profiles and AQN/RIN noise.

This package knows nothing of the RL trainer (`objective`) or the sweep (`sweep`).
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "KNOWN_FORMATS": "quant.formats",
    "fake_quantize": "quant.formats",
    "QuantHandle": "quant.model",
    "QuantScheme": "quant.model",
    "quantize_model": "quant.model",
    "NoiseInjector": "quant.noise",
    "NoisePlan": "quant.noise_plan",
    "sigma_at": "quant.noise_plan",
    "layer_multipliers": "quant.noise_plan",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    """Import on first use: `quant.errors` (all the CLI needs to start) must not pull in torch."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'quant' has no attribute {name!r}")
