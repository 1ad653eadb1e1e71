"""FP4 formats (E2M1 elements with MX or NV block scales): quantize-dequantize in one call.

Blocks run along the last axis, which is the reduction axis of both a Linear's input and its
weight (out_features, in_features). Format facts are named constants below; each format has
one function. This is the plain eager reference; see quant/_fused.py (when present) for speed.
"""

from __future__ import annotations

import torch

E2M1_MAX = 6.0  # largest E2M1 magnitude; values beyond saturate
E2M1_MAX_POW2 = 2  # floor(log2(E2M1_MAX)): MX scale exponent = floor(log2(amax)) - 2
MX_BLOCK_SIZE = 32  # OCP MX v1.0 block length
E8M0_MIN_EXP, E8M0_MAX_EXP = -127, 127  # E8M0 scale range (no zero, no sign)
NV_BLOCK_SIZE = 16  # NVFP4 block length
E4M3_MAX = 448.0  # largest float8_e4m3fn magnitude (NVFP4 block scales)
F32_MANTISSA_BITS, F32_EXP_BIAS = 23, 127

KNOWN_FORMATS = ("mxfp4", "nvfp4")


def round_to_e2m1(y: torch.Tensor) -> torch.Tensor:
    """Round float32 values (already scaled) to the E2M1 grid, ties to even, saturating at 6.

    The grid is uniform within each binade: step 0.5 below 2, 1 in [2, 4), 2 in [4, 6].
    torch.round rounds half to even, and an even multiple of the step is an even mantissa.
    """
    mag = y.abs().clamp(max=E2M1_MAX)
    step = torch.where(mag < 2.0, 0.5, torch.where(mag < 4.0, 1.0, 2.0))
    return torch.copysign(torch.round(mag / step) * step, y)


def _blocks(x: torch.Tensor, block: int) -> tuple[torch.Tensor, int]:
    """View x (float32) as (..., n_blocks, block), zero-padding a short last block."""
    n = x.shape[-1]
    pad = (-n) % block
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], -1, block), n


def _unblock(q: torch.Tensor, n: int) -> torch.Tensor:
    q = q.reshape(*q.shape[:-2], -1)
    return q[..., :n]


def _floor_log2(a: torch.Tensor) -> torch.Tensor:
    """floor(log2(a)) for positive float32 taken from the exponent bits (exact, unlike log2)."""
    bits = a.contiguous().view(torch.int32)
    return ((bits >> F32_MANTISSA_BITS) & 0xFF) - F32_EXP_BIAS


def mxfp4_quantize_dequantize(x: torch.Tensor) -> torch.Tensor:
    """MXFP4: shared scale 2^(floor(log2(amax)) - 2) per 32 values, stored as E8M0."""
    xb, n = _blocks(x.float(), MX_BLOCK_SIZE)
    amax = xb.abs().amax(dim=-1, keepdim=True)
    exp = (_floor_log2(amax) - E2M1_MAX_POW2).clamp(E8M0_MIN_EXP, E8M0_MAX_EXP)
    scale = torch.exp2(exp.float())
    q = round_to_e2m1(xb / scale) * scale
    # NaN/Inf anywhere in a block poisons the whole block, as the E8M0 NaN scale does.
    q = torch.where(torch.isfinite(amax), q, torch.full_like(q, float("nan")))
    return _unblock(q, n)


def _round_to_e4m3(v: torch.Tensor) -> torch.Tensor:
    """Round to float8_e4m3fn (ties to even), saturating at 448 instead of overflowing to NaN."""
    return v.clamp(max=E4M3_MAX).to(torch.float8_e4m3fn).float()


def nvfp4_quantize_dequantize(x: torch.Tensor) -> torch.Tensor:
    """NVFP4: FP32 tensor scale amax/(448*6), E4M3 block scales per 16 values, E2M1 elements.

    Block scales are not clamped from below (TransformerEngine's choice): E4M3 subnormals down to
    2^-9 are kept, a block scale that rounds to 0 makes its block 0.
    """
    xf = x.float()
    tensor_amax = xf.abs().amax()
    if not torch.isfinite(tensor_amax):
        return torch.full_like(x, float("nan"))
    if tensor_amax == 0:
        return torch.zeros_like(x)
    s = tensor_amax / (E4M3_MAX * E2M1_MAX)
    xb, n = _blocks(xf, NV_BLOCK_SIZE)
    block_amax = xb.abs().amax(dim=-1, keepdim=True)
    block_scale = _round_to_e4m3((block_amax / E2M1_MAX) / s) * s
    safe = torch.where(block_scale > 0, block_scale, torch.ones_like(block_scale))
    q = torch.where(block_scale > 0, round_to_e2m1(xb / safe) * block_scale, torch.zeros_like(xb))
    return _unblock(q, n)


_QUANTIZERS = {"mxfp4": mxfp4_quantize_dequantize, "nvfp4": nvfp4_quantize_dequantize}


class _StraightThrough(torch.autograd.Function):
    """Forward: fake-quantize. Backward: identity (the straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, fmt: str) -> torch.Tensor:  # type: ignore[override]
        return _QUANTIZERS[fmt](x).to(x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        return grad, None


def fake_quantize(x: torch.Tensor, fmt: str, *, ste: bool = False) -> torch.Tensor:
    """Quantize-dequantize `x` along its last axis; same shape and dtype as `x`.

    With ``ste=True`` the gradient passes straight through (W4A4 training needs this); without
    it the rounding's zero gradient reaches the input.
    """
    if fmt not in _QUANTIZERS:
        raise ValueError(f"unknown quantization format {fmt!r}; known formats: {', '.join(KNOWN_FORMATS)}")
    if ste:
        return _StraightThrough.apply(x, fmt)
    return _QUANTIZERS[fmt](x).to(x.dtype)
