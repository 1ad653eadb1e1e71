"""GSM8K from local files in verl's preprocessed schema (parquet or jsonl).

Each row: `data_source` (e.g. "openai/gsm8k"), `prompt` (a list of chat messages
{"role", "content"}), `reward_model` ({"ground_truth": "72", ...}). This is what verl's
`examples/data_preprocess/gsm8k.py` writes, so users point the sweep at the files they already
train on. Nothing is downloaded; a missing file or a wrong schema is a one-line error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from objective.tasks.example import Example

DEFAULT_DATA_SOURCE = "openai/gsm8k"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text (byte {exc.start}); expected JSON lines") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read ({exc.strerror or type(exc).__name__})") from None
    rows = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: line {lineno} is not valid JSON ({exc.msg})") from None
        rows.append(row)
    return rows


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"{path}: reading parquet needs pyarrow (pip install pyarrow), or use a .jsonl file") from None
    try:
        return pq.read_table(path).to_pylist()
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise ValueError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None


def _to_text(x: Any) -> str:
    return x if isinstance(x, str) else str(x)


def _row_to_example(row: Any, path: Path, i: int) -> Example:
    if not isinstance(row, Mapping):
        raise ValueError(f"{path}: row {i} is not an object")
    for key in ("prompt", "reward_model"):
        if key not in row or row[key] is None:
            raise ValueError(f"{path}: row {i} is missing key '{key}' (verl GSM8K schema)")
    rm = row["reward_model"]
    if not isinstance(rm, Mapping) or rm.get("ground_truth") is None:
        raise ValueError(f"{path}: row {i} is missing key 'reward_model.ground_truth' (verl GSM8K schema)")
    prompt = row["prompt"]
    if isinstance(prompt, str):  # tolerate a plain-string prompt: one user message
        messages = ({"role": "user", "content": prompt},)
    else:
        try:
            messages = tuple({"role": _to_text(m["role"]), "content": _to_text(m["content"])} for m in prompt)
        except (TypeError, KeyError):
            raise ValueError(f"{path}: row {i} key 'prompt' must be a list of {{role, content}} messages") from None
        if not messages:
            raise ValueError(f"{path}: row {i} key 'prompt' is an empty message list")
    user = [m["content"] for m in messages if m["role"] == "user"]
    return Example(
        prompt=user[-1] if user else messages[-1]["content"],
        ground_truth=_to_text(rm["ground_truth"]).strip(),
        data_source=_to_text(row.get("data_source") or DEFAULT_DATA_SOURCE),
        messages=messages,
    )


def load_gsm8k(path: str | Path) -> list[Example]:
    """Read one split (.parquet, .jsonl or .json lines) into Examples; raises one-line errors."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"GSM8K file not found: {p}")
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        rows = _read_parquet(p)
    elif suffix in (".jsonl", ".json"):
        rows = _read_jsonl(p)
    else:
        raise ValueError(f"{p}: unsupported GSM8K file type '{suffix}' (use .parquet or .jsonl)")
    if not rows:
        raise ValueError(f"{p}: no rows")
    return [_row_to_example(r, p, i) for i, r in enumerate(rows)]
