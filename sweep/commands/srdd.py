"""`noisesweep srdd`: scan a model's per-layer quantization error and write an SRDD profile.

Why: the sweep seeds its zones and noise multipliers from a profile; this command makes one for
the embedded tiny model (`--model tiny`) or any local Hugging Face checkpoint directory, offline.
Calibration text: tiny-arith problems with their answers for the tiny model; for a real model the
prompts of a local GSM8K file (`--data`, verl schema) or a small built-in set of word problems.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from quant.format_names import KNOWN_FORMATS

DEFAULT_BATCHES = 4
DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_LENGTH = 512
GSM8K_SUFFIX = 'Let\'s think step by step and output the final answer after "####".'

# Built-in calibration problems for real models when no --data is given (written for this tool).
WORD_PROBLEMS = (
    "A baker makes 24 muffins in the morning and 18 in the afternoon. She sells 35. How many are left?",
    "Tom has 3 boxes with 12 pencils each. He gives away 7 pencils. How many pencils does he have now?",
    "A train travels 60 km per hour for 2.5 hours. How far does it go?",
    "Mia saves $15 a week. How many weeks does she need to save $240?",
    "A garden is 8 m long and 5 m wide. A path of 1 m runs around it. What is the area of the path?",
    "There are 45 students. Two fifths of them walk to school and the rest take the bus. How many take the bus?",
    "A shirt costs $40 and is on sale for 25% off. What is the sale price?",
    "Sam reads 12 pages on Monday, twice as many on Tuesday, and 5 fewer than Tuesday on Wednesday. "
    "How many pages did he read in total?",
    "A tank holds 500 liters. It leaks 4 liters an hour. How much water is left after one day?",
    "Three friends share a bill of $87 equally and each adds a $3 tip. How much does each pay?",
    "A farmer has 17 cows and buys 3 times as many sheep. How many animals does he have?",
    "A recipe needs 3 eggs for 4 servings. How many eggs are needed for 10 servings?",
    "Lena runs 5 km on weekdays and 8 km on Saturdays. How far does she run in two weeks?",
    "A box of 36 chocolates is split among 4 children, then each child eats 2. How many are left in total?",
    "A car uses 6 liters of fuel per 100 km. How much fuel does a 350 km trip need?",
    "Ben is 4 years older than twice his sister's age. His sister is 7. How old is Ben?",
)


def register(subparsers: Any) -> None:
    """Add the `srdd` subcommand to the noisesweep CLI."""
    p = subparsers.add_parser(
        "srdd",
        help="scan per-layer quantization error and write an SRDD profile",
        description="Run a model on calibration text, measure per decoder layer the quantization error "
        "of its output activations, linear-layer inputs and weights, split the layers into zones, "
        "write the profile JSON and print a per-layer table.",
    )
    p.add_argument("--model", default=None, help="'tiny' (the embedded model) or a local Hugging Face model directory")
    p.add_argument("--format", default="mxfp4", help=f"quantization format: {', '.join(KNOWN_FORMATS)} (default mxfp4)")
    p.add_argument("--out", default=None, help="where to write the profile JSON (required)")
    p.add_argument("--batches", default=DEFAULT_BATCHES, help=f"calibration batches (default {DEFAULT_BATCHES})")
    p.add_argument("--batch-size", default=DEFAULT_BATCH_SIZE, help=f"sequences per batch (default {DEFAULT_BATCH_SIZE})")
    p.add_argument("--data", default=None, help="local GSM8K .jsonl/.parquet (verl schema) for real-model calibration")
    p.add_argument("--max-length", default=DEFAULT_MAX_LENGTH, help="truncate calibration sequences to this many tokens")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (cuda when available)")
    p.set_defaults(func=run)


def _positive_int(value: Any, flag: str) -> int:
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{flag} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{flag} must be a positive integer, got {value!r}")
    return n


def tiny_checkpoint_sha256() -> str:
    """Hash of the tiny model's weights: a shipped tiny prior records it, so a stale one is caught."""
    import hashlib

    from objective.tiny import TINY_CHECKPOINT_DIR

    return hashlib.sha256((TINY_CHECKPOINT_DIR / "model.safetensors").read_bytes()).hexdigest()


