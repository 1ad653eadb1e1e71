"""`noisesweep best` / `export`: the best COMPLETE trial (confirmed first) and the four formats.

`make_study` (also used by test_confirm/test_report/test_dashboard) builds a real study record
directly with optuna on a sqlite file: the contract's params and user_attrs, intermediate
values at steps 5/10/15/20, COMPLETE/PRUNED/FAIL trials, and an 8-layer SRDD profile made with
quant.srdd's own zone split.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from quant.srdd import LayerMetrics, SiteMetrics, SrddProfile, compute_zones
from sweep.cli import main

ERRORS = [0.30, 0.31, 0.33, 0.40, 0.42, 0.41, 0.34, 0.29]  # zones: low 0,1,7 / medium 2,6 / high 3-5
STUDY = "exp-study"

# (seed_config, params, state, final value, curve) — the planted sweep.
# Single-run best: trial 2 (E13i-high, 0.62). Pruned trial 5 reported 0.95 at step 10: never best.
PLANTED: list[tuple[str | None, dict[str, Any], TrialState, float | None, list[float]]] = [
    ("E13i-baseline", dict(sigma_start=0.05, sigma_ratio=0.01, num_stages=10, zones="all", alpha=0.0),
     TrialState.COMPLETE, 0.40, [0.30, 0.35, 0.38, 0.40]),
    ("E13i-targeted", dict(sigma_start=0.05, sigma_ratio=0.01, num_stages=10, zones="high", alpha=0.0),
     TrialState.COMPLETE, 0.60, [0.40, 0.50, 0.55, 0.60]),
    ("E13i-high", dict(sigma_start=0.08, sigma_ratio=0.0125, num_stages=10, zones="high", alpha=0.0),
     TrialState.COMPLETE, 0.62, [0.42, 0.50, 0.58, 0.62]),
    ("E13i-low", dict(sigma_start=0.03, sigma_ratio=0.01, num_stages=10, zones="high", alpha=0.0),
     TrialState.COMPLETE, 0.50, [0.35, 0.42, 0.47, 0.50]),
    ("E13j-variable", dict(sigma_start=0.05, sigma_ratio=0.01, num_stages=10, zones="all", alpha=1.0),
     TrialState.COMPLETE, 0.45, [0.30, 0.38, 0.42, 0.45]),
    (None, dict(sigma_start=0.15, sigma_ratio=0.5, num_stages=4, zones="high+medium", alpha=1.7),
     TrialState.PRUNED, None, [0.90, 0.95]),
    (None, dict(sigma_start=0.19, sigma_ratio=0.9, num_stages=3, zones="all", alpha=0.3),
     TrialState.FAIL, None, [0.10]),
    (None, dict(sigma_start=0.02, sigma_ratio=1.0, num_stages=6, zones="high+medium", alpha=0.5),
     TrialState.COMPLETE, 0.58, [0.40, 0.48, 0.54, 0.58]),
]


def make_profile() -> SrddProfile:
    layers = [LayerMetrics(index=i, output=SiteMetrics(rel_error=e, deadzone=e / 2)) for i, e in enumerate(ERRORS)]
    return SrddProfile(model="test-8L", format="mxfp4", num_layers=len(ERRORS), layers=layers, zones=compute_zones(ERRORS))


def make_study(
    tmp_path: Path,
    *,
    planted: list | None = None,
    confirmations: dict[str, Any] | None = None,
    sites: list[str] | None = None,
    name: str = STUDY,
) -> tuple[str, Path, Any]:
    """(storage URL, study YAML path, SearchSpace) of a planted study in tmp_path/ns.db."""
    from sweep.space import SearchSpace
    from sweep.study_loader import load_study

    profile = make_profile()
    profile.save(tmp_path / "profile.json")
    url = f"sqlite:///{tmp_path / 'ns.db'}"
    data = {
        "name": name,
        "storage": url,
        "objective": {
            "kind": "builtin",
            "config": {"steps": {"total": 20, "val_at": [0, 5, 10, 15, 20]}, "lora": {"rank": 4}, "threads": 1},
        },
        "profile": "profile.json",
        "space": {"zones": ["all", "high", "high+medium"], "site": sites or ["rmsnorm"]},
        "budget": {"trials": 10},
    }
    study_file = tmp_path / f"{name}.yaml"
    study_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    spec = load_study(study_file)
    space = SearchSpace.from_spec(spec)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=name, storage=url, direction="maximize")
    study.set_user_attr("noisesweep_spec", spec.to_record())
    study.set_user_attr("srdd_profile", json.loads(profile.to_json()))
    for i, (seed_config, params, state, value, curve) in enumerate(planted if planted is not None else PLANTED):
        p = dict(params)
        if "site" not in space.distributions:
            p.pop("site", None)
        plan = space.plan(p)
        attrs: dict[str, Any] = {
            "sigma_end": plan.sigma_end, "multipliers": list(plan.multipliers), "seed": i,
            "wall_time_s": 30.0, "compute_hours": 30.0 / 3600, "last_step": 5 * len(curve),
        }
        if seed_config:
            attrs["seed_config"] = seed_config
        if state != TrialState.COMPLETE:
            attrs["fail_reason"] = "pruned by ASHA at step 10" if state == TrialState.PRUNED else "NaN loss"
        else:
            attrs["metrics"] = {"val-core/tiny-arith/acc/mean@1": value}
        study.add_trial(optuna.trial.create_trial(
            params=p, distributions={k: space.distributions[k] for k in p}, value=value, state=state,
            intermediate_values={5 * (j + 1): v for j, v in enumerate(curve)}, user_attrs=attrs,
        ))
    study.set_user_attr("ledger", {"compute_hours": 8 * 30.0 / 3600, "trials": 7})
    if confirmations:
        study.set_user_attr("confirmations", confirmations)
    return url, study_file, space


def conf_entry(values: list[float], params: dict[str, Any]) -> dict[str, Any]:
    from sweep.stats import mean_ci

    m, lo, hi = mean_ci(values)
    return {"values": values, "seeds": list(range(1000, 1000 + len(values))), "mean": m, "ci_low": lo, "ci_high": hi, "params": params}


# --------------------------------------------------------------------------- best
def test_best_ignores_pruned_and_failed_and_takes_the_best_single_run(tmp_path, capsys):
    url, _, _ = make_study(tmp_path)
    assert main(["best", STUDY, "--storage", url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["trial"] == 2 and out["value"] == 0.62 and out["chosen_by"] == "single run"
    assert out["seed_config"] == "E13i-high"
    assert out["derived"]["sigma_end"] == pytest.approx(0.08 * 0.0125)
    assert out["layer_zones"] == ["low", "low", "medium", "high", "high", "high", "medium", "low"]
    assert out["multipliers"] == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def test_best_prefers_the_best_confirmed_mean(tmp_path, capsys):
    confs = {"2": conf_entry([0.54, 0.55, 0.56], PLANTED[2][1]), "1": conf_entry([0.57, 0.58, 0.59], PLANTED[1][1])}
    _, study_file, _ = make_study(tmp_path, confirmations=confs)
    assert main(["best", str(study_file)]) == 0  # STUDY as a file: name and storage from it
    out = capsys.readouterr().out
    assert "trial 1 (E13i-targeted), chosen by confirmed" in out
    assert "0.5800 [95% CI" in out and "0.6000 (single sweep run" in out
    assert " 3 high    1.000" in out  # multipliers per layer with zone names


def test_best_with_no_complete_trial_is_one_line(tmp_path, capsys):
    url, _, _ = make_study(tmp_path, planted=[PLANTED[5], PLANTED[6]])
    assert main(["best", STUDY, "--storage", url]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"noisesweep: error: study {STUDY!r} has no COMPLETE trial yet (1 pruned, 1 fail)"


def test_unknown_study_lists_the_existing_ones(tmp_path, capsys):
    url, _, _ = make_study(tmp_path)
    assert main(["best", "nope", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "no study named 'nope'" in err and f"(studies there: {STUDY})" in err


def test_storage_env_beats_the_default_and_the_flag_beats_env(tmp_path, capsys, monkeypatch):
    url, _, _ = make_study(tmp_path)
    monkeypatch.setenv("NOISESWEEP_STORAGE", url)
    assert main(["best", STUDY, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["trial"] == 2
    other = f"sqlite:///{tmp_path / 'other.db'}"
    optuna.create_study(study_name="elsewhere", storage=other)
    assert main(["best", STUDY, "--storage", other]) == 2
    assert "(studies there: elsewhere)" in capsys.readouterr().err


def test_password_never_printed(tmp_path, capsys):
    assert main(["best", STUDY, "--storage", "postgresql+psycopg://u:s3cr3t@127.0.0.1:1/db"]) == 2
    err = capsys.readouterr().err
    assert "s3cr3t" not in err and "***" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- export
def test_verl_export_loads_back_equal_to_the_study(tmp_path, capsys):
    from sweep.export import load_verl_export

    url, _, _ = make_study(tmp_path)
    out = tmp_path / "verl.yaml"
    assert main(["export", STUDY, "--storage", url, "--format", "verl", "-o", str(out)]) == 0
    block = load_verl_export(out)
    trial = optuna.load_study(study_name=STUDY, storage=url).trials[2]
    assert block["enabled"] is True and block["layer_types"] == ["rmsnorm"]
    assert block["sigma_start"] == trial.params["sigma_start"]
    assert block["sigma_end"] == trial.user_attrs["sigma_end"]
    assert block["num_stages"] == trial.params["num_stages"]
    # the zone as the fork's target patterns; uniform inside it, so no layer_sigma_config
    noised = [i for i, m in enumerate(trial.user_attrs["multipliers"]) if m > 0]
    assert block["target_modules"] == [f"layers.{i}." for i in noised] and noised == [3, 4, 5]
    assert "layer_sigma_config" not in block


def test_verl_export_floats_round_trip_bit_exact(tmp_path):
    from sweep.export import load_verl_export

    planted = [(None, dict(sigma_start=0.0123456789012345, sigma_ratio=0.0333333333333333, num_stages=7,
                            zones="all", alpha=0.7310585786300049), TrialState.COMPLETE, 0.5, [0.5])]
    url, _, space = make_study(tmp_path, planted=planted)
    out = tmp_path / "v.yaml"
    assert main(["export", STUDY, "--storage", url, "--format", "verl", "-o", str(out)]) == 0
    block = load_verl_export(out)
    plan = space.plan(planted[0][1])
    assert block["sigma_start"] == 0.0123456789012345
    assert block["sigma_end"] == plan.sigma_end
    mults = block["layer_sigma_config"]["layer_multipliers"]
    assert list(mults.values()) == list(plan.multipliers) and all(type(k) is int for k in mults)
    assert len(set(plan.multipliers)) == 8  # alpha > 0: all distinct, a real test of the repr


def test_hydra_export_is_one_shell_line_the_command_objective_would_write(tmp_path, capsys):
    import shlex

    from objective.command import CommandSpec, build_overrides

    url, _, space = make_study(tmp_path)
    assert main(["export", STUDY, "--storage", url, "--format", "hydra"]) == 0
    text = capsys.readouterr().out
    assert text.count("\n") == 1
    words = shlex.split(text)
    trial = optuna.load_study(study_name=STUDY, storage=url).trials[2]
    spec = CommandSpec(command=["x"], noise_keys="verl-fork-patched")
    assert words == build_overrides(spec, space.plan(trial.params).to_dict())  # exactly a trial's noise overrides
    assert "trainer.noise_injection.sigma_start=0.08" in words
    assert "trainer.noise_injection.target_modules=['layers.3.','layers.4.','layers.5.']" in words
    assert not any("layer_sigma_config" in w for w in words)  # uniform inside the zone


def test_yaml_export_is_a_trainer_config_the_trial_command_reads_back(tmp_path):
    from sweep.overrides import load_yaml_file
    from sweep.trainer_config_doc import is_trainer_config, parse_trainer_config

    confs = {"1": conf_entry([0.57, 0.58, 0.59], PLANTED[1][1])}
    url, _, space = make_study(tmp_path, confirmations=confs)
    out = tmp_path / "trainer.yaml"
    assert main(["export", STUDY, "--storage", url, "--format", "yaml", "-o", str(out)]) == 0
    data = load_yaml_file(out)  # exactly what `noisesweep trial` does first
    assert is_trainer_config(data)
    config = parse_trainer_config(data, source=str(out))
    assert config == space.to_trial_config(PLANTED[1][1], seed=1)  # the confirmed best, its seed
    assert config.noise.enabled and config.noise.layer_multipliers == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    assert data["source"]["trial"] == 1 and data["source"]["confirmed_mean"] == pytest.approx(0.58)


def test_json_export_holds_everything(tmp_path, capsys):
    confs = {"2": conf_entry([0.61, 0.63], PLANTED[2][1])}
    url, _, _ = make_study(tmp_path, confirmations=confs)
    assert main(["export", STUDY, "--storage", url, "--format", "json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["trial"] == 2 and doc["value"] == 0.62 and doc["params"] == PLANTED[2][1]
    assert doc["confirmation"]["values"] == [0.61, 0.63] and math.isclose(doc["score"], 0.62)
    assert doc["derived"]["sigma_end"] == pytest.approx(0.001)
    assert doc["verl"]["trainer.noise_injection"]["target_modules"] == ["layers.3.", "layers.4.", "layers.5."]
    assert doc["intermediate_values"] == {"5": 0.42, "10": 0.5, "15": 0.58, "20": 0.62}
    assert doc["storage"] == url


def test_bad_format_is_one_line_exit_2(tmp_path, capsys):
    url, _, _ = make_study(tmp_path)
    assert main(["export", STUDY, "--storage", url, "--format", "toml"]) == 2
    err = capsys.readouterr().err
    assert err == "noisesweep: error: --format: unknown format 'toml' (choose from verl, hydra, yaml, json)\n"


def test_load_verl_export_rejects_a_file_without_the_block(tmp_path):
    from sweep.export import load_verl_export

    p = tmp_path / "x.yaml"
    p.write_text("trainer: {total_epochs: 1}\n")
    with pytest.raises(ValueError, match="no trainer.noise_injection block"):
        load_verl_export(p)


def test_hydra_export_of_a_command_study_uses_its_own_keys(tmp_path, capsys):
    """A command study's param_map/multipliers_key are the keys its trials got: the export keeps them."""

    from sweep.best import best_result
    from sweep.export import hydra_overrides
    from sweep.record import open_record

    url, _, _ = make_study(tmp_path)
    record = open_record(STUDY, url)
    rec = record.study.user_attrs["noisesweep_spec"]
    rec["objective"] = {"kind": "command", "command": {
        "command": ["bash", "run.sh"], "param_map": {"sigma_start": ["a.sigma0", "b.sigma0"], "num_stages": "a.stages"},
        "multipliers_key": "++a.mults"}}
    record.study.set_user_attr("noisesweep_spec", rec)
    record = open_record(STUDY, url)
    words = hydra_overrides(record, best_result(record))
    assert "a.sigma0=0.08" in words and "b.sigma0=0.08" in words and "a.stages=10" in words
    assert "++a.mults={0:0.0,1:0.0,2:0.0,3:1.0,4:1.0,5:1.0,6:0.0,7:0.0}" in words
    assert not any(w.startswith("trainer.noise_injection") for w in words)  # unmapped: its trials never got it
    assert main(["export", STUDY, "--storage", url, "--format", "yaml"]) == 2
    assert "runs a command objective" in capsys.readouterr().err


