"""The FP4 format names, in a module without torch.

Why: `noisesweep srdd --help` lists them, and building the CLI parser must not import torch
(seconds of start-up); quant.formats re-exports this tuple, so there is one definition.
"""

from __future__ import annotations

from enum import Enum


class Fp4Format(str, Enum):
    """The block formats: E2M1 elements with MX (E8M0 per 32) or NV (E4M3 per 16 + fp32) scales.

    A ``str`` subclass, so a member equals (and hashes like) its name: study files and call
    sites keep passing plain strings.
    """

    MXFP4 = "mxfp4"
    NVFP4 = "nvfp4"


KNOWN_FORMATS: tuple[str, ...] = tuple(f.value for f in Fp4Format)


def check_format(fmt: object) -> Fp4Format:
    """The member named `fmt`, or the one-line ValueError every quant entry point raises."""
    if isinstance(fmt, str) and fmt in KNOWN_FORMATS:
        return Fp4Format(fmt)
    raise ValueError(f"unknown quantization format {fmt!r}; known formats: {', '.join(KNOWN_FORMATS)}")
