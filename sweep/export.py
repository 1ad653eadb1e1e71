"""Reading a finished (or running) study back, picking its best config, and exporting it.

Every post-sweep command (best, confirm, export, report, dashboard) starts here:

- `open_record(STUDY, storage)`: STUDY is a study name or a study YAML path (then the name and
  the storage URL come from the file). Storage precedence: --storage > $NOISESWEEP_STORAGE >
  the study file > sqlite:///noisesweep.db. An unknown name is one line that lists the studies
  the storage holds. The spec and the SRDD profile are rebuilt from the study's own user_attrs
  (`noisesweep_spec`, `srdd_profile`: what the sweep really ran), the study file as fallback.
- `best_result(record)`: the best COMPLETE trial (PRUNED/FAIL never count); when confirmations
  exist, the config with the best confirmed mean wins, because a single RL run is often luck.
- `export_text(record, best, fmt)`: verl (the fork's `trainer.noise_injection` block), hydra
  (one shell-safe line of overrides), yaml (a study-free trainer config `noisesweep trial`
  runs), json (everything). `load_verl_export(path)` reads the verl block back.

The fork's per-layer dict is written with `objective.command.multipliers_dict`/`hydra_value`,
the same helpers the command objective uses for its overrides, so a sweep trial and an export
hand the fork identical values. Floats are written with repr(): they read back bit-exact.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from quant.noise_plan import PLAN_ATTR, NoisePlan
from sweep.errors import UserError
from sweep.export_formats import FORMATS
from sweep.secrets import mask_url

NOISE_PREFIX = "trainer.noise_injection"


# --------------------------------------------------------------------------- writing files
def write_atomic(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temp file beside `path`, then rename it over `path`.

    A crash or Ctrl-C mid-write leaves the old file (or none), never a truncated one that a
    later `noisesweep trial` or the user's verl run would read. The file gets the umask's mode.
    """
    path = Path(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically (see `write_atomic`)."""
    return write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# --------------------------------------------------------------------------- the study record
@dataclass
class StudyRecord:
    """A loaded study plus what the sweep stored beside it (spec, profile, search space)."""

    study: optuna.Study
    storage_url: str  # the real URL: never print it, use `masked_url`
    spec: Any | None = None  # sweep.study.StudySpec, None when neither the study nor a file has one
    profile: Any | None = None  # quant.srdd.SrddProfile
    space: Any | None = None  # sweep.space.SearchSpace
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
        return [t for t in self.trials((TrialState.COMPLETE,)) if _finite(t.value)]

    def better(self, a: float, b: float) -> bool:
        return a > b if self.maximize else a < b

    def require_space(self, what: str) -> Any:
        if self.space is None:
            why = "; ".join(self.notes) or "the study has no noisesweep_spec/srdd_profile user_attrs"
            raise UserError(f"{what} needs the study's spec and SRDD profile ({why}); pass the study YAML file as STUDY")
        return self.space


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _looks_like_file(arg: str) -> bool:
    p = Path(arg)
    return p.suffix.lower() in (".yaml", ".yml") or p.is_file() or "/" in arg


def open_record(study_arg: str, storage: str | None = None) -> StudyRecord:
    """Load STUDY (name or study YAML path) from its storage; one-line UserError otherwise."""
    from sweep.storage import open_storage, resolve_url

    file_spec = None
    if _looks_like_file(study_arg):
        from sweep.study import load_study

        file_spec = load_study(study_arg)
        name = file_spec.name
        url = resolve_url(storage, file_spec.storage)
    else:
        name = study_arg
        url = resolve_url(storage, None)
    _require_sqlite_file(url)
    rdb = open_storage(url)
    names = [s.study_name for s in rdb.get_all_studies()]
    if name not in names:
        known = ", ".join(sorted(names)) or "none"
        raise UserError(f"no study named {name!r} in {mask_url(url)} (studies there: {known})")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=name, storage=rdb)
    record = StudyRecord(study=study, storage_url=url)
    _attach_spec(record, file_spec)
    return record


def _require_sqlite_file(url: str) -> None:
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


def _attach_spec(record: StudyRecord, file_spec: Any | None) -> None:
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


# --------------------------------------------------------------------------- the best config
@dataclass
class BestResult:
    """The config the post-sweep commands hand on, and why it was chosen."""

    trial: FrozenTrial
    value: float  # the single sweep run's objective value
    params: dict[str, Any]
    plan: NoisePlan  # the noise the trial ran (see trial_plan)
    seed: int | None
    seed_config: str | None
    confirmation: dict[str, Any] | None  # the `confirmations` entry, when confirmed
    chosen_by: str  # "confirmed mean" or "single run"

    @property
    def sigma_end(self) -> float:
        return self.plan.sigma_end

    @property
    def multipliers(self) -> list[float] | None:
        return None if self.plan.multipliers is None else list(self.plan.multipliers)

    @property
    def score(self) -> float:
        """Confirmed mean where there is one, else the single run's value."""
        if self.confirmation and _finite(self.confirmation.get("mean")):
            return float(self.confirmation["mean"])
        return self.value


def trial_plan(record: StudyRecord, trial: FrozenTrial) -> NoisePlan:
    """The NoisePlan a trial ran: its recorded plan, with the values it reported as applied winning.

    Trials from before the plan was recorded get it rebuilt from their params on the profile
    (or, without a usable profile, from the params alone: uniform noise).
    """
    plan: NoisePlan | None = None
    raw = trial.user_attrs.get(PLAN_ATTR)
    if isinstance(raw, dict):
        try:
            plan = NoisePlan.from_dict(raw)
        except (KeyError, TypeError, ValueError):
            plan = None
    if plan is None and record.space is not None:
        try:
            plan = record.space.plan(trial.params)
        except (KeyError, ValueError, UserError):
            plan = None
    if plan is None:
        p = trial.params
        plan = NoisePlan(
            sigma_start=float(p["sigma_start"]),
            sigma_end=float(p["sigma_start"]) * float(p.get("sigma_ratio", 1.0)),
            num_stages=int(p["num_stages"]),
            site=p.get("site", "rmsnorm"),
            zones=str(p.get("zones", "all")),
            alpha=float(p.get("alpha", 0.0)),
        )
    applied: dict[str, Any] = {}
    m = trial.user_attrs.get("multipliers")
    if isinstance(m, list) and m and all(_finite(x) and x >= 0 for x in m):
        applied["multipliers"] = tuple(float(x) for x in m)
    end = trial.user_attrs.get("sigma_end")
    if _finite(end) and 0 <= end <= plan.sigma_start:
        applied["sigma_end"] = float(end)
    return dataclasses.replace(plan, **applied) if applied else plan


def _result(record: StudyRecord, trial: FrozenTrial, confirmation: dict[str, Any] | None, how: str) -> BestResult:
    seed = trial.user_attrs.get("seed")
    return BestResult(
        trial=trial,
        value=float(trial.value),  # type: ignore[arg-type]
        params=dict(trial.params),
        plan=trial_plan(record, trial),
        seed=int(seed) if isinstance(seed, int) else None,
        seed_config=trial.user_attrs.get("seed_config"),
        confirmation=confirmation,
        chosen_by=how,
    )


def best_result(record: StudyRecord) -> BestResult:
    """The best COMPLETE trial, the best confirmed mean winning over single runs."""
    complete = {t.number: t for t in record.complete_trials()}
    if not complete:
        counts = count_states(record)
        summary = ", ".join(f"{n} {s.lower()}" for s, n in counts.items() if n) or "no trials"
        raise UserError(f"study {record.name!r} has no COMPLETE trial yet ({summary})")
    confirmed = []
    for key, entry in record.confirmations.items():
        try:
            number = int(key)
        except ValueError:
            continue
        if number in complete and isinstance(entry, dict) and _finite(entry.get("mean")):
            confirmed.append((float(entry["mean"]), number, entry))
    if confirmed:
        confirmed.sort(key=lambda x: (x[0] if record.maximize else -x[0], -x[1]), reverse=True)
        _, number, entry = confirmed[0]
        return _result(record, complete[number], entry, "confirmed mean")
    trials = sorted(complete.values(), key=lambda t: (t.value if record.maximize else -t.value, -t.number), reverse=True)  # type: ignore[operator]
    best = trials[0]
    entry = record.confirmations.get(str(best.number))
    return _result(record, best, entry if isinstance(entry, dict) else None, "single run")


def count_states(record: StudyRecord) -> dict[str, int]:
    """Trials per state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING always present)."""
    out = {s.name: 0 for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING)}
    for t in record.trials():
        out[t.state.name] = out.get(t.state.name, 0) + 1
    return out


