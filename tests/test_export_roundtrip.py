"""Export the best trial to the verl format and read it back: the values the study recorded.

Two records: one written by a real `noisesweep run` (fake_verl as the trainer, so sigma_end and
the per-layer multipliers are the ones the runner recorded from the trial), and one built
through the product's search space without Ray (fast, with a non-uniform multiplier profile
and a best trial that is not the last one). Each is exported with
`noisesweep export STUDY --format verl -o FILE` and loaded with sweep.export.load_verl_export.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import faultlib
from sweep.export import load_verl_export


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


@pytest.mark.parametrize("how", [pytest.param("run", marks=pytest.mark.slow), "space"])
def test_verl_export_round_trips(how: str, tmp_path: Path):
    url, name = (_record_by_run if how == "run" else _record_by_space)(tmp_path)
    study = optuna.load_study(study_name=name, storage=url)
    complete = [t for t in study.get_trials() if t.state == TrialState.COMPLETE]
    assert len(complete) >= 2
    best = max(complete, key=lambda t: (t.value, -t.number))
    out = tmp_path / "best-noise.yaml"

    proc = faultlib.run_cli(["export", name, "--storage", url, "--format", "verl", "-o", str(out)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert f"trial {best.number}" in proc.stderr
    block = load_verl_export(out)

    assert block["enabled"] is True
    assert block["sigma_start"] == best.params["sigma_start"]
    assert block["num_stages"] == best.params["num_stages"]
    assert math.isclose(block["sigma_end"], best.user_attrs["sigma_end"], rel_tol=0, abs_tol=0)
    assert math.isclose(block["sigma_end"], best.params["sigma_start"] * best.params["sigma_ratio"], rel_tol=1e-12)
    recorded = best.user_attrs["multipliers"]
    assert len(recorded) == 28  # one per decoder layer of the Qwen2.5 profile
    assert block["use_variable_sigma"] is True
    assert block["layer_multipliers"] == dict(enumerate(recorded))  # exact floats, all 28 layers
    if how == "space":
        assert len(set(recorded)) > 1
