"""The embedded default task: short integer arithmetic answered in GSM8K's format.

`37+58=` is answered `#### 95` (then EOS), so the same strict GSM8K reward scores it.
The problem space (a+b and a-b where one operand is 0..199 and the other 0..9, either order;
a*b for a, b in 0..12: 7,969 problems) is large enough that the model must generalise, not
memorise: a fixed held-out pool of 1,241 problems (chosen by a hash of the problem text,
independent of any seed) is never used for pretraining or RL, and validation draws from it.
Why this size: one trial's final score is read on >= 1,000 held-out problems, so that one
binomial standard error (~1.4 points at 70 %) stays below the differences a sweep must see.
One single-digit operand keeps it learnable by a 1.6M-parameter model in CPU minutes (two
two-digit operands needed far more steps than the budget allows).
"""

from __future__ import annotations

import hashlib
import random

DATA_SOURCE = "tiny-arith"
MAX_OPERAND = 199  # the multi-digit operand of a+b / a-b runs over 0..MAX_OPERAND
HELD_OUT_PERCENT = 15  # 1,241 problems held out; validation uses the first `num_val` of them
VAL_ORDER_SEED = 20261122  # fixed, so every trial of a sweep validates on the same problems


def _problems() -> list[tuple[str, int]]:
    """Every problem in a fixed order, as (prompt, answer)."""
    out: list[tuple[str, int]] = []
    pairs = [(a, b) for a in range(MAX_OPERAND + 1) for b in range(10)]
    pairs += [(b, a) for a in range(10, MAX_OPERAND + 1) for b in range(10)]  # one-digit operand first
    for a, b in pairs:
        out.append((f"{a}+{b}=", a + b))
        out.append((f"{a}-{b}=", a - b))
    for a in range(13):
        for b in range(13):
            out.append((f"{a}*{b}=", a * b))
    return out


def _is_held_out(prompt: str) -> bool:
    """Stable across Python versions and processes (unlike hash())."""
    digest = hashlib.sha256(prompt.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < HELD_OUT_PERCENT


def format_answer(answer: int) -> str:
    """The target response (without EOS): GSM8K's final-answer line."""
    return f"#### {answer}"


def split() -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(train pool, held-out pool), both in a fixed deterministic order."""
    train: list[tuple[str, int]] = []
    held: list[tuple[str, int]] = []
    for p in _problems():
        (held if _is_held_out(p[0]) else train).append(p)
    random.Random(VAL_ORDER_SEED).shuffle(held)
    return train, held
