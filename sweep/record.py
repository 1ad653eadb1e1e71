"""The study record every post-sweep command starts from (best, confirm, export, report, dashboard).

`open_record(STUDY, storage)`: STUDY is a study name or a study YAML path (then the name and
the storage URL come from the file). Storage precedence: --storage > $NOISESWEEP_STORAGE >
the study file > sqlite:///noisesweep.db. An unknown name is one line that lists the studies
the storage holds. The spec and the SRDD profile are rebuilt from the study's own user_attrs
(`noisesweep_spec`, `srdd_profile`: what the sweep really ran), the study file as fallback.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from sweep.errors import UserError
from sweep.secrets import mask_url

if TYPE_CHECKING:  # imported lazily at run time: the record opens without building a space
    from quant.srdd import SrddProfile
    from sweep.space import SearchSpace
    from sweep.study import StudySpec


@dataclass
class StudyRecord:
    """A loaded study plus what the sweep stored beside it (spec, profile, search space)."""

    study: optuna.Study
    storage_url: str  # the real URL: never print it, use `masked_url`
    spec: StudySpec | None = None  # None when neither the study nor a file has one
    profile: SrddProfile | None = None
    space: SearchSpace | None = None
    spec_record: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # why the spec/profile could not be rebuilt

    @property
    def name(self) -> str:
        return self.study.study_name

    @property
    def masked_url(self) -> str:
        return mask_url(self.storage_url)

    @property
    def maximize(self) -> bool:
        return self.study.direction == optuna.study.StudyDirection.MAXIMIZE

    @property
    def confirmations(self) -> dict[str, dict[str, Any]]:
        raw = self.study.user_attrs.get("confirmations") or {}
        return dict(raw) if isinstance(raw, dict) else {}

    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

    def complete_trials(self) -> list[FrozenTrial]:
        return [t for t in self.trials((TrialState.COMPLETE,)) if finite_number(t.value)]

    def better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b

    def require_space(self, what: str) -> SearchSpace:
        if self.space is None:
            why = "; ".join(self.notes) or "the study has no noisesweep_spec/srdd_profile user_attrs"
            raise UserError(f"{what} needs the study's spec and SRDD profile ({why}); pass the study YAML file as STUDY")
        return self.space


def finite_number(v: Any) -> bool:
    """A real int/float that is finite (bools and NaN/inf, as stored in user_attrs, are not)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _looks_like_file(arg: str) -> bool:
    p = Path(arg)
    return p.suffix.lower() in (".yaml", ".yml") or p.is_file() or "/" in arg


def open_record(study_arg: str, storage: str | None = None) -> StudyRecord:
    """Load STUDY (name or study YAML path) from its storage; one-line UserError otherwise."""
    from sweep.storage import open_storage, resolve_url

    file_spec = None
    if _looks_like_file(study_arg):
        from sweep.study_loader import load_study

        file_spec = load_study(study_arg)
        name = file_spec.name
        url = resolve_url(storage, file_spec.storage)
    else:
        name = study_arg
        url = resolve_url(storage, None)
    require_sqlite_file(url)
    rdb = open_storage(url)
    names = [s.study_name for s in rdb.get_all_studies()]
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise UserError(f"no study named {name!r} in {mask_url(url)} (studies there: {known})")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=rdb)
    record = StudyRecord(study=study, storage_url=url)
    attach_spec(record, file_spec)
    return record


def require_sqlite_file(url: str) -> None:
    """Reading commands must not create an empty sqlite database where the user mistyped a path."""
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # noqa: BLE001 - open_storage reports a bad URL
        return
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        path = Path(parsed.database).expanduser()
        if not path.is_file():
            raise UserError(f"storage {mask_url(url)}: no such database file {parsed.database} (no study has run there yet)")
        if not _has_optuna_tables(path):  # RDBStorage would create its tables in it
            raise UserError(f"storage {mask_url(url)}: {parsed.database} holds no Optuna studies (no study has run there yet)")


def _has_optuna_tables(path: Path) -> bool:
    """True unless `path` is a readable sqlite database without Optuna's `studies` table.

    Opened read-only, so looking never writes; a file that is not a database is left to
    open_storage to report.
    """
    import sqlite3

    try:
        con = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            row = con.execute("SELECT 1 FROM sqlite_master WHERE type='table' AND name='studies'").fetchone()
        finally:
            con.close()
    except sqlite3.DatabaseError:
        return True
    return row is not None


def attach_spec(record: StudyRecord, file_spec: StudySpec | None) -> None:
    """Rebuild spec, profile and search space: the stored spec first, the study file second."""
    from quant.srdd import SrddProfile
    from sweep.space import SearchSpace
    from sweep.study import StudySpec

    attrs = record.study.user_attrs
    raw_spec = attrs.get("noisesweep_spec")
    if isinstance(raw_spec, str):
        try:
            raw_spec = json.loads(raw_spec)
        except json.JSONDecodeError:
            raw_spec = None
    spec = None
    if isinstance(raw_spec, dict):
        record.spec_record = dict(raw_spec)
        try:
            spec = StudySpec.model_validate(raw_spec)
        except Exception as exc:  # noqa: BLE001 - an older/newer spec: fall back to the file
            record.notes.append(f"stored noisesweep_spec does not validate ({str(exc).splitlines()[0]})")
    if spec is None and file_spec is not None:
        spec = file_spec
        record.spec_record = file_spec.to_record()
    profile = None
    raw_profile = attrs.get("srdd_profile")
    if raw_profile is not None:
        text = raw_profile if isinstance(raw_profile, str) else json.dumps(raw_profile)
        try:
            profile = SrddProfile.from_json(text, origin=f"study {record.name} srdd_profile")
        except ValueError as exc:
            record.notes.append(str(exc).splitlines()[0])
    if profile is None and spec is not None:
        try:
            profile = spec.srdd_profile
        except (ValueError, OSError) as exc:
            record.notes.append(f"profile: {str(exc).splitlines()[0]}")
    if profile is None and file_spec is not None:
        profile = file_spec.srdd_profile
    record.spec, record.profile = spec, profile
    if spec is not None and profile is not None:
        try:
            record.space = SearchSpace.from_spec(spec, profile)
        except (ValueError, UserError) as exc:
            record.notes.append(f"search space: {str(exc).splitlines()[0]}")


def set_metric_name(study: optuna.Study, metric: str) -> None:
    """Name the objective (optuna-dashboard shows it instead of "Objective 0"); written once."""
    if study.metric_names == [metric]:
        return
    with warnings.catch_warnings():  # Study.set_metric_names is "experimental" in optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([metric])
