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


def test_table_is_big_enough():
    """The issue asks for at least 15 malformed inputs; each id is one distinct problem."""
    assert len({c.id for c in CASES}) == len(CASES) >= 15
