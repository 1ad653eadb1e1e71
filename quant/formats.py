"""FP4 fake quantization (E2M1 elements with MX or NV block scales): quantize-dequantize in one call.

The entry point of the format code, on top of quant/fp4_constants.py (numbers),
quant/fp4_kernels.py (the arithmetic and its documented decisions, the eager reference) and
quant/fp4_compiled.py (those kernels under torch.compile). Blocks run along the last axis, which
is the reduction axis of both a Linear's input and its weight (out_features, in_features).
`fake_quantize` takes the compiled path for tensors of at least `fp4_compiled.MIN_NUMEL`
elements unless NOISESWEEP_COMPILE=0; both paths give the same bits.
"""

from __future__ import annotations

import torch

from quant import fp4_compiled
from quant.format_names import KNOWN_FORMATS, Fp4Format, check_format
from quant.fp4_constants import (
    BLOCK_SIZES,
    E2M1_MAX,
    E4M3_MAX,
    MX_BLOCK_SIZE,
    NV_BLOCK_SIZE,
)
from quant.fp4_kernels import eager_fake_quantize

__all__ = [
    "BLOCK_SIZES",
    "E2M1_MAX",
    "E4M3_MAX",
    "KNOWN_FORMATS",
    "MX_BLOCK_SIZE",
    "NV_BLOCK_SIZE",
    "Fp4Format",
    "fake_quantize",
]


def _forward(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """Fast path when available (quant/fp4_compiled.py decides), else the eager reference."""
    if x.numel() == 0:  # e.g. a Linear called on an empty batch: nothing to scale
        return x.clone()
    out = fp4_compiled.quantize(x, fmt)
    return out if out is not None else eager_fake_quantize(x, fmt)


class _StraightThrough(torch.autograd.Function):
    """Forward: fake-quantize. Backward: identity (the straight-through estimator)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, fmt: str) -> torch.Tensor:
        return _forward(x, fmt)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad, None


class _Rounded(torch.autograd.Function):
    """Forward: fake-quantize. Backward: zero, the derivative of rounding almost everywhere.

    (NVFP4's output also moves with the per-tensor amax through s; that single-element path is
    dropped on purpose: without STE, W4A4 passes no gradient to the layers below, which is the
    failure mode the team observed and which this option reproduces.)
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, fmt: str) -> torch.Tensor:
        return _forward(x, fmt)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return torch.zeros_like(grad), None


def fake_quantize(x: torch.Tensor, fmt: str, *, ste: bool = False) -> torch.Tensor:
    """Quantize-dequantize `x` along its last axis; same shape and dtype as `x`.

    With ``ste=True`` the gradient passes straight through (W4A4 training needs this); without
    it the rounding's zero gradient reaches the input.
    """
    fmt = check_format(fmt).value
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() == 0:
        got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"fake_quantize needs a floating-point tensor with at least one dimension, got {got}")
    if x.requires_grad and torch.is_grad_enabled():
        fn = _StraightThrough if ste else _Rounded
        out: torch.Tensor = fn.apply(x, fmt)
        return out
    return _forward(x, fmt)