def ci_text(entry: dict[str, Any] | None) -> str:
    """'0.512 [0.47, 0.55] (n=3)', 'no interval (n=1)', or '' when unconfirmed."""
    if not entry or not _finite(entry.get("mean")):
        return ""
    n = len([v for v in entry.get("values", []) if _finite(v)])
    lo, hi = entry.get("ci_low"), entry.get("ci_high")
    if _finite(lo) and _finite(hi):
        return f"{entry['mean']:.4f} [95% CI {lo:.4f}, {hi:.4f}] (n={n})"
    return f"{entry['mean']:.4f} (n={n}, no interval)"


def zone_names_of(record: StudyRecord) -> dict[int, str]:
    """Layer index -> its profile zone name ('-' outside every zone; empty without a profile)."""
    if record.profile is None:
        return {}
    return {i: (record.profile.zone_of(i) or "-") for i in range(record.profile.num_layers)}


def format_best(record: StudyRecord, best: BestResult) -> str:
    """The readable block `noisesweep best` prints."""
    t = best.trial
    metric = record.spec.metric if record.spec is not None else "value"
    lines = [
        f"study {record.name} ({record.masked_url}): best config = trial {t.number}"
        + (f" ({best.seed_config})" if best.seed_config else "")
        + f", chosen by {best.chosen_by}",
        f"  {metric}: {best.value:.4f} (single sweep run, seed {best.seed if best.seed is not None else '?'})",
    ]
    if best.confirmation:
        lines.append(f"  confirmed mean: {ci_text(best.confirmation)} on seeds {best.confirmation.get('seeds')}")
    else:
        lines.append("  confirmed mean: unconfirmed (run `noisesweep confirm` to re-run it on fresh seeds)")
    lines.append("  params:")
    for k, v in best.params.items():
        lines.append(f"    {k:<12s} {v:.6g}" if isinstance(v, float) else f"    {k:<12s} {v}")
    lines.append(f"  derived:\n    {'sigma_end':<12s} {best.sigma_end:.6g}")
    if best.multipliers is not None:
        zones = zone_names_of(record)
        lines.append("  multipliers per layer (zone):")
        row: list[str] = []
        for i, m in enumerate(best.multipliers):
            row.append(f"{i:>3d} {zones.get(i, '-'):<7s}{m:6.3f}")
            if len(row) == 4:
                lines.append("    " + "   ".join(row))
                row = []
        if row:
            lines.append("    " + "   ".join(row))
    return "\n".join(lines)


