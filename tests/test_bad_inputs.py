"""Bad input, table-driven: each case exits non-zero with ONE stderr line naming the problem,
prints no traceback, and writes nothing to the study.

Every case runs the real CLI (`sweep.cli.main` in-process; a few as a subprocess) inside a work
dir that already holds a SQLite study named like the study files ("base", with finished trials
and user_attrs). Before/after each case the database dump must be identical and the work dir
must hold exactly the same files (so no case creates a database or a study either).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pytest

import faultlib
from faultlib import command_study, write_study
from servers import free_port
from sweep.cli import main

STUDY = "base"
PG_PASSWORD = "Unre4chable-Pw-77"


def _builtin_study(**quant: Any) -> dict[str, Any]:
    """The tiny built-in study (8 layers) with its own shipped profile."""
    return {
        "name": STUDY,
        "objective": {"kind": "builtin", "config": {
            "model": {"path": "tiny"}, "task": {"name": "tiny-arith"},
            "quant": {"format": "mxfp4", "mode": "w4a4", "ste": True, **quant},
            "steps": {"total": 20, "val_at": [0, 5, 10, 15, 20]},
        }},
        "profile": str(faultlib.REPO / "studies" / "priors" / "tiny-mxfp4.json"),
        "budget": {"trials": 4},
    }


def _profile(edit: Callable[[dict[str, Any]], None]) -> str:
    """The Qwen2.5 profile the base study uses, edited (NaN written as JSON's NaN token)."""
    data = json.loads(faultlib.QWEN_PROFILE.read_text())
    edit(data)
    return json.dumps(data)


def _base() -> dict[str, Any]:
    return command_study(STUDY, trials=4)


def _edit(fn: Callable[[dict[str, Any]], None]) -> Callable[[], dict[str, Any]]:
    def build() -> dict[str, Any]:
        spec = _base()
        fn(spec)
        return spec
    return build


@dataclass
class Case:
    """One bad input: how to build the files, the argv, and a word the error must name."""

    id: str
    argv: list[str]  # {study}, {db}, {dir} are filled in
    keyword: str
    study: Callable[[], dict[str, Any]] | str | None = None  # dict -> YAML, str -> raw text
    files: dict[str, str] = field(default_factory=dict)  # extra files (name -> text)
    subprocess: bool = False
    env: dict[str, str] = field(default_factory=dict)


RUN = ["run", "{study}", "--storage", "sqlite:///{db}"]
CASES = [
    Case("unknown-key", RUN, "bogus_key", study=_edit(lambda s: s.update(bogus_key=1))),
    Case("wrong-type", RUN, "budget.trials", study=_edit(lambda s: s["budget"].update(trials="many"))),
    Case("sigma-range-reversed", RUN, "sigma_start",
         study=_edit(lambda s: s.update(space={"sigma_start": {"low": 0.1, "high": 0.01}}))),
    Case("sigma-end-above-start", RUN, "sigma_end", study=_edit(lambda s: s.update(seed_configs=[
        {"name": "up", "sigma_start": 0.01, "sigma_end": 0.05, "num_stages": 5}]))),
    Case("num-stages-2", RUN, "num_stages",
         study=_edit(lambda s: s.update(space={"num_stages": {"low": 2, "high": 6}}))),
    Case("zone-not-in-profile", RUN, "lowest", study=_edit(lambda s: s.update(space={"zones": ["lowest"]}))),
    Case("missing-study-file", ["run", "{dir}/nosuch.yaml", "--storage", "sqlite:///{db}"], "nosuch.yaml"),
    Case("missing-profile", RUN, "gone.json", study=_edit(lambda s: s.update(profile="gone.json"))),
    Case("truncated-profile", RUN, "truncated.json", study=_edit(lambda s: s.update(profile="truncated.json")),
         files={"truncated.json": faultlib.QWEN_PROFILE.read_text()[:700]}),
    Case("profile-other-layer-count", RUN, "layer",
         study=lambda: {**_builtin_study(), "profile": str(faultlib.QWEN_PROFILE)}),
    Case("foreign-json-profile", RUN, "foreign.json", study=_edit(lambda s: s.update(profile="foreign.json")),
         files={"foreign.json": json.dumps({"name": "my-package", "version": "1.0.0", "dependencies": {}})}),
    Case("bad-storage-url", ["run", "{study}", "--storage", "notadb://x"], "notadb", study=_base),
    Case("unreachable-database", ["run", "{study}"], "not reachable", study=_base, subprocess=True,
         env={"NOISESWEEP_STORAGE": f"postgresql+psycopg://sweeper:{PG_PASSWORD}@127.0.0.1:{{port}}/nodb"}),
    Case("unknown-quant-format", RUN, "mxfp5", study=lambda: _builtin_study(format="mxfp5")),
    Case("negative-trials", [*RUN, "--trials", "-3"], "--trials", study=_base),
    Case("negative-budget-in-file", RUN, "budget.trials", study=_edit(lambda s: s["budget"].update(trials=-1))),
    Case("unknown-set-key", [*RUN, "--set", "budget.trialz=3"], "trialz", study=_base),
    Case("set-wrong-type", [*RUN, "--set", "resources.max_concurrent=lots"], "max_concurrent", study=_base),
    Case("malformed-yaml", RUN, "study.yaml", study="name: base\nobjective: {kind: command\n  budget: [1, 2\n"),
    Case("missing-trainer-script", RUN, "no_such_train.sh", study=_edit(lambda s: s["objective"]["command"].update(
        command=["bash", "no_such_train.sh"]))),
    Case("unknown-cli-flag", [*RUN, "--bogus-flag"], "--bogus-flag", study=_base, subprocess=True),
    Case("export-unknown-format", ["export", STUDY, "--storage", "sqlite:///{db}", "--format", "docx"], "docx"),
    Case("export-unknown-study", ["export", "nosuch-study", "--storage", "sqlite:///{db}", "--format", "verl"],
         "nosuch-study"),
    Case("best-missing-db", ["best", STUDY, "--storage", "sqlite:///{dir}/absent.db"], "absent.db"),
    Case("status-missing-db", ["status", "--storage", "sqlite:///{dir}/absent.db"], "absent.db"),
    # ---- every study-file section
    Case("name-bad-characters", RUN, "name", study=_edit(lambda s: s.update(name="my study!"))),
    Case("storage-password-in-file", RUN, "password", study=_edit(lambda s: s.update(
        storage=f"postgresql+psycopg://sweeper:{PG_PASSWORD}@127.0.0.1/x"))),
    Case("objective-unknown-kind", RUN, "shell", study=_edit(lambda s: s["objective"].update(kind="shell"))),
    Case("objective-builtin-unknown-key", RUN, "rnak",
         study=lambda: _builtin_study() | {"objective": {**_builtin_study()["objective"], "config": {
             **_builtin_study()["objective"]["config"], "lora": {"rnak": 8}}}}),
    Case("seed-config-unknown-name", RUN, "E99-nope", study=_edit(lambda s: s.update(seed_configs=["E99-nope"]))),
    Case("seed-config-end-and-ratio", RUN, "not both", study=_edit(lambda s: s.update(seed_configs=[
        {"name": "x", "sigma_start": 0.05, "sigma_end": 0.001, "sigma_ratio": 0.1, "num_stages": 5}]))),
    Case("budget-empty", RUN, "compute_hours", study=_edit(lambda s: s.update(budget={}))),
    Case("pruning-rung-zero", RUN, "rungs", study=_edit(lambda s: s["pruning"].update(rungs=[0, 5]))),
    Case("pruning-unknown-kind", RUN, "hyperband", study=_edit(lambda s: s["pruning"].update(kind="hyperband"))),
    Case("resources-zero-concurrent", RUN, "max_concurrent",
         study=_edit(lambda s: s["resources"].update(max_concurrent=0))),
    Case("sampler-unknown-kind", RUN, "cmaes", study=_edit(lambda s: s["sampler"].update(kind="cmaes"))),
    Case("sampler-prior-unknown-param", RUN, "sigma_mid",
         study=_edit(lambda s: s["sampler"].update(kind="prior", prior={"sigma_mid": 0.01}))),
    Case("confirm-zero-top", RUN, "confirm.top", study=_edit(lambda s: s.update(confirm={"top": 0}))),
    Case("racing-zero-seeds", RUN, "racing.max_seeds", study=_edit(lambda s: s.update(racing={"max_seeds": 0}))),
    Case("trial-seed-not-int", RUN, "trial_seed", study=_edit(lambda s: s.update(trial_seed="abc"))),
    Case("space-changed-since-start", RUN, "new name", study=_base),  # 'base' in the db searched other zones
    Case("outage-window-negative", RUN, "storage_outage_s", study=_edit(lambda s: s.update(storage_outage_s=-5))),
    Case("outage-env-not-a-number", RUN, "NOISESWEEP_OUTAGE_S", study=_base, env={"NOISESWEEP_OUTAGE_S": "soon"}),
    Case("space-alpha-negative", RUN, "alpha", study=_edit(lambda s: s.update(space={"alpha": {"low": -1, "high": 1}}))),
    Case("space-unknown-site", RUN, "site", study=_edit(lambda s: s.update(space={"site": ["attention"]}))),
    # ---- the command objective's spec
    Case("command-empty", RUN, "command", study=_edit(lambda s: s["objective"]["command"].update(command=[]))),
    Case("command-unknown-key", RUN, "retries", study=_edit(lambda s: s["objective"]["command"].update(retries=3))),
    Case("command-extra-override-not-key-value", RUN, "extra_overrides",
         study=_edit(lambda s: s["objective"]["command"].update(extra_overrides=["trainer.total_epochs"]))),
    Case("command-negative-timeout", RUN, "timeout_s",
         study=_edit(lambda s: s["objective"]["command"].update(timeout_s=-1))),
    Case("command-missing-cwd", RUN, "cwd",
         study=_edit(lambda s: s["objective"]["command"].update(cwd="/nonexistent/verl-checkout"))),
    Case("command-empty-param-key", RUN, "param_map",
         study=_edit(lambda s: s["objective"]["command"].setdefault("param_map", {}).update(sigma_start=[]))),
    # ---- profile edge cases
    Case("profile-nan-error", RUN, "nan.json", study=_edit(lambda s: s.update(profile="nan.json")),
         files={"nan.json": _profile(lambda d: d["layers"][3]["output"].update(rel_error=float("nan")))}),
    Case("profile-negative-error", RUN, "negative.json", study=_edit(lambda s: s.update(profile="negative.json")),
         files={"negative.json": _profile(lambda d: d["layers"][5]["output"].update(rel_error=-0.2))}),
    Case("profile-no-layers", RUN, "empty.json", study=_edit(lambda s: s.update(profile="empty.json")),
         files={"empty.json": _profile(lambda d: d.update(layers=[], num_layers=0, zones=[]))}),
    Case("profile-zone-without-layers", RUN, "hollow.json", study=_edit(lambda s: s.update(profile="hollow.json")),
         files={"hollow.json": _profile(lambda d: d["zones"].append({"name": "ghost", "layers": []}))}),
    Case("profile-zone-layer-out-of-range", RUN, "range.json", study=_edit(lambda s: s.update(profile="range.json")),
         files={"range.json": _profile(lambda d: d["zones"][0]["layers"].append(99))}),
    # ---- every command
    Case("trial-bad-params-json", ["trial", "{study}", "--params", "{{sigma_start: 0.01"], "--params", study=_base),
    Case("trial-unknown-param", ["trial", "{study}", "--params", '{{"sigma_mid": 0.01}}'], "sigma_mid", study=_base),
    Case("trial-missing-script", ["trial", "{study}"], "no_such_train.sh", study=_edit(
        lambda s: s["objective"]["command"].update(command=["bash", "no_such_train.sh"]))),
    Case("status-unknown-study", ["status", "nosuch-study", "--storage", "sqlite:///{db}"], "nosuch-study"),
    Case("best-unknown-study", ["best", "nosuch-study", "--storage", "sqlite:///{db}"], "nosuch-study"),
    Case("confirm-zero-seeds", ["confirm", "{study}", "--storage", "sqlite:///{db}", "--seeds", "0"], "--seeds",
         study=_base),
    Case("confirm-unknown-study", ["confirm", "nosuch-study", "--storage", "sqlite:///{db}"], "nosuch-study"),
    Case("export-into-missing-folder", ["export", STUDY, "--storage", "sqlite:///{db}", "--format", "json",
                                        "-o", "{dir}/no/such/dir/best.json"], "no/such/dir"),
    Case("report-unknown-study", ["report", "nosuch-study", "--storage", "sqlite:///{db}", "-o", "{dir}/rep"],
         "nosuch-study"),
    Case("report-output-is-a-file", ["report", "{study}", "--storage", "sqlite:///{db}", "-o", "{study}"],
         "study.yaml", study=_base),
    Case("dashboard-bad-port", ["dashboard", "--storage", "sqlite:///{db}", "--port", "70000"], "--port"),
    Case("dashboard-missing-db", ["dashboard", "--storage", "sqlite:///{dir}/absent.db"], "absent.db"),
    Case("srdd-unknown-format", ["srdd", "--model", "tiny", "--format", "mxfp5", "--out", "{dir}/p.json"], "mxfp5"),
    Case("srdd-missing-model", ["srdd", "--model", "{dir}/no-model", "--out", "{dir}/p.json"], "no-model"),
    Case("srdd-zero-batches", ["srdd", "--model", "tiny", "--batches", "0", "--out", "{dir}/p.json"], "--batches"),
    Case("srdd-out-is-a-folder", ["srdd", "--model", "tiny", "--out", "{dir}"], "directory"),
    Case("srdd-zero-batch-size", ["srdd", "--model", "tiny", "--batch-size", "0", "--out", "{dir}/p.json"],
         "--batch-size"),
]


def _make_base_db(db: Path) -> None:
    """A study 'base' with a COMPLETE, a PRUNED and a FAIL trial, attrs and intermediate values."""
    storage = f"sqlite:///{db}"
    study = optuna.create_study(study_name=STUDY, storage=storage, direction="maximize")
    study.set_user_attr("ledger", {"compute_hours": 0.01, "trials": 3})
    study.set_user_attr("enqueued_seed_configs", ["E13i-baseline"])
    dist = {"sigma_start": optuna.distributions.FloatDistribution(0.002, 0.2, log=True),
            "sigma_ratio": optuna.distributions.FloatDistribution(0.001, 1.0, log=True),
            "num_stages": optuna.distributions.IntDistribution(3, 12),
            "zones": optuna.distributions.CategoricalDistribution(["all", "high"]),
            "alpha": optuna.distributions.FloatDistribution(0.0, 2.0)}
    for i, state in enumerate([optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                               optuna.trial.TrialState.FAIL]):
        params = {"sigma_start": 0.01 * (i + 1), "sigma_ratio": 0.01, "num_stages": 10, "zones": "all", "alpha": 1.0}
        t = optuna.trial.create_trial(
            params=params, distributions=dist, state=state,
            value=0.6 + i / 100 if state == optuna.trial.TrialState.COMPLETE else None,
            intermediate_values={5: 0.3, 10: 0.5},
            user_attrs={"sigma_end": params["sigma_start"] * 0.01, "multipliers": [1.0] * 28, "seed": 0,
                        "fail_reason": "pruned at step 10 by ASHA" if i else None, "wall_time_s": 1.0,
                        "compute_hours": 0.003},
        )
        study.add_trial(t)


def _snapshot(work: Path, db: Path) -> tuple[str, dict[str, int]]:
    files = {str(p.relative_to(work)): p.stat().st_size for p in work.rglob("*") if p.is_file()}
    files.pop(db.name, None)  # compared by content below (sqlite may touch the header)
    return faultlib.sqlite_dump(db), files


@pytest.fixture
def work(tmp_path: Path, monkeypatch) -> tuple[Path, Path]:
    monkeypatch.chdir(tmp_path)  # a default sqlite:///noisesweep.db would land here
    for key in [k for k in os.environ if k.startswith("NOISESWEEP_") or k == "RAY_ADDRESS"]:
        monkeypatch.delenv(key)
    db = tmp_path / "base.db"
    _make_base_db(db)
    return tmp_path, db


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_writes_nothing(case: Case, work, capsys):
    tmp, db = work
    for name, text in case.files.items():
        (tmp / name).write_text(text)
    study_path = tmp / "study.yaml"
    if callable(case.study):
        write_study(study_path, copy.deepcopy(case.study()))
    elif isinstance(case.study, str):
        study_path.write_text(case.study)
    port = free_port()
    fill = {"study": str(study_path), "db": str(db), "dir": str(tmp), "port": str(port)}
    argv = [a.format(**fill) for a in case.argv]
    env_extra = {k: v.replace("{port}", str(port)) for k, v in case.env.items()}
    before = _snapshot(tmp, db)

    if case.subprocess:
        proc = faultlib.run_cli(argv, env=faultlib.clean_env(**env_extra), cwd=tmp, timeout=120)
        code, out, err = proc.returncode, proc.stdout, proc.stderr
    else:
        for k, v in env_extra.items():
            os.environ[k] = v
        try:
            try:
                code = main(argv)
            except SystemExit as exc:  # argparse exits by itself
                code = exc.code
        finally:
            for k in env_extra:
                os.environ.pop(k, None)
        out, err = capsys.readouterr()

    lines = [line for line in err.splitlines() if line.strip()]
    assert code not in (0, None), f"exit {code}; stderr: {err}"
    assert "Traceback" not in out + err
    assert len(lines) == 1, f"expected one stderr line, got {lines}"
    assert lines[0].startswith("noisesweep: error: "), lines[0]
    assert case.keyword.lower() in lines[0].lower(), f"{case.keyword!r} not named in: {lines[0]}"
    assert PG_PASSWORD not in out + err
    assert _snapshot(tmp, db) == before, "the case wrote to the study or the work dir"


COMMANDS = ("run", "trial", "status", "best", "confirm", "export", "report", "dashboard", "srdd")
# study-file section (sweep.study.StudySpec's fields) -> the case that breaks it
SECTION_CASES = {
    "name": "name-bad-characters", "storage": "storage-password-in-file", "objective": "objective-unknown-kind",
    "profile": "missing-profile", "space": "sigma-range-reversed", "seed_configs": "seed-config-unknown-name",
    "budget": "budget-empty", "pruning": "pruning-rung-zero", "resources": "resources-zero-concurrent",
    "sampler": "sampler-unknown-kind", "confirm": "confirm-zero-top", "racing": "racing-zero-seeds",
    "trial_seed": "trial-seed-not-int",
    "storage_outage_s": "outage-window-negative",
}


def test_table_is_big_enough_and_covers_every_command_and_section():
    """At least 40 malformed inputs, each id one distinct problem; every command and every
    study-file section has a case of its own."""
    from sweep.study import StudySpec

    ids = [c.id for c in CASES]
    assert len(set(ids)) == len(ids) >= 40
    assert {c.argv[0] for c in CASES} == set(COMMANDS)
    assert set(SECTION_CASES) == set(StudySpec.model_fields)
    assert set(SECTION_CASES.values()) <= set(ids)
