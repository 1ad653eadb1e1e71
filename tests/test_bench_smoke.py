"""The bench scripts' pure parts: ratios, incumbent traces, savings, table rows. No timed assertions."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import _common as C  # noqa: E402
import pruning_savings as PS  # noqa: E402
import run_all as RA  # noqa: E402
import sample_efficiency as SE  # noqa: E402
import scaling as SC  # noqa: E402
import sweep_overhead as SO  # noqa: E402


def test_render_table_escapes_pipes_and_checks_width() -> None:
    text = C.render_table(["a", "b"], [[1.23456, None], ["x|y", True]])
    lines = text.splitlines()
    assert lines[0] == "| a | b |"
    assert lines[2] == "| 1.23 | n/a |"
    assert lines[3] == "| x\\|y | yes |"
    with pytest.raises(ValueError):
        C.render_table(["a", "b"], [[1]])


def test_interleaved_runs_round_robin() -> None:
    order: list[str] = []
    times = C.interleaved({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, reps=3, warmup=1)
    assert order == ["a", "b"] * 4
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    with pytest.raises(ValueError):
        C.interleaved({"a": lambda: None}, reps=0)


def test_ratio_and_median() -> None:
    assert C.ratio(3.0, 2.0) == 1.5
    assert C.ratio(1.0, 0.0) is None and C.ratio(None, 1.0) is None
    assert C.median([3.0, 1.0, 2.0]) == 2.0
    with pytest.raises(ValueError):
        C.median([])


def test_overhead_is_difference_of_medians_per_trial() -> None:
    res = SO.overhead([10.0, 12.0, 11.0], [30.0, 50.0, 31.0], trials=10)
    assert res["plain_s"] == 11.0 and res["sweep_s"] == 31.0
    assert res["extra_per_trial_s"] == pytest.approx(2.0)
    assert res["ratio"] == pytest.approx(31 / 11)
    with pytest.raises(ValueError):
        SO.overhead([1.0], [1.0], trials=0)


def test_pruning_trial_steps_and_savings() -> None:
    fin = SimpleNamespace(is_finished=lambda: True)
    running = SimpleNamespace(is_finished=lambda: False)
    trials = [SimpleNamespace(user_attrs={"last_step": 20}, state=fin),
              SimpleNamespace(user_attrs={"last_step": 5}, state=fin),
              SimpleNamespace(user_attrs={"last_step": 10}, state=running),  # not counted
              SimpleNamespace(user_attrs={}, state=fin)]
    assert PS.trial_steps(trials) == 25
    assert PS.savings(60, 100) == pytest.approx(0.4)
    assert PS.savings(1, 0) is None
    a = {"confirmed_mean": 0.9, "ci_low": 0.85, "ci_high": 0.95}
    assert PS.within_noise(a, {"confirmed_mean": 0.93, "ci_low": 0.9, "ci_high": 0.96}) is True
    assert PS.within_noise(a, {"confirmed_mean": 0.5, "ci_low": 0.45, "ci_high": 0.55}) is False
    assert PS.within_noise(a, {"confirmed_mean": 0.9, "ci_low": None, "ci_high": None}) is None


def test_incumbent_trace_follows_observed_but_reports_true() -> None:
    # trial 2 looks best by luck (observed 95, true 80); the trace keeps its true value
    trace = SE.incumbent_trace([90, 95, 94], [90, 80, 93])
    assert trace == [90, 80, 80]
    assert SE.trials_to_within(trace, best=91.0) == 1
    assert SE.trials_to_within([80, 85, 91.5], best=92.0) == 3
    assert SE.trials_to_within([80, 85], best=92.0) is None
    with pytest.raises(ValueError):
        SE.incumbent_trace([1.0], [1.0, 2.0])


def test_summarize_censors_misses_at_budget_plus_one() -> None:
    s = SE.summarize({"a": [1, None, 3], "b": [None, None, 2]}, {"a": 10, "b": 8})
    assert s["a"]["median"] == 3 and not s["a"]["censored"] and s["a"]["reached"] == 2
    assert s["b"]["median"] == 9 and s["b"]["censored"]


def test_synthetic_surface_matches_the_documented_facts() -> None:
    f = SE.synthetic_surface(alpha_high=10.0)
    base = {"sigma_ratio": 0.01, "num_stages": 9, "zones": "all", "alpha": 0.0}
    at = {s: f({**base, "sigma_start": s}) for s in (0.002, 0.01, 0.05, 0.2)}
    # DOMAIN.md: 0.01 -> 92.3, 0.05 -> 92.7, 0.2 -> 87.0, no noise ~88
    assert at[0.01] == pytest.approx(92.3, abs=0.3)
    assert at[0.05] == pytest.approx(92.7, abs=0.3)
    assert at[0.2] == pytest.approx(87.0, abs=0.3)
    assert at[0.05] > at[0.01] > at[0.2]
    assert f({**base, "sigma_start": 0.025, "sigma_ratio": 1.0}) < f({**base, "sigma_start": 0.025})


def test_fit_measured_recovers_a_quadratic_and_reports_replicate_noise() -> None:
    zones = ["all", "high", "high+medium"]
    design = []
    for i in range(16):
        s = 10 ** (-2.7 + 2.0 * i / 15)
        p = {"sigma_start": s, "sigma_ratio": 0.01, "num_stages": 3 + i % 10, "zones": zones[i % 3], "alpha": (i % 5) / 2}
        design.append({"params": p, "value": (90 - 3 * (math.log10(s) + 1.6) ** 2) / 100})
    design.append({"params": design[0]["params"], "value": design[0]["value"] + 0.005})  # replicate, 0.5 point apart
    surface, info = SE.fit_measured(design, zones)
    assert info["loo_r2"] > 0.9
    assert info["noise_from"] == "replicates" and info["noise_sd"] == pytest.approx(0.5 / math.sqrt(2), rel=1e-6)
    peak = {"sigma_start": 10 ** -1.6, "sigma_ratio": 0.01, "num_stages": 6, "zones": "all", "alpha": 1.0}
    edge = {**peak, "sigma_start": 0.2}
    assert surface(peak) > surface(edge) + 2  # truth: 90.0 vs 87.6
    with pytest.raises(ValueError):
        SE.fit_measured(design[:3], zones)


def test_hand_made_configs_are_eight_and_inside_the_tiny_space() -> None:
    from sweep.space import SearchSpace

    space = SearchSpace.from_spec(C.tiny_study_spec())
    assert len(SE.HAND_MADE) == 8 and len({n for n, _ in SE.HAND_MADE}) == 8
    seeds = dict(space.seed_configs())
    for name, params in SE.HAND_MADE:
        for k, v in params.items():
            d = space.distributions[k]
            assert v in d.choices if hasattr(d, "choices") else d.low <= v <= d.high, (name, k, v)
        if name in seeds:
            assert seeds[name] == params  # the five in sweep.study are the same configs


def test_scaling_relative() -> None:
    assert SC.relative({2: 1.0, 8: 4.0, 16: None}, 8) == {2: 0.25, 8: 1.0, 16: None}
    with pytest.raises(ValueError):
        SC.relative({2: 1.0}, 8)


def test_run_all_rows_mark_targets_and_failures() -> None:
    ok = {"data": {"extra_per_trial_s": 0.4, "sweep_per_trial_s": 1.0, "plain_per_trial_s": 0.6, "trials": 20,
                   "reps": 3, "ray_start_s": 9.0, "met": True}, "error": None}
    (row,) = RA.rows_for("sweep_overhead", ok, quick=False)
    assert row[4] == "yes" and "0.40 s extra" in row[3]
    miss = {**ok, "data": {**ok["data"], "extra_per_trial_s": 3.0, "met": False}}
    assert RA.rows_for("sweep_overhead", miss, quick=False)[0][4] == "**no**"
    failed = {"data": None, "error": "exit 1: boom"}
    (frow,) = RA.rows_for("trial_time", failed, quick=False)
    assert "not measured (exit 1: boom)" in frow[3]
    quant = {"data": {"rows": [{"format": "mxfp4", "dtype": "fp32", "size": 64, "fused_over_clone": 0.6,
                                "fused_gbps": 6.0, "clone_gbps": 10.0, "fused_speedup_vs_torchao": 8.0}]}, "error": None}
    clone_row, ao_row = RA.rows_for("quant_throughput", quant, quick=False)
    assert clone_row[4] == "yes" and "60 % of clone" in clone_row[3]
    assert ao_row[4] == "**no**" and ao_row[3] == "8.0x"


def test_run_all_keeps_the_sections_it_does_not_generate() -> None:
    old = ("# noisesweep benchmarks\n\nGenerated ...\n\n| a | b |\n\n## Signal (bench/signal.py)\n\nseed sd 3.0\n\n"
           "## Plots\n\n![x](x.png)\n\n## Details (each script's own output)\n\n### trial_time\n\nold table\n\n"
           "## Load (bench/load.py)\n\n| storage | trials/s |\n")
    kept = RA.kept_sections(old)
    assert kept.startswith("## Signal (bench/signal.py)") and "seed sd 3.0" in kept
    assert "## Load (bench/load.py)" in kept and "| storage | trials/s |" in kept
    assert "Plots" not in kept and "old table" not in kept and "Generated" not in kept
    assert RA.kept_sections("# only a generated header\n\n| a |\n") == ""
