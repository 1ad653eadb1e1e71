"""Tasks: the embedded tiny arithmetic task and GSM8K from local files (verl's schema).

`load_task(task_cfg)` accepts a plain dict or any object with the attributes `name`,
`train_path`, `val_path`, `num_val`, `seed` (e.g. the trial config's pydantic `task` section).
"""

from __future__ import annotations

import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from objective.tasks import tiny_arith
from objective.tasks.example import Example

TASK_NAMES = ("tiny-arith", "gsm8k")
DEFAULT_NUM_VAL = 1000  # the final score's problems: one standard error ~1.4 points at 70 %


@dataclass
class Task:
    """A loaded task; `format_prompt` turns an Example into the text the model continues."""

    name: str
    data_source: str
    train: list[Example]
    val: list[Example]

    def format_prompt(self, example: Example, tokenizer: Any) -> str:
        """Chat template (generation prompt added) for GSM8K; the raw prompt for tiny-arith."""
        if self.name == "tiny-arith":
            return example.prompt
        messages = list(example.messages) if example.messages else [{"role": "user", "content": example.prompt}]
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("task gsm8k: the tokenizer has no chat template (model.path must be an instruct model)")
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def load_task(task_cfg: Any) -> Task:
    """Build the Task named by task_cfg.name (see module docstring for the accepted fields)."""
    name = _get(task_cfg, "name")
    seed = int(_get(task_cfg, "seed", 0) or 0)
    num_val = _get(task_cfg, "num_val")
    if num_val is not None and int(num_val) < 1:
        raise ValueError(f"task.num_val must be >= 1, got {num_val}")
    if name == "tiny-arith":
        return _load_tiny(DEFAULT_NUM_VAL if num_val is None else int(num_val), seed)
    if name == "gsm8k":
        from objective.tasks.gsm8k import load_gsm8k

        train_path = _get(task_cfg, "train_path")
        val_path = _get(task_cfg, "val_path")
        if not train_path or not val_path:
            raise ValueError("task gsm8k needs task.train_path and task.val_path (local parquet or jsonl files)")
        train = load_gsm8k(train_path)
        val = load_gsm8k(val_path)
        if num_val is not None:
            val = val[: int(num_val)]
        random.Random(seed).shuffle(train)
        source = val[0].data_source if val else "openai/gsm8k"
        return Task(name="gsm8k", data_source=source, train=train, val=val)
    raise ValueError(f"task.name must be one of {', '.join(TASK_NAMES)}, got {name!r}")


def _load_tiny(num_val: int, seed: int) -> Task:
    train_pool, held = tiny_arith.split()
    if num_val > len(held):
        raise ValueError(f"task.num_val for tiny-arith is at most {len(held)}, got {num_val}")
    src = tiny_arith.DATA_SOURCE
    train = [Example(p, str(a), src) for p, a in train_pool]
    random.Random(seed).shuffle(train)  # RL sampling order depends on the trial seed
    val = [Example(p, str(a), src) for p, a in held[:num_val]]  # fixed for every seed
    return Task(name="tiny-arith", data_source=src, train=train, val=val)


__all__ = ["DEFAULT_NUM_VAL", "TASK_NAMES", "Example", "Task", "load_task"]