def best_json(record: StudyRecord, best: BestResult) -> dict[str, Any]:
    """Everything about the best config (the json export and `best --json`)."""
    zones = zone_names_of(record)
    return {
        "study": record.name,
        "storage": record.masked_url,
        "metric": record.spec.metric if record.spec is not None else None,
        "direction": "maximize" if record.maximize else "minimize",
        "trial": best.trial.number,
        "chosen_by": best.chosen_by,
        "value": best.value,
        "score": best.score,
        "params": best.params,
        "derived": {"sigma_end": best.sigma_end},
        "multipliers": best.multipliers,
        "layer_zones": [zones.get(i) for i in range(len(best.multipliers))] if best.multipliers else None,
        "seed": best.seed,
        "seed_config": best.seed_config,
        "confirmation": best.confirmation,
        "metrics": best.trial.user_attrs.get("metrics"),
        "intermediate_values": {str(k): v for k, v in sorted(best.trial.intermediate_values.items())},
    }


# --------------------------------------------------------------------------- export formats
def _site(record: StudyRecord, best: BestResult) -> str:
    if "site" in best.params:
        return str(best.params["site"])
    return record.space.sites[0] if record.space is not None else "rmsnorm"


def verl_values(best: BestResult) -> dict[str, Any]:
    """The fork's `trainer.noise_injection` keys for the best config (multipliers as a dict)."""
    plan = best.plan
    out: dict[str, Any] = {
        "enabled": True,
        "sigma_start": plan.sigma_start,
        "sigma_end": plan.sigma_end,
        "num_stages": plan.num_stages,
    }
    if plan.multipliers is not None:
        out["use_variable_sigma"] = True
        out["layer_multipliers"] = plan.multipliers_dict()
    return out


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def verl_text(record: StudyRecord, best: BestResult) -> str:
    """The fork's YAML block (seeds: ppo_trainer.yaml's noise_injection), with provenance comments."""
    values = verl_values(best)
    site = _site(record, best)
    head = [
        f"# noisesweep export: study {record.name}, trial {best.trial.number}"
        + (f" ({best.seed_config})" if best.seed_config else ""),
        f"# single run: {best.value!r}; confirmed: {ci_text(best.confirmation) or 'unconfirmed'}",
        f"# params: {json.dumps(best.params, sort_keys=True)}",
    ]
    if site != "rmsnorm":
        head.append(f"# NOTE: this config injected noise at the {site} site; the fork's noise_injection targets RMSNorm")
    lines = head + ["trainer:", "  noise_injection:"]
    for key, v in values.items():
        if key == "layer_multipliers":
            items = [f"{layer}: {m!r}" for layer, m in v.items()]
            chunks = [", ".join(items[i : i + 5]) for i in range(0, len(items), 5)]
            lines.append("    layer_multipliers: {")
            lines.extend(f"      {c}," for c in chunks)
            lines.append("    }")
        else:
            lines.append(f"    {key}: {_yaml_scalar(v)}")
    return "\n".join(lines) + "\n"


