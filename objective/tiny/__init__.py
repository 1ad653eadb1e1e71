"""The embedded tiny default: a small Qwen2 model + character tokenizer shipped in the repo.

The checkpoint directory is a normal Hugging Face directory, so `load_tiny` uses exactly the
offline loading calls of the real path (`local_files_only=True`): nothing is downloaded.
It is rebuilt deterministically by `python -m objective.tiny.pretrain --out DIR`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

TINY_CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoint"


def load_tiny(dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    """Load the shipped tiny checkpoint and its tokenizer (offline); the model is in eval mode."""
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

    if not (TINY_CHECKPOINT_DIR / "config.json").is_file():
        raise FileNotFoundError(
            f"tiny checkpoint missing at {TINY_CHECKPOINT_DIR}; rebuild it with "
            "`python -m objective.tiny.pretrain --out objective/tiny/checkpoint`"
        )
    model = AutoModelForCausalLM.from_pretrained(TINY_CHECKPOINT_DIR, local_files_only=True, dtype=dtype)
    # Not AutoTokenizer: transformers 5 maps model_type qwen2 to Qwen2Tokenizer, whose byte-level
    # pre-tokenizer replaces our character one and drops spaces ("#### 95" -> "####95").
    tokenizer = PreTrainedTokenizerFast.from_pretrained(TINY_CHECKPOINT_DIR, local_files_only=True)
    model.eval()
    return model, tokenizer


__all__ = ["TINY_CHECKPOINT_DIR", "load_tiny"]
