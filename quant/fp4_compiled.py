"""Fast path for fake quantization: the kernels of quant/fp4_kernels.py under torch.compile.

Why: fake quantization runs on every Linear at every forward; eagerly it is ~15 memory passes,
compiled it is one (MXFP4) or two (NVFP4: tensor amax first). Rules that keep it cheap:
  * compiled lazily on first use, with dynamic shapes: the input is flattened to 1-D (length a
    multiple of the block), so every layer shape shares one graph per (format, dtype);
  * Inductor's on-disk FX graph cache is on, so a second process loads instead of compiling;
  * NOISESWEEP_COMPILE=0 disables compilation; if compiling fails (no C compiler, ...) we warn
    once and use the eager reference for the rest of the process;
  * tensors below `MIN_NUMEL` elements stay eager (a guarded compiled call costs a fixed
    overhead that is not worth it there, see bench/quant_throughput.py).
The compiled code runs the very same kernel functions as the eager reference, and Inductor on
CPU neither contracts to FMA nor replaces division by reciprocal multiplication, so the results
are bit-identical (tests/test_formats.py checks it).
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable

import torch

from quant.format_names import Fp4Format
from quant.fp4_constants import BLOCK_SIZES, MX_BLOCK_SIZE, NV_BLOCK_SIZE
from quant.fp4_kernels import mx_kernel, nv_apply, nv_block_factors

MIN_NUMEL = 1 << 15  # below ATen's parallel grain size eager runs single-threaded; a compiled call
# always opens an OpenMP region, which on a busy 2-core machine can stall for a scheduler slice
ENV_VAR = "NOISESWEEP_COMPILE"

_lock = threading.Lock()
_compiled: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
_failed = False


def enabled() -> bool:
    """Compilation allowed (env var not 0/false/off) and not failed earlier in this process."""
    return not _failed and os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "off", "no")


def _flat_mx(flat: torch.Tensor) -> torch.Tensor:
    out = mx_kernel(flat.float().reshape(-1, MX_BLOCK_SIZE))
    return out.reshape(-1).to(flat.dtype)


def _flat_nv_factors(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    block_amax = flat.float().reshape(-1, NV_BLOCK_SIZE).abs().amax(dim=-1, keepdim=True)
    return nv_block_factors(block_amax, block_amax.amax())


def _flat_nv_apply(flat: torch.Tensor, recip: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    out = nv_apply(flat.float().reshape(-1, NV_BLOCK_SIZE), recip, scale)
    return out.reshape(-1).to(flat.dtype)


def _compile_format(fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """flat tensor -> fake-quantized flat tensor, built from compiled graphs.

    NVFP4 is two graphs on purpose: as one graph Inductor recomputes the per-block scale chain
    (4 scalar divisions, E4M3 rounding) inside the element loop; the graph boundary makes it a
    vectorized pass over the (16x smaller) block array instead (~20 % faster end to end).
    """
    if fmt == Fp4Format.MXFP4:
        return torch.compile(_flat_mx, dynamic=True, fullgraph=True)
    factors = torch.compile(_flat_nv_factors, dynamic=True, fullgraph=True)
    apply = torch.compile(_flat_nv_apply, dynamic=True, fullgraph=True)

    def nv(flat: torch.Tensor) -> torch.Tensor:
        recip, scale = factors(flat)
        return apply(flat, recip, scale)

    return nv


def _get(fmt: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """Build (once) the compiled function for `fmt`; Dynamo compiles on its first call."""
    with _lock:
        fn = _compiled.get(fmt)
        if fn is None:
            import torch._inductor.config as inductor_config

            inductor_config.fx_graph_cache = True  # reuse compiled kernels across processes
            fn = _compile_format(fmt)
            _compiled[fmt] = fn
        return fn


def _run(fmt: str, flat: torch.Tensor) -> torch.Tensor:
    return _get(fmt)(flat)


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
