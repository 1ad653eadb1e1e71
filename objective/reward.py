"""verl's strict GSM8K reward, shared by the tiny task and the real GSM8K path.

Strict mode (verl utils/reward_score/gsm8k.py): only the last 300 characters of the response
are searched (long responses cannot hide an answer early), the LAST `#### <number>` match
counts, `,` and `$` are removed, and the result must equal the ground truth string exactly.
"""

from __future__ import annotations

import re

_CLIP_CHARS = 300
_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")


def extract_strict_answer(response: str) -> str | None:
    """The final answer by verl's strict rule, or None when there is no `#### <number>`."""
    matches = _STRICT.findall(response[-_CLIP_CHARS:])
    if not matches:
        return None
    return matches[-1].replace(",", "").replace("$", "")


def gsm8k_strict_score(response: str, ground_truth: str) -> float:
    """1.0 if the strict final answer equals ground_truth exactly, else 0.0."""
    answer = extract_strict_answer(response)
    return 1.0 if answer is not None and answer == ground_truth else 0.0
