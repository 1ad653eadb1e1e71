"""Numbers of the FP4 formats (E2M1 elements, E8M0 / E4M3 scales), without torch.

The lowest layer of the format code: quant/fp4_kernels.py does the arithmetic with these,
quant/fp4_compiled.py compiles those kernels, quant/formats.py is the entry point.
"""

from __future__ import annotations

from quant.format_names import Fp4Format

E2M1_MAX = 6.0  # largest E2M1 magnitude; values beyond saturate
E2M1_MAX_POW2 = 2  # floor(log2(E2M1_MAX)): MX scale exponent = floor(log2(amax)) - 2
MX_BLOCK_SIZE = 32  # OCP MX v1.0 block length
E8M0_MIN_EXP, E8M0_MAX_EXP = -127, 127  # E8M0 scale range (no zero, no sign)
NV_BLOCK_SIZE = 16  # NVFP4 block length
E4M3_MAX = 448.0  # largest float8_e4m3fn magnitude (NVFP4 block scales)
E4M3_MIN_NORMAL_EXP = -6  # below 2^-6 E4M3 is subnormal with a fixed step 2^-9
E4M3_MANTISSA_BITS = 3
F32_MANTISSA_BITS, F32_EXP_BIAS = 23, 127

BLOCK_SIZES: dict[str, int] = {Fp4Format.MXFP4.value: MX_BLOCK_SIZE, Fp4Format.NVFP4.value: NV_BLOCK_SIZE}
