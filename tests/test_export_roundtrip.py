"""Export the best trial (verl and hydra) and hand it to the fork stand-in: it must read what the study recorded.

Two records: one written by a real `noisesweep run` (fake_verl as the trainer, so sigma_end and
the per-layer multipliers are the ones the runner recorded from the trial, and every trial's
noise was verified from the stand-in's [AQN] lines), and one built through the product's search
space without Ray (fast, with a non-uniform multiplier profile and a best trial that is not the
last one). Each is exported with `noisesweep export STUDY --format verl|hydra` and then read the
way the fork reads it (tests/fake_verl.py `Fork`: ppo_trainer.yaml's declared keys, the trainer's
forwarding to the rollout config, the rollout's reading of it, the noise code's module matching),
for the fork with the layer_sigma_config fix and for the fork as it is.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

import fake_verl
import faultlib
from objective.command.applied import AppliedNoiseCheck
from quant.noise_plan import NoisePlan
from sweep.export import load_verl_export

NOISE = "trainer.noise_injection"


def _record_by_run(tmp_path: Path) -> tuple[str, str]:
    url = f"sqlite:///{tmp_path / 'run.db'}"
    study = faultlib.write_study(tmp_path / "exp.yaml", faultlib.command_study("exp-run", trials=5, step_sleep=0.02))
    proc = faultlib.run_cli(["run", str(study), "--storage", url],
                            env=faultlib.clean_env(NOISESWEEP_RAY_DIR=str(tmp_path / "ray")), cwd=tmp_path, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return url, "exp-run"


def _record_by_space(tmp_path: Path) -> tuple[str, str]:
    url = f"sqlite:///{tmp_path / 'space.db'}"
    study = faultlib.write_study(tmp_path / "exp.yaml", faultlib.command_study("exp-space", trials=6))
    faultlib.make_contract_study(url, study, states=["complete", "pruned", "complete", "fail", "complete", "complete"])
    return url, "exp-space"


def _fork_reading_yaml(block: dict[str, Any], *, patched: bool) -> fake_verl.Fork:
    """The fork run with a ppo_trainer.yaml whose noise_injection block is the export."""
    return fake_verl.Fork({f"{NOISE}.{k}": v for k, v in block.items()}, patched=patched)


def _fork_reading_hydra(text: str, *, patched: bool) -> fake_verl.Fork:
    """The fork run with the exported overrides appended to its command line."""
    return fake_verl.Fork(fake_verl.parse_overrides(shlex.split(text), strict=True), patched=patched)


def _export(name: str, url: str, fmt: str, tmp_path: Path) -> Path:
    out = tmp_path / f"best.{fmt}"
    proc = faultlib.run_cli(["export", name, "--storage", url, "--format", fmt, "-o", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.mark.parametrize("how", [pytest.param("run", marks=pytest.mark.slow), "space"])
def test_exports_reach_the_forks_noise_code(how: str, tmp_path: Path):
    url, name = (_record_by_run if how == "run" else _record_by_space)(tmp_path)
    study = optuna.load_study(study_name=name, storage=url)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) >= 2
    best = max(complete, key=lambda t: (t.value, -t.number))
    if how == "run":  # every trial's noise was checked against the stand-in's [AQN] lines
        assert all(t.user_attrs["applied"]["verified"] is True for t in complete)
    recorded = best.user_attrs["multipliers"]
    assert len(recorded) == 28  # one per decoder layer of the Qwen2.5 profile
    if how == "space":
        assert len(set(recorded)) > 1
    plan = NoisePlan(sigma_start=best.params["sigma_start"], sigma_end=best.user_attrs["sigma_end"],
                     num_stages=best.params["num_stages"], multipliers=tuple(recorded))
    assert math.isclose(plan.sigma_end, best.params["sigma_start"] * best.params["sigma_ratio"], rel_tol=1e-12)

    verl_out = _export(name, url, "verl", tmp_path)
    block = load_verl_export(verl_out)
    hydra_text = _export(name, url, "hydra", tmp_path).read_text()
    noised = [i for i, m in enumerate(recorded) if m > 0]
    for fork in (_fork_reading_yaml(block, patched=True), _fork_reading_hydra(hydra_text, patched=True)):
        assert fork.enabled and fork.total_steps == 29  # 1 epoch x 29 batches: the fork's own T
        assert fork.sigma_trend == fake_verl.get_sigma_schedule(plan.sigma_start, plan.sigma_end, plan.num_stages)
        assert fork.sigma_trend[0] == best.params["sigma_start"]  # bit-exact through YAML and Hydra text
        assert fork.target_modules == [f"layers.{i}." for i in noised]
        assert fork.layer_types == [best.params.get("site", "rmsnorm")]
        if plan.uniform:
            assert fork.layer_sigma_config is None
        else:  # the rollout's dict, string keys as _parse_layer_sigma_config makes them
            assert fork.layer_sigma_config["enabled"] is True
            assert fork.layer_sigma_config["layer_multipliers"] == {str(i): m for i, m in enumerate(recorded)}
        # what the noise code then prints agrees with the study's plan, step by step
        check = AppliedNoiseCheck(plan)
        for step in range(21):
            for line in fork.apply_noise(step):
                assert check.feed(line) is None, line
        verdict, reason = check.finish()
        assert reason is None and verdict["verified"] is True and verdict["modules_noised"] == 2 * len(noised)

    # the fork as it is: schedule and zones arrive, per-layer multipliers never reach its rollout
    as_is = _fork_reading_hydra(hydra_text, patched=False)
    assert as_is.target_modules == [f"layers.{i}." for i in noised] and as_is.layer_sigma_config is None
    if not plan.uniform:
        lines = as_is.apply_noise(20)
        assert AppliedNoiseCheck(plan).feed(lines[0]) == "per-layer multipliers requested but the trainer applied uniform noise"


def test_best_report_and_dashboard_show_what_was_applied(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """The verdict of a real trial against the stand-in, as `best`, the report and the dashboard note show it."""
    import json

    from objective.command import run_command_trial
    from sweep.best import best_result
    from sweep.best_text import applied_text
    from sweep.cli import main
    from sweep.dashboard import note_text
    from sweep.record import open_record
    from sweep.report import summary_markdown
    from sweep.space import SearchSpace
    from sweep.study_loader import load_study

    study_path = faultlib.write_study(tmp_path / "exp.yaml", faultlib.command_study("exp-applied", trials=2, step_sleep=0))
    spec = load_study(study_path)
    space = SearchSpace.from_spec(spec)
    url = f"sqlite:///{tmp_path / 'applied.db'}"
    study = optuna.create_study(study_name=spec.name, storage=url, direction="maximize")
    study.set_user_attr("noisesweep_spec", spec.to_record())
    params = {"sigma_start": 0.01, "sigma_ratio": 0.01, "num_stages": 10, "zones": "all", "alpha": 1.0}
    plan = space.plan(params)
    result = run_command_trial(spec.objective.command, space.to_command_values(plan, seed=3))
    assert result.status == "complete" and result.applied["verified"] is True, result.reason
    study.add_trial(optuna.trial.create_trial(
        params=params, distributions=space.distributions, value=result.value,
        user_attrs={"sigma_end": plan.sigma_end, "multipliers": list(plan.multipliers), "seed": 3,
                    "applied": result.applied, "applied_verified": True}))

    line = applied_text(result.applied)
    assert line.startswith("verified from the trainer's [AQN] lines: rmsnorm noise on layers 0-27, 56 modules, "
                           "SRDD-guided per-layer multipliers, schedule over the trainer's 29 steps")
    assert main(["best", spec.name, "--storage", url]) == 0
    assert f"  applied: {line}" in capsys.readouterr().out
    assert main(["best", spec.name, "--storage", url, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["applied"]["verified"] is True and doc["applied"]["srdd_guided"] is True and doc["applied"]["text"] == line
    record = open_record(spec.name, url)
    assert f"Applied noise: {line}." in summary_markdown(record, best_result(record), {})
    assert f"Applied noise: {line}" in note_text(record)
