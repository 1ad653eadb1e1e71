"""Shared helpers for the trainer tests: a random tiny Qwen2 checkpoint and trial-config overrides.

Why here: test_trainer.py and test_vllm_engine.py both run trials on a seeded random Qwen2
saved as a local HF directory with the tiny tokenizer, and both build their trial configs as a
base dict plus per-test overrides; one copy keeps the two in step.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def save_random_qwen2(out: Path, **config: Any) -> Path:
    """Save a Qwen2 with `config` (vocab and special tokens from the tiny tokenizer), seed 0, to `out`."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from objective.tiny.tokenizer import build_tokenizer

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = Qwen2Config(**{**config, "vocab_size": len(tok)}, pad_token_id=tok.pad_token_id,
                      eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def with_overrides(cfg: dict[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`cfg` with `over` applied one level deep: a dict updates that section, anything else replaces it."""
    for key, value in over.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg
