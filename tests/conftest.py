"""Shared test set-up: quiet, deterministic, CPU-only, no hub access."""

from __future__ import annotations

import os

# Nothing in the suite may reach the Hugging Face hub; fail loudly if something tries.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# torch.compile of the fused fake-quant costs ~15-50 s per process and format; the suite checks
# the compiled path once in test_formats.py (which sets this flag itself) and runs eager elsewhere.
os.environ.setdefault("NOISESWEEP_COMPILE", "0")
