"""verl's strict GSM8K reward: cases that distinguish strict from lenient scoring."""

from __future__ import annotations

import pytest

from objective.reward import extract_strict_answer, gsm8k_strict_score


@pytest.mark.parametrize(
    ("response", "truth", "expected"),
    [
        ("Janet has 16 eggs... so she makes #### 18", "18", 1.0),
        ("The total is #### 1,234", "1234", 1.0),  # commas stripped
        ("The total is #### 1,234", "1,234", 0.0),  # ...on the response side only
        ("#### -7", "-7", 1.0),  # negative numbers
        ("#### -7", "7", 0.0),
        ("first guess #### 5 then corrected #### 6", "6", 1.0),  # last match wins
        ("first guess #### 5 then corrected #### 6", "5", 0.0),
        ("#### 12.", "12", 0.0),  # trailing period kept: exact compare fails (verl behaviour)
        ("#### 12.", "12.", 1.0),
        ("#### 3.50", "3.5", 0.0),  # no numeric normalisation
        ("The answer is 18", "18", 0.0),  # no #### at all
        ("####18", "18", 0.0),  # the space after #### is required
        ("#### $18", "18", 0.0),  # regex needs a digit/sign right after the space
        ("", "0", 0.0),
        ("#### 0</s>", "0", 1.0),
    ],
)
def test_strict_cases(response: str, truth: str, expected: float) -> None:
    assert gsm8k_strict_score(response, truth) == expected


def test_dollar_inside_number_is_stripped() -> None:
    # `$` cannot start the match, but the rule strips it; verify extraction on a clean match.
    assert extract_strict_answer("#### 1,000,000") == "1000000"
    assert extract_strict_answer("no answer") is None


def test_answer_beyond_last_300_chars_is_ignored() -> None:
    early = "#### 42 " + "x" * 300
    assert len(early) > 300
    assert gsm8k_strict_score(early, "42") == 0.0
    # The same answer within the last 300 characters counts.
    late = "x" * 300 + " #### 42"
    assert gsm8k_strict_score(late, "42") == 1.0


def test_only_the_window_decides_which_match_is_last() -> None:
    resp = "#### 1 " + "y" * 295 + " #### 2"
    assert gsm8k_strict_score(resp, "2") == 1.0
    assert gsm8k_strict_score(resp, "1") == 0.0
