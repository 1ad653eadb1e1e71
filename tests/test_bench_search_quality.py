"""bench/search_quality.py's pure parts: each arm's study is what its name says, and the verdict rule."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import _common as C  # noqa: E402
import search_quality as SQ  # noqa: E402


@pytest.mark.parametrize("arm", SQ.ARMS)
def test_each_arm_builds_the_study_it_names(arm: str) -> None:
    spec = C.tiny_study_spec([*SQ.TRIAL, *SQ.arm_overrides(arm, rep=1), f"name=sq-{arm}"])
    assert spec.trial_seed == 100 and spec.sampler.seed == 1
    assert spec.objective.config.steps.total == 10
    if arm == "noisesweep":  # the product's defaults: racing, pruning and the prior sampler
        assert spec.racing.enabled and spec.pruning.enabled and spec.sampler.kind == "prior"
        assert spec.seed_configs == "default"
    else:  # single runs, no pruning
        assert not spec.racing.enabled and not spec.pruning.enabled
        assert spec.sampler.kind == {"tpe": "tpe", "random": "random", "hand": "prior"}[arm]
        assert (spec.seed_configs == "default") == (arm == "hand")


def test_unknown_arm_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown arm"):
        SQ.arm_overrides("bohb", 0)


def test_summary_and_verdict() -> None:
    def run(arm: str, conf: float, steps: int) -> dict:
        return {"arm": arm, "confirmed_mean": conf, "trial_steps": steps, "cpu_hours": 0.1, "gap": 0.01}

    runs = [run("noisesweep", 0.72, 40), run("noisesweep", 0.70, 44), run("tpe", 0.70, 120), run("random", 0.69, 120)]
    summary = SQ.summarize(runs)
    assert summary["noisesweep"]["confirmed_mean"] == pytest.approx(0.71) and summary["noisesweep"]["reps"] == 2
    assert SQ.verdict(summary) == {"best_mean": True, "half_compute": True}
    summary["tpe"]["confirmed_mean"] = 0.75
    assert SQ.verdict(summary)["best_mean"] is False
    assert SQ.trial_steps([]) == 0