def _load_model(spec: str, device: str) -> tuple[Any, Any, str]:
    import torch

    if spec == "tiny":
        from objective.tiny import load_tiny

        model, tokenizer = load_tiny(dtype=torch.float32)
        name = "tiny"
    else:
        path = Path(spec).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"--model: no such model directory: {spec} (use 'tiny' or a local HF directory)")
        if not (path / "config.json").is_file():
            raise ValueError(f"--model: {spec} is not a Hugging Face model directory (no config.json)")
        from transformers import AutoModelForCausalLM, AutoTokenizer

        try:
            model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except OSError as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"--model: cannot load {spec}: {first}") from None
        name = str(spec)
    model.eval()
    return model.to(device), tokenizer, name


def _calibration_texts(spec: str, tokenizer: Any, data: str | None, needed: int) -> list[str]:
    """Texts in the form the model sees them in training/rollouts."""
    from objective.tasks import load_task

    if data is not None:
        task = load_task({"name": "gsm8k", "train_path": data, "val_path": data})
        examples = task.train[:needed]
        if getattr(tokenizer, "chat_template", None):
            return [task.format_prompt(ex, tokenizer) for ex in examples]
        return [ex.prompt for ex in examples]
    if spec == "tiny":
        task = load_task({"name": "tiny-arith", "seed": 0})
        return [f"{ex.prompt}#### {ex.ground_truth}" for ex in task.train[:needed]]
    prompts = [f"{q} {GSM8K_SUFFIX}" for q in WORD_PROBLEMS]
    if getattr(tokenizer, "chat_template", None):
        return [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True) for p in prompts]
    return prompts


def build_batches(
    texts: list[str], tokenizer: Any, *, batches: int, batch_size: int, max_length: int, add_eos: bool
) -> list[dict[str, Any]]:
    """Right-padded id batches with attention masks (padding never enters the metrics).

    Texts are reused cyclically when there are fewer than batches x batch_size of them.
    """
    import torch

    if not texts:
        raise ValueError("no calibration text")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    seqs = []
    for i in range(batches * batch_size):
        enc = tokenizer(texts[i % len(texts)], add_special_tokens=False, truncation=True, max_length=max_length)
        ids = list(enc["input_ids"])
        if add_eos and tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
        seqs.append(ids[:max_length] or [pad_id])
    out = []
    for b in range(batches):
        chunk = seqs[b * batch_size : (b + 1) * batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for r, s in enumerate(chunk):
            ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[r, : len(s)] = 1
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def run(args: argparse.Namespace) -> int:
    """Scan, write the profile, print the table. User errors raise ValueError/FileNotFoundError."""
    from quant.srdd import format_table, scan_model

    if not args.model:
        raise ValueError("--model is required: 'tiny' or a local Hugging Face model directory")
    if not args.out:
        raise ValueError("--out is required: the profile JSON to write")
    fmt = str(args.format).lower()
    if fmt not in KNOWN_FORMATS:
        raise ValueError(f"--format must be one of {', '.join(KNOWN_FORMATS)}, got {args.format!r}")
    batches = _positive_int(args.batches, "--batches")
    batch_size = _positive_int(args.batch_size, "--batch-size")
    max_length = _positive_int(args.max_length, "--max-length")
    out = Path(args.out).expanduser()
    if out.is_dir():
        raise ValueError(f"--out {args.out} is a directory; give a file path such as profile.json")
    if args.data is not None and not Path(args.data).expanduser().is_file():
        raise FileNotFoundError(f"--data: file not found: {args.data}")

    import torch

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise ValueError(f"--device must be cpu, cuda or auto, got {device!r}")
    elif str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device is available here (use cpu or auto)")

    model, tokenizer, name = _load_model(str(args.model), device)
    limit = getattr(model.config, "max_position_embeddings", None) or max_length
    max_length = min(max_length, int(limit))
    texts = _calibration_texts(str(args.model), tokenizer, args.data, batches * batch_size)
    data = build_batches(
        texts, tokenizer, batches=batches, batch_size=batch_size, max_length=max_length, add_eos=args.model == "tiny"
    )
    profile = scan_model(model, data, fmt, model_name=name)
    profile.source["calibration"] = (
        f"gsm8k prompts from {args.data}" if args.data else ("tiny-arith train problems with answers" if args.model == "tiny" else "built-in word problems")
    )
    if args.model == "tiny":
        profile.source["checkpoint_sha256"] = tiny_checkpoint_sha256()
    path = profile.save(out)
    print(format_table(profile))
    print(f"\nwrote {path}")
    return 0
