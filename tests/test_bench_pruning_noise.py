"""bench/pruning_noise.py's replay: ASHA as sweep.schedulers builds it, over recorded trial curves."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

import pruning_noise as PN  # noqa: E402


def trial(config: str, seed: int, r5: float, r15: float, final: float) -> dict:
    return {"config": config, "seed": seed, "final": final, "rungs": {0: 0.3, 5: r5, 10: r5, 15: r15, 20: final}}


def test_replay_cuts_below_the_median_only_with_three_others() -> None:
    trials = [trial("a", 0, 0.50, 0.5, 0.5), trial("b", 0, 0.40, 0.4, 0.4), trial("c", 0, 0.45, 0.45, 0.45),
              trial("d", 0, 0.30, 0.3, 0.3), trial("e", 0, 0.60, 0.6, 0.6)]
    # the first three have < 3 others at the rung: never cut, even trial 1 which is below trial 0
    out = PN.replay(trials, [5, 15], [0, 1, 2, 3, 4], total=20)
    assert out["cut"] == {3}  # 0.30 < median(0.50, 0.40, 0.45); 0.60 is above the median of four
    assert out["steps"] == 4 * 20 + 5  # trial 3 ran to its first rung
    late = PN.replay(trials, [15], [0, 1, 2, 3, 4], total=20)
    assert late["cut"] == {3} and late["steps"] == 4 * 20 + 15
    assert PN.replay(trials, [], [0, 1, 2, 3, 4], total=20) == {"steps": 100, "cut": set()}


def test_rung_signal_and_rules_on_curves_whose_late_rung_ranks_the_final() -> None:
    # step 5 is noise (alternating), step 15 orders the trials like their final value
    trials = [trial(f"c{i % 4}", i, 0.4 + 0.1 * (i % 2), 0.3 + 0.01 * i, 0.3 + 0.01 * i) for i in range(16)]
    rows = {r["step"]: r for r in PN.rung_signal(trials, [5, 15])}
    assert rows[15]["rho_final"] == pytest.approx(1.0)
    assert abs(rows[5]["rho_final"]) < 0.3
    rules = {r["rule"]: r for r in PN.evaluate(trials, orders=50)}
    assert rules["none"]["saved"] == 0 and rules["none"]["cut"] == 0
    assert rules["asha 15"]["best_cut"] == 0  # the best trial is never below the median at a rung that ranks
    assert rules["asha 5,10,15"]["saved"] > rules["asha 15"]["saved"] > 0


def test_load_trials_needs_enough_complete_ones(tmp_path: Path) -> None:
    path = tmp_path / "signal.json"
    path.write_text(json.dumps({"trials": [{"status": "failed", "value": None, "history": [], "config": "x", "seed": 0}]}))
    with pytest.raises(SystemExit, match="need >= 8"):
        PN.load_trials(path)