def test_a_missing_sqlite_file_is_reported_not_created(tmp_path, capsys):
    db = tmp_path / "typo.db"
    assert main(["best", STUDY, "--storage", f"sqlite:///{db}"]) == 2
    assert "no such database file" in capsys.readouterr().err
    assert not db.exists()


@pytest.mark.parametrize("command", ["best", "confirm", "export", "report", "dashboard"])
def test_help_renders(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and ("STUDY" in out) == (command != "dashboard")


def test_write_text_atomic_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    """A crash mid-write must not leave a truncated export behind (nor a temp file)."""
    from sweep.atomic import write_atomic, write_text_atomic

    target = tmp_path / "best.yaml"
    write_text_atomic(target, "old: 1\n")

    def boom(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, boom)
    assert target.read_text() == "old: 1\n"
    assert [p.name for p in tmp_path.iterdir()] == ["best.yaml"]
    write_text_atomic(target, "new: 2\n")
    assert target.read_text() == "new: 2\n"


@pytest.mark.parametrize("target, message", [("missing/best.yaml", "does not exist"), (".", "is a folder")])
def test_export_to_a_bad_output_path_is_one_line(tmp_path, capsys, target, message):
    url, _, _ = make_study(tmp_path)
    out = tmp_path / target
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["export", STUDY, "--storage", url, "--format", "verl", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("noisesweep: error: -o:") and message in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_an_empty_sqlite_file_is_reported_not_filled_with_tables(tmp_path, capsys):
    """A read command on an existing non-Optuna sqlite file must not create Optuna's tables in it."""
    empty = tmp_path / "empty.db"
    empty.write_bytes(b"")
    assert main(["best", STUDY, "--storage", f"sqlite:///{empty}"]) == 2
    err = capsys.readouterr().err
    assert "holds no Optuna studies" in err and err.count("\n") == 1
    assert empty.stat().st_size == 0


def test_best_takes_the_replicated_incumbent_over_a_lucky_single_run(tmp_path, capsys):
    """Three seeds of one config (mean 0.58) beat one lucky run at 0.62: chosen by replicates, with a CI."""
    targeted = PLANTED[1][1]
    planted = [
        PLANTED[2],  # E13i-high: one run, 0.62
        ("E13i-targeted", targeted, TrialState.COMPLETE, 0.60, [0.60]),
        (None, targeted, TrialState.COMPLETE, 0.55, [0.55]),
        (None, targeted, TrialState.COMPLETE, 0.59, [0.59]),
        (None, targeted, TrialState.PRUNED, None, [0.10]),  # a pruned replicate never counts
    ]
    url, _, _ = make_study(tmp_path, planted=planted)
    assert main(["best", STUDY, "--storage", url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["chosen_by"] == "replicates" and out["trial"] == 1
    assert out["n_seeds"] == 3 and out["replicates"] == {"1": 0.60, "2": 0.55, "3": 0.59}
    assert out["score"] == pytest.approx(0.58) and out["search_score"] == pytest.approx(0.58)
    lo, hi = out["ci95"]
    assert lo < 0.58 < hi and hi - lo > 0.05  # sd 0.026 over 3 seeds: a wide interval, honestly shown
    assert out["confirmed_score"] is None and out["search_confirmed_gap"] is None


def test_best_json_gap_is_search_minus_confirmed(tmp_path, capsys):
    targeted = PLANTED[1][1]
    planted = [
        ("E13i-targeted", targeted, TrialState.COMPLETE, 0.60, [0.60]),
        (None, targeted, TrialState.COMPLETE, 0.56, [0.56]),
    ]
    url, _, _ = make_study(tmp_path, planted=planted, confirmations={"0": conf_entry([0.50, 0.54, 0.52], targeted)})
    assert main(["best", STUDY, "--storage", url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["chosen_by"] == "confirmed" and out["n_seeds"] == 3
    assert out["search_score"] == pytest.approx(0.58) and out["confirmed_score"] == pytest.approx(0.52)
    assert out["search_confirmed_gap"] == pytest.approx(0.06)
    assert out["ci95"][0] < 0.52 < out["ci95"][1]
