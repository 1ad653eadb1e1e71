"""The FP4 arithmetic: E2M1/E4M3 rounding, MX and NV block scales, and the eager reference.

Every kernel is written only with ops that are exact or correctly rounded (bit tricks,
power-of-two multiplies, IEEE add/divide), so the same code gives the same bits eagerly and
under torch.compile (quant/fp4_compiled.py compiles these very functions). Blocks run along the
last axis; a last axis that is not a multiple of the block length ends in a shorter block with
its own scale (computed as if zero-padded; zeros never change an amax).

MXFP4 (OCP MX v1.0): scale 2^(floor(log2(amax)) - 2), exponent taken from the float32 bits,
clamped to E8M0's [-127, 127]. Equal to torchao 0.18 ``to_mx`` (FLOOR) + ``to_dtype`` on normal
data. Where torchao departs from the spec we follow the spec:
  * a block containing +-Inf is NaN (torchao only poisons NaN blocks; an Inf block gets a finite
    scale there);
  * blocks with amax < 2^-124 use the E8M0 scale 2^-127 on both sides (torchao divides by
    2^-126, its float32-normal clamp, but multiplies back by 2^-127, halving the block).

NVFP4: per-tensor float32 scale s = amax / (448 * 6); block scale b = e4m3((amax_b / 6) / s)
(round half to even, saturating at 448); elements x * ((1 / s) / b) rounded to E2M1; dequantized
as e2m1 * (s * b). The operation order is torchao's (torchao/prototype/mx_formats/nvfp4_tensor.py,
``nvfp4_quantize``), so results equal it with ``per_tensor_scale`` bit for bit.

Block-scale lower clamp (decision): we do NOT clamp block scales from below. torchao clamps the
scaled block scale to 2^-6 (smallest E4M3 normal); TransformerEngine keeps E4M3 subnormals
(multiples of 2^-9 below 2^-6). E4M3 subnormals are valid NVFP4 scale encodings and hardware
consumes them, so blocks much smaller than the tensor maximum (amax_b < amax / 28672) keep their
resolution instead of being coarsened; a block whose scale rounds to 0 (amax_b <= amax / 458752)
dequantizes to exactly 0. A NaN or Inf anywhere makes the whole tensor NaN (the per-tensor scale
is poisoned); an all-zero tensor stays zero, and so does a tensor whose amax is below
2688 * 2^-128 (~7.9e-36), where 1 / s overflows float32 (the recipe would give 0 * inf = NaN).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from quant.format_names import Fp4Format
from quant.fp4_constants import (
    BLOCK_SIZES,
    E2M1_MAX,
    E2M1_MAX_POW2,
    E4M3_MANTISSA_BITS,
    E4M3_MAX,
    E4M3_MIN_NORMAL_EXP,
    E8M0_MAX_EXP,
    E8M0_MIN_EXP,
    F32_EXP_BIAS,
    F32_MANTISSA_BITS,
)

_MAGIC_HALF, _MAGIC_ONE, _MAGIC_TWO = 2.0**22, 2.0**23, 2.0**24  # float32 ulp = 0.5, 1, 2


def _exp_bits(a: torch.Tensor) -> torch.Tensor:
    """Biased float32 exponent field (0..255) of a non-negative float32 tensor."""
    return (a.view(torch.int32) >> F32_MANTISSA_BITS) & 0xFF


def _pow2(e: torch.Tensor) -> torch.Tensor:
    """Exact 2^e (float32) for integer e in [-126, 127], built from the bits (exp2 may be off)."""
    return ((e + F32_EXP_BIAS) << F32_MANTISSA_BITS).view(torch.float32)


# --------------------------------------------------------------------------- element rounding
def round_to_e2m1(y: torch.Tensor) -> torch.Tensor:
    """Round float32 values (already scaled) to the E2M1 grid, ties to even, saturating at 6.

    The grid is uniform within each binade: step 0.5 below 2, 1 in [2, 4), 2 in [4, 6]. Adding
    and subtracting c = 2^23 * step makes the FPU round the magnitude to a multiple of the step
    with IEEE round-half-to-even (an even multiple of the step is an even E2M1 mantissa); this
    is 3 ops fewer per element than round(m / step) * step. NaN stays NaN.
    """
    mag = y.abs().clamp(max=E2M1_MAX)
    c = torch.where(mag < 2.0, _MAGIC_HALF, torch.where(mag < 4.0, _MAGIC_ONE, _MAGIC_TWO))
    return torch.copysign((mag + c) - c, y)


def round_to_e4m3(v: torch.Tensor) -> torch.Tensor:
    """Round non-negative float32 to float8_e4m3fn values (ties to even), saturating at 448.

    Arithmetic instead of a float8 cast so Inductor keeps the loop vectorized; tests check it
    against ``.to(torch.float8_e4m3fn)``. Step 2^(e-3) in binade e, 2^-9 in the subnormal range.
    """
    v = v.clamp(max=E4M3_MAX)
    e = (_exp_bits(v) - F32_EXP_BIAS).clamp(min=E4M3_MIN_NORMAL_EXP) - E4M3_MANTISSA_BITS
    return torch.round(v * _pow2(-e)) * _pow2(e)


# --------------------------------------------------------------------------- MXFP4
def mx_scale_exponent(amax: torch.Tensor) -> torch.Tensor:
    """E8M0 shared exponent floor(log2(amax)) - 2 from the float32 bits, clamped to [-127, 127]."""
    return (_exp_bits(amax) - F32_EXP_BIAS - E2M1_MAX_POW2).clamp(E8M0_MIN_EXP, E8M0_MAX_EXP)


def e8m0_value(exp: torch.Tensor) -> torch.Tensor:
    """Exact float32 2^exp for an E8M0 exponent in [-127, 127].

    2^-127 is a float32 subnormal: built as 2^-126 / 2 (exact); its inverse 2^127 is normal.
    """
    return _pow2(exp.clamp(min=-126)) * torch.where(exp < -126, 0.5, 1.0)


def mx_kernel(xb: torch.Tensor) -> torch.Tensor:
    """MXFP4 quantize-dequantize of float32 blocks (..., 32) -> float32 (the shared kernel)."""
    amax = xb.abs().amax(dim=-1, keepdim=True)
    exp = mx_scale_exponent(amax)
    q = round_to_e2m1(xb * _pow2(-exp)) * e8m0_value(exp)
    # NaN/Inf anywhere in a block poisons the whole block, as the E8M0 NaN scale does.
    return torch.where(_exp_bits(amax) == 0xFF, float("nan"), q)


# --------------------------------------------------------------------------- NVFP4
def nv_tensor_scale(amax: torch.Tensor) -> torch.Tensor:
    """Per-tensor float32 scale amax / (448 * 6), as torchao's per_tensor_amax_to_scale."""
    return amax / (E4M3_MAX * E2M1_MAX)