def load_verl_export(path: str | Path) -> dict[str, Any]:
    """Read a verl export back: the `trainer.noise_injection` mapping (layer keys as ints)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such verl export")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        block = data["trainer"]["noise_injection"]
    except (TypeError, KeyError):
        raise ValueError(f"{p}: no trainer.noise_injection block") from None
    if not isinstance(block, dict):
        raise ValueError(f"{p}: trainer.noise_injection is not a mapping")
    return dict(block)


def hydra_overrides(record: StudyRecord, best: BestResult) -> list[str]:
    """`key=value` overrides on the fork's keys, keys and values as the command objective writes them.

    Keys the fork's ppo_trainer.yaml may lack (layer_multipliers, use_variable_sigma) get
    Hydra's force-add `++`, like objective.command.FORK_MULTIPLIERS_KEY: a plain override of a
    missing key fails under Hydra's struct mode.
    """
    from objective import command

    multipliers_key = getattr(command, "FORK_MULTIPLIERS_KEY", f"++{NOISE_PREFIX}.layer_multipliers")
    keys = {k.split(".")[-1]: k for k in getattr(command, "FORK_PARAM_MAP", {}).values()}
    keys["layer_multipliers"] = multipliers_key
    keys["use_variable_sigma"] = f"++{NOISE_PREFIX}.use_variable_sigma"
    keys_of: dict[str, list[str]] = {k: [v] for k, v in keys.items()}
    cmd = getattr(getattr(record.spec, "objective", None), "command", None)
    if cmd is not None:  # a command study: the keys its own trials were given
        for name, mapped in (getattr(cmd, "param_map", None) or {}).items():
            if name in keys_of:
                keys_of[name] = [mapped] if isinstance(mapped, str) else list(mapped)
        if getattr(cmd, "multipliers_key", None):
            keys_of["layer_multipliers"] = [cmd.multipliers_key]
    out = []
    for k, v in verl_values(best).items():
        for key in keys_of.get(k, [f"{NOISE_PREFIX}.{k}"]):
            out.append(f"{key}={command.hydra_value(v)}")
    return out


def hydra_text(record: StudyRecord, best: BestResult) -> str:
    """One line, shell-quoted, to append to the user's verl command."""
    return shlex.join(hydra_overrides(record, best)) + "\n"


def trainer_config(record: StudyRecord, best: BestResult) -> Any:
    """The TrialConfig the best trial ran (recorded multipliers and seed), study-free."""
    from sweep.study import BuiltinObjective

    space = record.require_space("--format yaml")
    if not isinstance(record.spec.objective, BuiltinObjective):
        raise UserError(
            f"study {record.name!r} runs a command objective; --format yaml writes a built-in trainer config "
            "(use --format verl or hydra for the fork)"
        )
    seed = best.seed if best.seed is not None else int(record.spec.trial_seed)
    plan = best.plan
    if plan.multipliers is not None and len(plan.multipliers) != space.num_layers:
        plan = space.plan(best.params)  # recorded for another profile: the study's own
    config = space.to_trial_config(plan, seed=seed)
    return type(config).model_validate(config.model_dump())


def yaml_text(record: StudyRecord, best: BestResult) -> str:
    """The trainer-config document `noisesweep trial` runs again, with a provenance block."""
    from sweep.study import trainer_config_document

    config = trainer_config(record, best)
    source = {
        "study": record.name,
        "trial": best.trial.number,
        "value": best.value,
        "confirmed_mean": best.confirmation.get("mean") if best.confirmation else None,
        "params": best.params,
    }
    if best.seed_config:
        source["seed_config"] = best.seed_config
    doc = trainer_config_document(config, source=source)
    header = f"# noisesweep export: study {record.name}, trial {best.trial.number}; run it again with `noisesweep trial THIS.yaml`\n"
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)


def json_text(record: StudyRecord, best: BestResult) -> str:
    """Everything about the best config plus its verl block and hydra overrides, as strict JSON."""
    doc = best_json(record, best)
    doc["verl"] = {NOISE_PREFIX: {k: ({str(i): m for i, m in v.items()} if isinstance(v, dict) else v)
                                  for k, v in verl_values(best).items()}}
    doc["hydra"] = hydra_overrides(record, best)
    return json.dumps(_jsonable(doc), indent=1) + "\n"


def _jsonable(v: Any) -> Any:
    """Strict JSON: non-finite floats become null, tuples lists, numpy scalars Python ones,
    unknown objects strings (shared by best --json, export --format json and trial)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if hasattr(v, "item"):
        return _jsonable(v.item())
    return str(v)


def export_text(record: StudyRecord, best: BestResult, fmt: str) -> str:
    """The export in one of FORMATS (UserError for any other)."""
    if fmt not in FORMATS:
        raise UserError(f"--format: unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    return {"verl": verl_text, "hydra": hydra_text, "yaml": yaml_text, "json": json_text}[fmt](record, best)
