"""Fast path for fake quantization: the kernels of quant/fp4_kernels.py under torch.compile.

Why: fake quantization runs on every Linear at every forward; eagerly it is ~15 memory passes,
compiled it is one (MXFP4) or two (NVFP4: the per-tensor amax needs every block before any
element can be rounded, so one pass computes the block scales, one rounds). Rules that keep it
cheap:
  * compiled lazily on first use, with dynamic shapes: the input is flattened to 1-D (length a
    multiple of the block), so every layer shape shares one graph per (format, dtype);
  * Inductor's on-disk FX graph cache is on, so a second process loads instead of compiling;
  * NOISESWEEP_COMPILE=0 disables compilation; if compiling fails (no C compiler, ...) we warn
    once and use the eager reference for the rest of the process;
  * tensors below `MIN_NUMEL` elements stay eager (a guarded compiled call costs a fixed
    overhead that is not worth it there, see bench/quant_throughput.py);
  * on AVX-512 machines some graphs are compiled with 256-bit vectors (`_options`).
The compiled code runs the very same kernel functions as the eager reference, and the options
pin Inductor's C++ flags to no FMA contraction and no unsafe math (so no division turns into a
reciprocal multiplication), so the results are bit-identical (tests/test_formats.py checks it).
"""

from __future__ import annotations

import functools
import os
import threading
import warnings
from collections.abc import Callable
from typing import Any

import torch

from quant.format_names import Fp4Format
from quant.fp4_constants import BLOCK_SIZES, MX_BLOCK_SIZE, NV_BLOCK_SIZE
from quant.fp4_kernels import (
    mx_kernel,
    nv_apply,
    nv_block_scale,
    nv_element_factors,
    nv_tensor_factors,
)

MIN_NUMEL = 1 << 15  # below ATen's parallel grain size eager runs single-threaded; a compiled call
# always opens an OpenMP region, which on a busy 2-core machine can stall for a scheduler slice
ENV_VAR = "NOISESWEEP_COMPILE"

_lock = threading.Lock()
_compiled: dict[tuple[str, torch.dtype, str], Callable[[torch.Tensor], torch.Tensor]] = {}
_failed = False


def enabled() -> bool:
    """Compilation allowed (env var not 0/false/off) and not failed earlier in this process."""
    return not _failed and os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "off", "no")


def _flat_mx(flat: torch.Tensor) -> torch.Tensor:
    out = mx_kernel(flat.float().reshape(-1, MX_BLOCK_SIZE))
    return out.reshape(-1).to(flat.dtype)


def _flat_nv_scales(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pass 1: E4M3 block scales (one per 16 values) and the per-tensor factors (0-d)."""
    block_amax = flat.float().reshape(-1, NV_BLOCK_SIZE).abs().amax(dim=-1, keepdim=True)
    safe, inv, finite = nv_tensor_factors(block_amax.amax())
    return nv_block_scale(block_amax, safe), safe, inv, finite


def _flat_nv_apply(
    flat: torch.Tensor, b: torch.Tensor, safe: torch.Tensor, inv: torch.Tensor, finite: torch.Tensor
) -> torch.Tensor:
    """Pass 2: round every block with its factors (two scalar ops per block, the rest per value)."""
    recip, scale = nv_element_factors(b, safe, inv, finite)
    out = nv_apply(flat.float().reshape(-1, NV_BLOCK_SIZE), recip, scale)
    return out.reshape(-1).to(flat.dtype)


InductorOptions = dict[str, str | int | bool | Callable[..., Any]]  # torch.compile(options=...)

# Bit-exactness must not depend on the environment (TORCHINDUCTOR_CPP_* variables can flip these).
_EXACT_MATH: InductorOptions = {"cpp.enable_unsafe_math_opt_flag": False, "cpp.enable_floating_point_contract_flag": "off"}
# NVFP4 graphs that ran faster with 256-bit than with 512-bit vectors on an AVX-512 CPU
# (Sapphire Rapids, one thread, CPU time): a 16-value block is then one bf16 vector instead of
# half of one, and the per-block reduction of the scale pass is one step shorter. MXFP4 (either
# dtype) and the fp32 rounding pass were as fast or faster at 512 bits and stay there.
_NARROW_SIMD = {
    ("nvfp4", torch.bfloat16, "scales"),
    ("nvfp4", torch.bfloat16, "apply"),
    ("nvfp4", torch.float32, "scales"),
}


@functools.cache
def _avx512_with_avx2() -> bool:
    """Inductor's default CPU vectors are 512 bits wide and 256-bit ones are available too."""
    from torch._inductor import cpu_vec_isa

    if cpu_vec_isa.pick_vec_isa().bit_width() != 512:
        return False
    return any(isa.bit_width() == 256 for isa in cpu_vec_isa.valid_vec_isa_list())


def _options(fmt: str, dtype: torch.dtype, device_type: str, graph: str) -> InductorOptions:
    """Inductor options of one graph: exact math always, 256-bit vectors where they measured faster."""
    opts: InductorOptions = dict(_EXACT_MATH)
    if device_type == "cpu" and (fmt, dtype, graph) in _NARROW_SIMD and _avx512_with_avx2():
        opts["cpp.simdlen"] = 256
    return opts


def _compile_format(fmt: str, dtype: torch.dtype, device_type: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """flat tensor -> fake-quantized flat tensor, built from compiled graphs.

    NVFP4 is two graphs on purpose: as one graph Inductor computes the per-block scale chain
    (3 scalar divisions, E4M3 rounding) once per block inside the element loop, which is slower
    than a vectorized pass over the (16x smaller) block array plus a second read of the input.
    """

    def options(graph: str) -> InductorOptions:
        return _options(fmt, dtype, device_type, graph)

    if fmt == Fp4Format.MXFP4:
        return torch.compile(_flat_mx, dynamic=True, fullgraph=True, options=options("apply"))
    scales = torch.compile(_flat_nv_scales, dynamic=True, fullgraph=True, options=options("scales"))
    apply = torch.compile(_flat_nv_apply, dynamic=True, fullgraph=True, options=options("apply"))

    def nv(flat: torch.Tensor) -> torch.Tensor:
        return apply(flat, *scales(flat))

    return nv


def _get(fmt: str, dtype: torch.dtype, device_type: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Build (once per format, dtype and device type) the compiled function; Dynamo compiles on its first call."""
    with _lock:
        key = (fmt, dtype, device_type)
        fn = _compiled.get(key)
        if fn is None:
            import torch._inductor.config as inductor_config

            inductor_config.fx_graph_cache = True  # reuse compiled kernels across processes
            fn = _compile_format(fmt, dtype, device_type)
            _compiled[key] = fn
        return fn


def _run(fmt: str, flat: torch.Tensor) -> torch.Tensor:
    return _get(fmt, flat.dtype, flat.device.type)(flat)


def quantize(x: torch.Tensor, fmt: str) -> torch.Tensor | None:
    """Compiled fake-quant of `x` along its last axis, or None when the caller should go eager."""
    global _failed
    if x.numel() < MIN_NUMEL or x.device.type not in ("cpu", "cuda") or not enabled():
        return None
    block = BLOCK_SIZES[fmt]
    n = x.shape[-1]
    pad = (-n) % block
    xc = x.detach().contiguous()  # one graph whether or not x requires grad
    if pad:
        xc = torch.nn.functional.pad(xc, (0, pad))
    try:
        with torch.no_grad():
            out = _run(fmt, xc.reshape(-1))
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: use eager
        _failed = True
        warnings.warn(
            f"noisesweep: torch.compile of the {fmt} fake-quant failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); using the slower eager path. "
            f"Set {ENV_VAR}=0 to skip compiling.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    out = out.reshape(xc.shape)
    return out[..., :n] if pad else out
