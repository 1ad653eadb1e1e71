"""bench/signal.py (code in bench/signal_bench.py): statistics on known data, the design, resuming,
that the file does not shadow the standard library's `signal`, and one quick real run."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "bench") not in sys.path:
    sys.path.append(str(ROOT / "bench"))  # at the end: the stdlib's signal stays first

import signal_bench as SG  # noqa: E402

ZONES = ["all", "high", "high+medium"]


def _trial(config: str, seed: int, value: float, params: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"config": config, "seed": seed, "value": value, "status": "complete", "params": params,
            "wall_time_s": 1.0}


def test_bench_scripts_still_get_the_standard_signal_module() -> None:
    """Run like any bench script (bench/ first on sys.path): `import signal` must be the real one."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import signal, subprocess; "
            "print(int(signal.SIGTERM), signal.getsignal(signal.SIGINT) is not None, "
            "subprocess.run([sys.executable, '-c', 'pass']).returncode)")
    out = subprocess.run([sys.executable, "-c", code, str(ROOT / "bench")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["15", "True", "0"]


def test_per_config_stats_pooled_sd_and_paired_differences() -> None:
    trials = [_trial("no-noise", s, v) for s, v in zip((1, 2, 3), (0.60, 0.62, 0.64))]
    trials += [_trial("a", s, v) for s, v in zip((1, 2, 3), (0.61, 0.64, 0.64))]
    trials += [_trial("random-0", 1, 0.9, {"sigma_start": 0.1})]  # random configs stay out of the table
    rows = {r["config"]: r for r in SG.per_config(trials)}
    assert set(rows) == {"no-noise", "a"}
    base = rows["no-noise"]
    assert base["n"] == 3 and base["mean"] == pytest.approx(62.0) and base["sd"] == pytest.approx(2.0)
    lo, hi = base["ci95"]
    assert lo == pytest.approx(62.0 - 4.302653 * 2.0 / math.sqrt(3), abs=1e-4) and hi > 62.0
    assert rows["a"]["paired_diff"] == pytest.approx(1.0)  # diffs +1, +2, 0
    assert rows["a"]["paired_sd"] == pytest.approx(1.0)
    assert SG.pooled_sd(list(rows.values())) == pytest.approx(math.sqrt((2 * 4.0 + 2 * rows["a"]["sd"] ** 2) / 4))
    assert SG.binomial_sd(70.0, 1000) == pytest.approx(100 * math.sqrt(0.21 / 1000))


def _params(rng: random.Random) -> dict[str, Any]:
    return {"sigma_start": 10 ** rng.uniform(-2.7, -0.7), "sigma_ratio": 10 ** rng.uniform(-3, 0),
            "num_stages": rng.randint(3, 12), "zones": rng.choice(ZONES), "alpha": rng.uniform(0, 3)}


def test_gp_loo_r2_finds_a_real_surface_and_not_pure_noise() -> None:
    rng = random.Random(0)
    pts = [_params(rng) for _ in range(30)]

    def surface(p: dict[str, Any]) -> float:  # a peak in log sigma_start, like the seeds' sweet spot
        return 0.70 - 0.05 * (math.log10(p["sigma_start"]) + 1.5) ** 2

    smooth = [_trial(f"random-{i}", 1, surface(p) + rng.gauss(0, 0.002), p) for i, p in enumerate(pts)]
    noise = [_trial(f"random-{i}", 1, 0.7 + rng.gauss(0, 0.02), p) for i, p in enumerate(pts)]
    good, bad = SG.loo_r2(smooth, ZONES), SG.loo_r2(noise, ZONES)
    assert good["n"] == 30 and good["loo_r2"] > 0.8
    assert bad["loo_r2"] < 0.3
    no_space = [_trial("no-noise", s, 0.6) for s in range(10)]  # outside the search space: not fitted
    assert SG.loo_r2(no_space, ZONES) == {"n": 0, "loo_r2": None}


def _space() -> Any:
    from sweep.space import SearchSpace

    spec = SG.C.tiny_study_spec()
    return SearchSpace.from_spec(spec)


def test_design_spans_the_named_configs_on_shared_seeds_plus_random_ones() -> None:
    space = _space()
    plan = SG.design(3, 4, space)
    named = [p for p in plan if not p["config"].startswith("random-")]
    assert len(named) == 3 * len(SG.CONFIGS)
    assert {p["seed"] for p in named} == {1, 2, 3}
    worst = next(p for p in named if p["config"] == "worst-zone-alpha1")
    assert worst["params"]["zones"] == space.zone_rank[0] and worst["params"]["alpha"] == 1.0
    rnd = [p for p in plan if p["config"].startswith("random-")]
    assert len(rnd) == 4 and len({json.dumps(p["params"], sort_keys=True) for p in rnd}) == 4
    assert rnd == [p for p in SG.design(3, 4, space) if p["config"].startswith("random-")]  # reproducible
    cfg = SG.trial_config(space, None, seed=2)
    assert not cfg.noise.enabled and cfg.seed == 2
    cfg = SG.trial_config(space, named[3]["params"], seed=2)
    assert cfg.noise.enabled and len(cfg.noise.layer_multipliers) == space.num_layers


def test_run_design_saves_each_trial_and_resumes(tmp_path: Path) -> None:
    space = _space()
    plan = SG.design(2, 1, space, quick=True)
    ran: list[int] = []

    def fake_run(cfg: Any) -> Any:  # behaves like run_trial's TrialResult for these fields
        ran.append(cfg.seed)
        v = 0.5 + 0.01 * cfg.seed
        metric = space.spec.metric
        return SimpleNamespace(status="complete", value=v, reason=None,
                               history=[{"step": 0, "metrics": {metric: 0.4}}, {"step": 20, "metrics": {metric: v}}])

    out = tmp_path / "raw.json"
    settings = {"quick": True}
    first = SG.run_design(plan[:3], space, out, settings, run=fake_run, log=lambda _m: None)
    assert len(first) == 3 and json.loads(out.read_text())["trials"] == first
    both = SG.run_design(plan, space, out, settings, run=fake_run, log=lambda _m: None)
    assert len(ran) == len(plan)  # the first three were not run again
    assert [t["history"][-1]["acc"] for t in both] == [t["value"] for t in both]
    SG.run_design(plan, space, out, {"quick": False}, run=fake_run, log=lambda _m: None)
    assert len(ran) == 2 * len(plan)  # other settings: nothing reused


@pytest.mark.slow
def test_quick_mode_runs_real_trials_and_prints_the_tables(tmp_path: Path) -> None:
    out, summary = tmp_path / "raw.json", tmp_path / "summary.json"
    env = {**os.environ, "NOISESWEEP_COMPILE": "0", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "signal.py"), "--quick", "--out", str(out),
                           "--json", str(summary)], capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pooled seed sd of one trial" in proc.stdout and "GP surrogate LOO R^2" in proc.stdout
    raw = json.loads(out.read_text())["trials"]
    assert len(raw) == 3 * 2 + 2 and all(t["status"] == "complete" for t in raw)
    data = json.loads(summary.read_text())
    assert {r["config"] for r in data["configs"]} == set(SG.QUICK_CONFIGS)