def nv_tensor_factors(amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, 1 / s, amax finite) from the tensor amax, with s = 1 where amax == 0 (0-d tensors).

    amax == 0 gives an all-zero result, a NaN/Inf amax a NaN scale (the whole tensor is NaN).
    A tensor so small that 1 / s overflows float32 (amax < 2688 * 2^-128, about 7.9e-36) is
    flushed to zero by `nv_element_factors`; the recipe's x * ((1/s)/b) would give 0 * inf = NaN.
    """
    s = nv_tensor_scale(amax)
    safe = torch.where(amax > 0, s, 1.0)
    return safe, 1.0 / safe, torch.isfinite(amax)


def nv_block_scale(block_amax: torch.Tensor, safe: torch.Tensor) -> torch.Tensor:
    """E4M3 block scale b = e4m3((amax_b / 6) / s) (no lower clamp, see the module docstring)."""
    return round_to_e4m3((block_amax / E2M1_MAX) / safe)


def nv_element_factors(
    b: torch.Tensor, safe: torch.Tensor, inv: torch.Tensor, finite: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block (multiplier into E2M1 units (1/s)/b, dequantization scale s*b).

    A block scale that rounds to 0, or a tensor whose 1/s overflowed, gets multiplier 0, so its
    elements come out as exactly 0; a non-finite tensor amax makes every scale NaN.
    """
    recip = torch.where((b > 0) & (inv < float("inf")), inv / b, 0.0)
    scale = torch.where(finite, safe * b, float("nan"))
    return recip, scale


def nv_block_factors(block_amax: torch.Tensor, amax: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-block (multiplier into E2M1 units, dequantization scale) for NVFP4: the three steps above."""
    safe, inv, finite = nv_tensor_factors(amax)
    return nv_element_factors(nv_block_scale(block_amax, safe), safe, inv, finite)


def nv_apply(xb: torch.Tensor, recip: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Round the blocks to E2M1 with the per-block factors and dequantize (float32)."""
    return round_to_e2m1(xb * recip) * scale


def nv_kernel(xb: torch.Tensor) -> torch.Tensor:
    """NVFP4 quantize-dequantize of float32 blocks (..., 16), per-tensor scale included."""
    block_amax = xb.abs().amax(dim=-1, keepdim=True)
    recip, scale = nv_block_factors(block_amax, block_amax.amax())
    return nv_apply(xb, recip, scale)


# --------------------------------------------------------------------------- eager reference
BLOCK_KERNELS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    Fp4Format.MXFP4.value: mx_kernel,
    Fp4Format.NVFP4.value: nv_kernel,
}


def blocks_of(x: torch.Tensor, block: int) -> torch.Tensor:
    """View x as (..., n_blocks, block), zero-padding a short last block (zeros never change an amax)."""
    pad = (-x.shape[-1]) % block
    if pad:
        x = torch.nn.functional.pad(x, (0, pad))
    return x.reshape(*x.shape[:-1], -1, block)


def eager_fake_quantize(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """Eager reference (no autograd): float32 blocks -> kernel -> original shape and dtype."""
    n = x.shape[-1]
    xb = blocks_of(x.float(), BLOCK_SIZES[fmt])
    q = BLOCK_KERNELS[fmt](xb)
    return q.reshape(*x.shape[:-1], -1)[..., :n].to(x.dtype)
