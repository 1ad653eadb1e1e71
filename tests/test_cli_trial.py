"""`noisesweep trial`: one tiny trial end to end, JSON on stdout, progress on stderr."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from test_study import STUDIES, tiny_profile, tiny_study_dir, write_study  # noqa: F401 - fixture re-export

from sweep.cli import main
from sweep.trainer_config_doc import TRAINER_CONFIG_MARKER

TESTS = Path(__file__).resolve().parent
# 2 steps, 8 validation problems, 2 prompts x 2 samples: seconds, not minutes.
SMALL = ["steps.total=2", "steps.val_at=[0,2]", "task.num_val=8", "algo.prompts_per_step=2",
         "algo.samples_per_prompt=2", "threads=1", "timeout_s=120"]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The shipped tiny checkpoint when built, else a randomly initialised tiny Qwen2 (same shape)."""
    from objective.tiny import TINY_CHECKPOINT_DIR

    if (TINY_CHECKPOINT_DIR / "config.json").is_file():
        return "tiny"
    from objective.tiny.pretrain import build_model
    from objective.tiny.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("tiny-random")
    tok = build_tokenizer()
    build_model(tok, 0).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def _sets(model_path: str) -> list[str]:
    return [a for s in [*SMALL, f"model.path={model_path}"] for a in ("--set", s)]


def test_trial_runs_a_tiny_trial_and_prints_json(tmp_path: Path, tiny_profile: Path, model_path: str,  # noqa: F811
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    study = tiny_study_dir(tmp_path, tiny_profile)
    params = {"sigma_start": 0.02, "sigma_end": 0.002, "num_stages": 4, "zones": "all", "alpha": 1.0}
    code = main(["trial", str(study), *_sets(model_path), "--params", json.dumps(params), "--seed", "3"])
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert code == (0 if result["status"] == "complete" else 1)
    assert result["status"] == "complete", result["reason"]
    assert result["seed"] == 3 and result["params"]["sigma_start"] == 0.02
    assert result["metric"] == "val-core/tiny-arith/acc/mean@1"
    assert [h["step"] for h in result["history"]] == [0, 2]
    assert result["step"] == 2 and 0.0 <= result["value"] <= 1.0
    assert result["value"] == result["history"][-1]["metrics"][result["metric"]]
    assert result["config"]["noise"]["sigma_end"] == pytest.approx(0.002)
    assert len(result["config"]["noise"]["layer_multipliers"]) == 8
    assert result["applied"], "the applied multipliers/schedule must be reported"
    assert "step 0:" in err and "step 2:" in err


def test_trial_reruns_an_exported_trainer_config(tmp_path: Path, tiny_profile: Path, model_path: str,  # noqa: F811
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from objective.config import TrialConfig
    from sweep.trainer_config_doc import trainer_config_document

    cfg = TrialConfig.model_validate({"noise": {"enabled": True, "sigma_start": 0.01, "sigma_end": 0.001,
                                                "num_stages": 3}})
    path = tmp_path / "exported.yaml"
    path.write_text(yaml.safe_dump(trainer_config_document(cfg, source={"study": "x", "trial": 1})))
    assert TRAINER_CONFIG_MARKER in path.read_text()
    code = main(["trial", str(path), *_sets(model_path), "--set", "steps.total=1", "--set", "steps.val_at=[1]"])
    result = json.loads(capsys.readouterr().out)
    assert code == 0 and result["status"] == "complete"
    assert result["config"]["noise"]["sigma_start"] == 0.01 and result["config"]["steps"]["total"] == 1
    assert [h["step"] for h in result["history"]] == [1]


@pytest.mark.skipif(not (TESTS / "fake_verl.py").is_file(), reason="tests/fake_verl.py not present")
def test_trial_runs_a_command_objective(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    prior = STUDIES / "priors" / "qwen2.5-1.5b-mxfp4.json"
    (tmp_path / "priors").mkdir()
    (tmp_path / "priors" / prior.name).write_bytes(prior.read_bytes())
    data = yaml.safe_load((STUDIES / "verl-command-mxfp4-w4a4.yaml").read_text())
    data["objective"]["command"].update(command=[sys.executable, str(TESTS / "fake_verl.py")], cwd=str(tmp_path))
    study = tmp_path / "verl.yaml"
    study.write_text(yaml.safe_dump(data))
    code = main(["trial", str(study), "--set", "+fake.step_sleep=0", "--set", "+fake.patched=true"])
    result = json.loads(capsys.readouterr().out)
    assert result["kind"] == "command" and result["status"] == "complete", result["reason"]
    assert code == 0 and result["step"] == 20 and 0 <= result["value"] <= 1


def test_bad_input_is_exit_2_with_one_line(tmp_path: Path, tiny_profile: Path,  # noqa: F811
                                           capsys: pytest.CaptureFixture[str]) -> None:
    study = write_study(tmp_path, tiny_profile)
    assert main(["trial", str(study), "--params", "{not json"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("noisesweep: error: --params: invalid JSON")
    assert main(["trial", str(study), "--set", "noise.sigma_start=-1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "noise.sigma_start" in err and "\n" not in err
    assert main(["trial", str(tmp_path / "missing.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
