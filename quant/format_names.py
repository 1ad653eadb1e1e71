"""The FP4 format names, in a module without torch.

Why: `noisesweep srdd --help` lists them, and building the CLI parser must not import torch
(seconds of start-up); quant.formats re-exports this tuple, so there is one definition.
"""

from __future__ import annotations

KNOWN_FORMATS = ("mxfp4", "nvfp4")
