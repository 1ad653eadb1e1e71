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
    if arm in SQ.NOISESWEEP_ARMS:  # the product's defaults, one knob changed in the variants
        assert spec.racing.enabled and spec.seed_configs == "default"
        assert spec.pruning.enabled == (arm != "ns-noprune")
        assert spec.sampler.kind == ("prior" if arm == "ns-tpe" else "gp-prior")  # gp-prior: the default
    elif arm in SQ.SAMPLER_ARMS:  # the sampler comparison: no hand configs, pruning on
        assert spec.pruning.enabled and spec.seed_configs == []
        assert spec.racing.enabled == (arm != "ns-norace-open")
        assert spec.sampler.kind == ("gp-prior" if arm in ("ns-open", "ns-gp-open") else "prior")
    else:  # single runs, no pruning
        assert not spec.racing.enabled and not spec.pruning.enabled
        assert spec.sampler.kind == {"tpe": "tpe", "random": "random", "hand": "gp-prior"}[arm]
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


def test_paired_comparison_matches_repetitions() -> None:
    def run(arm: str, rep: int, conf: float | None, steps: int) -> dict:
        return {"arm": arm, "rep": rep, "confirmed_mean": conf, "trial_steps": steps}

    runs = [run("noisesweep", 0, 0.50, 60), run("ns-gp", 0, 0.52, 60), run("noisesweep", 1, 0.48, 40),
            run("ns-gp", 1, 0.47, 80), run("ns-gp", 2, 0.60, 10), run("noisesweep", 3, None, 10), run("ns-gp", 3, 0.9, 10)]
    p = SQ.paired(runs, "noisesweep", "ns-gp")
    assert p is not None and p["reps"] == 2  # rep 2 has no partner, rep 3's partner has no confirmed mean
    assert p["diffs"] == pytest.approx([0.02, -0.01])
    assert p["mean_diff"] == pytest.approx(0.005) and p["ci_low"] < 0 < p["ci_high"]
    assert p["steps_ratio"] == pytest.approx(140 / 100)
    assert SQ.paired(runs, "noisesweep", "tpe") is None
    # noisesweep's own variants are not the baselines it must beat
    summary = SQ.summarize([{**r, "cpu_hours": 0.1, "gap": 0.0} for r in runs if r["confirmed_mean"] is not None])
    assert set(summary) == {"noisesweep", "ns-gp"}
    assert SQ.verdict(summary) == {"best_mean": None, "half_compute": None}
