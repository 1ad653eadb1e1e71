"""The study file (studies/*.yaml): one validated description of a sweep.

Everything a sweep needs is checked here, before Ray or a trainer starts: unknown keys, wrong
types, impossible ranges, a missing or mismatched SRDD profile. Each problem is one
`sweep.errors.UserError` line that names the file and the key path, e.g.
``studies/x.yaml: space.sigma_start.low: must be > 0 (got -1)``.

Sections (all models forbid unknown keys):
  name, storage, objective (builtin trainer config or a user command), profile (SRDD JSON,
  relative to the study file), space (ranges; defaults from the seeds and the profile),
  seed_configs (the seeds' hand-made configs, enqueued first), budget, pruning, resources,
  sampler, confirm, trial_seed.

The trainer-config document (`noisesweep export --format yaml`, read by `noisesweep trial`)
is defined here too: a mapping whose top-level key `noisesweep_trainer_config: 1` marks it,
the TrialConfig sections beside it and an optional `source:` block (provenance, ignored).
"""

from __future__ import annotations

import json
import math
import os
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from objective.config import TrialConfig
from quant.noise_plan import MIN_NUM_STAGES
from sweep.errors import UserError
from sweep.overrides import apply_overrides, load_yaml_file, override_paths
from sweep.secrets import mask_url

DEFAULT_STORAGE = "sqlite:///noisesweep.db"
STORAGE_ENV = "NOISESWEEP_STORAGE"
TRAINER_CONFIG_MARKER = "noisesweep_trainer_config"
TRAINER_CONFIG_VERSION = 1
SITES = ("rmsnorm", "linear")

# Objective metric per built-in task (verl's naming: val-core/<data_source>/acc/mean@1).
TASK_DATA_SOURCES = {"tiny-arith": "tiny-arith", "gsm8k": "openai/gsm8k"}


def task_metric(task_name: str) -> str:
    """The built-in trainer's objective metric for a task (verl's validation accuracy key)."""
    return f"val-core/{TASK_DATA_SOURCES.get(task_name, task_name)}/acc/mean@1"


class _Model(BaseModel):
    """Base of every study-file section: unknown keys and inf/NaN numbers are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class _Nested(ValueError):
    """A validator's error deeper in the data: `loc` below the field, then a ValidationError or text."""

    def __init__(self, loc: tuple[Any, ...], error: ValidationError | str) -> None:
        super().__init__(str(error).splitlines()[0])
        self.loc = loc
        self.error = error


# --------------------------------------------------------------------------- the search space
class LogRange(_Model):
    """A positive float range searched on a log scale; low < high."""

    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _order(self) -> LogRange:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"low and high must be finite (got low={self.low}, high={self.high})")
        if self.low >= self.high:
            raise ValueError(f"low must be < high (got low={self.low}, high={self.high})")
        return self


class RatioRange(LogRange):
    """sigma_end / sigma_start, on a log scale in (0, 1]: 1 = constant sigma (no decay)."""

    high: float = Field(gt=0, le=1)


class StagesRange(_Model):
    """num_stages: the range must hold only plans QeRL's schedule can run (quant.noise_plan)."""

    low: int = Field(ge=MIN_NUM_STAGES)
    high: int = Field(ge=MIN_NUM_STAGES)

    @model_validator(mode="after")
    def _order(self) -> StagesRange:
        if self.low > self.high:
            raise ValueError(f"low must be <= high (got low={self.low}, high={self.high})")
        return self


class AlphaRange(_Model):
    """The multiplier exponent: 0 = uniform noise, 1 = proportional to the layer's error."""

    low: float = Field(ge=0)
    high: float = Field(ge=0)

    @model_validator(mode="after")
    def _order(self) -> AlphaRange:
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"low and high must be finite (got low={self.low}, high={self.high})")
        if self.low > self.high:
            raise ValueError(f"low must be <= high (got low={self.low}, high={self.high})")
        return self


class SpaceSpec(_Model):
    """Ranges of the five knobs (+ optional site). Defaults bracket the seeds' values.

    Seeds: sigma_start 0.01/0.03/0.05/0.08 (0.2 hurt on the tiny task), decay 100x or 10x or
    none, 5 or 10 stages, alpha 0 (uniform) or 1 (RIN-variable). The ranges leave room on both
    sides; `zones: auto` takes its choices from the profile, and so does alpha's default range
    (see sweep.space.default_alpha_high).
    """

    sigma_start: LogRange = Field(default_factory=lambda: LogRange(low=0.002, high=0.2))
    sigma_ratio: RatioRange = Field(default_factory=lambda: RatioRange(low=0.001, high=1.0))
    num_stages: StagesRange = Field(default_factory=lambda: StagesRange(low=3, high=12))
    zones: Literal["auto"] | list[str] = "auto"
    alpha: AlphaRange | None = None  # None: 0 .. a high that gives the worst layer up to 1.5x (sweep.space)
    site: list[Literal["rmsnorm", "linear"]] = Field(default_factory=lambda: ["rmsnorm"])

    @field_validator("zones", mode="before")
    @classmethod
    def _zones_shape(cls, v: Any) -> Any:
        if isinstance(v, str) and v != "auto":
            raise ValueError(f"must be 'auto' or a list of zone choices such as [all, high] (got {v!r})")
        return v

    @field_validator("zones")
    @classmethod
    def _zones(cls, v: Any) -> Any:
        if isinstance(v, list):
            if not v:
                raise ValueError("give at least one zone choice, or 'auto'")
            for choice in v:
                names = choice.split("+")
                if any(not n.strip() for n in names):
                    raise ValueError(f"empty zone name in {choice!r}")
                if "all" in names and len(names) > 1:
                    raise ValueError(f"'all' cannot be combined with other zones ({choice!r})")
            if len(set(v)) != len(v):
                raise ValueError(f"duplicate zone choices in {v}")
        return v

    @field_validator("site")
    @classmethod
    def _site(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one site (rmsnorm, linear)")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate sites in {v}")
        return v


# --------------------------------------------------------------------------- seed configs
class SeedConfig(_Model):
    """One hand-made config, enqueued before the sampler runs (exactly once per study).

    `zones` uses the profile's zone names joined by '+', `all`, or `worst` (the profile's
    highest-error zone). Give sigma_end or sigma_ratio (sigma_end / sigma_start).
    """

    name: str = Field(min_length=1)
    sigma_start: float = Field(gt=0)
    sigma_end: float | None = Field(None, gt=0)
    sigma_ratio: float | None = Field(None, gt=0, le=1)
    num_stages: int = Field(ge=MIN_NUM_STAGES)
    zones: str = "all"
    alpha: float = Field(0.0, ge=0)
    site: Literal["rmsnorm", "linear"] | None = None  # None: the space's first site
    source: str | None = None  # where the values come from (documentation only)

    @model_validator(mode="after")
    def _ratio(self) -> SeedConfig:
        if self.sigma_end is not None and self.sigma_ratio is not None:
            raise ValueError("give sigma_end or sigma_ratio, not both")
        if self.sigma_end is None and self.sigma_ratio is None:
            raise ValueError("give sigma_end or sigma_ratio")
        if self.sigma_end is not None and self.sigma_end > self.sigma_start:
            raise ValueError(f"sigma_end ({self.sigma_end}) must be <= sigma_start ({self.sigma_start})")
        return self

    @property
    def ratio(self) -> float:
        if self.sigma_ratio is not None:
            return self.sigma_ratio
        return float(self.sigma_end) / self.sigma_start  # type: ignore[arg-type]


_TRACKER = "seeds/000 (RIN experiment tracker) and seeds/001 (RIN experiment plan)"
# The seeds' five hand-made MXFP4 W4A4 configs, mapped onto the search space's knobs.
# All use QeRL's 10-stage schedule and the E12/E13 sigma 0.05 -> 0.0005 unless noted.
# E13i-high/-low (seeds/001 "Priority 2") raise/lower sigma for layers 10-19 only while the
# other layers keep 0.05 -> 0.0005; one shared schedule cannot hold two sigmas, so they become
# worst-zone-only runs at 0.08 -> 0.001 / 0.03 -> 0.0003, which keeps H2's comparison (more vs
# less noise in the worst zone, against E13i-targeted at 0.05) intact.
DEFAULT_SEED_CONFIGS: tuple[SeedConfig, ...] = (
    SeedConfig(
        name="E13i-baseline", sigma_start=0.05, sigma_end=0.0005, num_stages=10, zones="all", alpha=0.0,
        source=f"{_TRACKER}: global RIN, target_layers null (all), uniform sigma",
    ),
    SeedConfig(
        name="E13i-targeted", sigma_start=0.05, sigma_end=0.0005, num_stages=10, zones="worst", alpha=0.0,
        source=f"{_TRACKER}: target_layers 10-19 (the worst SRDD zone)",
    ),
    SeedConfig(
        name="E13i-high", sigma_start=0.08, sigma_end=0.001, num_stages=10, zones="worst", alpha=0.0,
        source="seeds/001 E13i-high: layers 10-19 at 0.08 -> 0.001 (H2a, escape)",
    ),
    SeedConfig(
        name="E13i-low", sigma_start=0.03, sigma_end=0.0003, num_stages=10, zones="worst", alpha=0.0,
        source="seeds/001 E13i-low: layers 10-19 at 0.03 -> 0.0003 (H2b, sufficient error)",
    ),
    SeedConfig(
        name="E13j-variable", sigma_start=0.05, sigma_end=0.0005, num_stages=10, zones="all", alpha=1.0,
        source="seeds/001 E13j-variable and seeds/002 strategy 2: multiplier = error / mean error",
    ),
)
DEFAULT_SEED_NAMES = tuple(s.name for s in DEFAULT_SEED_CONFIGS)


# --------------------------------------------------------------------------- other sections
class BudgetSpec(_Model):
    """Stop when either limit would be passed (compute-hours: GPU-hours on GPUs, else CPU-hours)."""

    trials: int | None = Field(None, gt=0)
    compute_hours: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _some(self) -> BudgetSpec:
        if self.trials is None and self.compute_hours is None:
            raise ValueError("give trials and/or compute_hours")
        return self


class PruningSpec(_Model):
    """ASHA (or a median rule) with rungs at the validation steps (None = the objective's)."""

    enabled: bool = True
    kind: Literal["asha", "median"] = "asha"
    rungs: list[int] | None = None
    reduction_factor: float = Field(2.0, gt=1)
    grace_step: int | None = Field(None, ge=1)  # None: the first rung

    @field_validator("rungs")
    @classmethod
    def _rungs(cls, v: list[int] | None) -> list[int] | None:
        if v is not None:
            if not v:
                raise ValueError("give at least one rung, or leave rungs out")
            if any(r < 1 for r in v):
                raise ValueError(f"rungs must be training steps >= 1 (got {v})")
            v = sorted(set(v))
        return v


class ResourcesSpec(_Model):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_concurrent: int = Field(1, ge=1)


class SamplerSpec(_Model):
    """prior = TPE with piBO-style prior sampling (sweep.prior); tpe; random."""

    kind: Literal["prior", "tpe", "random"] = "prior"
    seed: int | None = 0
    prior_weight: float = Field(4.0, ge=0)
    prior_scale: float = Field(0.15, gt=0, le=1)
    prior: dict[str, Any] | None = None  # override the profile-suggested center, by param name
    n_startup_trials: int = Field(5, ge=0)


class RacingSpec(_Model):
    """Racing (sweep.racing): more seeds for the incumbent and for challengers still competitive."""

    enabled: bool = True
    max_seeds: int = Field(5, ge=1)  # tuning seeds per config at most (trial_seed, trial_seed + 1, ...)
    incumbent_every: int = Field(3, ge=1)  # the incumbent's k-th seed waits for k x this many configs
    z: float = Field(1.0, ge=0)  # a challenger stays while within z standard errors on shared seeds
    noise_sd: float = Field(0.03, gt=0)  # one seed's sd until the study has replicates to measure it

    def policy(self, *, first_seed: int) -> Any:
        """The RacingPolicy of this section, None when racing is off."""
        if not self.enabled:
            return None
        from sweep.racing import RacingPolicy

        return RacingPolicy(
            max_seeds=self.max_seeds, first_seed=first_seed, incumbent_every=self.incumbent_every,
            z=self.z, default_noise_sd=self.noise_sd,
        )


class ConfirmSpec(_Model):
    top: int = Field(3, ge=1)
    seeds: int = Field(3, ge=1)


class BuiltinObjective(_Model):
    """The built-in trainer: `config` is a partial TrialConfig merged onto its defaults."""

    kind: Literal["builtin"]
    config: TrialConfig = Field(default_factory=TrialConfig)
    metric: str | None = None  # None: val-core/<task data source>/acc/mean@1


class CommandObjective(_Model):
    """The user's own trainer run as a command (objective.command.CommandSpec)."""

    kind: Literal["command"]
    command: Any
    metric: str | None = None  # None: the command spec's metric

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, v: Any) -> Any:
        try:
            from objective.command import CommandSpec
        except ImportError as exc:  # pragma: no cover - the module ships with the project
            raise ValueError(f"the command objective is unavailable ({exc})") from None
        if isinstance(v, CommandSpec):
            return v
        try:
            return CommandSpec.model_validate(v)
        except ValidationError as err:
            raise _Nested((), err) from None


Objective = Annotated[BuiltinObjective | CommandObjective, Discriminator("kind")]


class StudySpec(_Model):
    """A validated study file; `load_study` builds it (and loads the SRDD profile)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    storage: str = DEFAULT_STORAGE
    objective: Objective
    profile: str
    space: SpaceSpec = Field(default_factory=SpaceSpec)
    seed_configs: Literal["default"] | list[str | SeedConfig] = "default"
    budget: BudgetSpec = Field(default_factory=lambda: BudgetSpec(trials=20))  # no section: 20 trials
    pruning: PruningSpec = Field(default_factory=PruningSpec)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    confirm: ConfirmSpec = Field(default_factory=ConfirmSpec)
    racing: RacingSpec = Field(default_factory=RacingSpec)
    trial_seed: int = Field(0, ge=0)

    _source: Path | None = PrivateAttr(default=None)
    _profile: Any = PrivateAttr(default=None)

    @field_validator("storage")
    @classmethod
    def _storage(cls, v: str) -> str:
        if mask_url(v) != v:
            raise ValueError(
                f"the URL holds a password ({mask_url(v)}); put it in ${STORAGE_ENV} or --storage, not in a file"
            )
        return v

    @field_validator("seed_configs", mode="before")
    @classmethod
    def _seeds(cls, v: Any) -> Any:
        if v == "default":
            return v
        if not isinstance(v, list):
            raise ValueError(f"must be 'default' or a list of seed configs / seed config names (got {_fmt_value(v)})")
        out: list[str | SeedConfig] = []
        for i, item in enumerate(v):
            if isinstance(item, str):
                if item not in DEFAULT_SEED_NAMES:
                    raise ValueError(f"unknown seed config {item!r} (known: {', '.join(DEFAULT_SEED_NAMES)})")
                out.append(item)
            elif isinstance(item, (dict, SeedConfig)):
                try:
                    out.append(SeedConfig.model_validate(item))
                except ValidationError as err:
                    raise _Nested((i,), err) from None
            else:
                raise _Nested((i,), f"expected a seed config mapping or a name (got {_fmt_value(item)})")
        names = [s if isinstance(s, str) else s.name for s in out]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate seed config names {dup}")
        return out

    # ---- derived views the runner and the commands use
    @property
    def source_path(self) -> Path | None:
        """The study file this spec was read from (None when built in code)."""
        return self._source

    @property
    def profile_path(self) -> Path:
        """The profile path, relative paths resolved against the study file's folder."""
        p = Path(self.profile).expanduser()
        if not p.is_absolute() and self._source is not None:
            p = self._source.parent / p
        return p

    @property
    def srdd_profile(self) -> Any:
        """The loaded SrddProfile (loaded once; load_study already checked it)."""
        if self._profile is None:
            from quant.srdd import load_profile

            self._profile = load_profile(self.profile_path)
        return self._profile

    def seed_config_list(self) -> list[SeedConfig]:
        """The seed configs to enqueue, in order (`default` = the seeds' five)."""
        if self.seed_configs == "default":
            return list(DEFAULT_SEED_CONFIGS)
        by_name = {s.name: s for s in DEFAULT_SEED_CONFIGS}
        return [by_name[s] if isinstance(s, str) else s for s in self.seed_configs]

    @property
    def metric(self) -> str:
        """The metric whose value at the final validation is the objective."""
        obj = self.objective
        if obj.metric:
            return obj.metric
        if isinstance(obj, BuiltinObjective):
            return task_metric(obj.config.task.name)
        return str(getattr(obj.command, "metric", "val-core/openai/gsm8k/acc/mean@1"))

    def validation_steps(self) -> list[int] | None:
        """Training steps with a validation (> 0): the default pruning rungs. None = unknown."""
        obj = self.objective
        if isinstance(obj, BuiltinObjective):
            return [s for s in obj.config.steps.val_at if s > 0]
        steps = getattr(obj.command, "val_steps", None) or getattr(obj.command, "validation_steps", None)
        return [int(s) for s in steps if int(s) > 0] if steps else None

    def rungs(self) -> list[int] | None:
        """Pruning rungs: the configured ones, else every validation step before the last."""
        if self.pruning.rungs is not None:
            return list(self.pruning.rungs)
        steps = self.validation_steps()
        return steps[:-1] if steps else None

    def to_record(self) -> dict[str, Any]:
        """JSON-able spec for the study's `noisesweep_spec` attr (storage URL masked)."""
        data = self.model_dump(mode="json")
        data["storage"] = mask_url(self.storage)
        data["profile"] = str(self.profile_path)
        return data


# --------------------------------------------------------------------------- errors as one line
def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    text = repr(v) if isinstance(v, str) else json.dumps(v, default=str) if isinstance(v, (list, dict)) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."


def _error_line(e: dict[str, Any], prefix: tuple[Any, ...] = ()) -> tuple[str, str, str]:
    """(key path shown, message, full key path) of one pydantic error, descending into nested ones."""
    loc = tuple(prefix) + tuple(e.get("loc", ()))
    if not prefix and len(loc) > 1 and loc[0] == "objective" and loc[1] in ("builtin", "command"):
        loc = loc[:1] + loc[2:]  # the discriminated union's tag is not a key the user wrote
    ctx = e.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, _Nested):
        if isinstance(inner.error, ValidationError):
            return _error_line(_first(inner.error.errors()), loc + inner.loc)
        path = ".".join(str(p) for p in loc + inner.loc)
        return path, inner.error, path
    if isinstance(inner, ValidationError):
        return _error_line(_first(inner.errors()), loc)
    typ = e.get("type", "")
    got = e.get("input")
    # drop tags pydantic adds for unions: 'str', 'list[...]', 'literal[...]', 'function-after[...]'
    loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "float", "bool"))))
    path = ".".join(str(p) for p in loc)
    if typ == "extra_forbidden":
        parent = ".".join(str(p) for p in loc[:-1]) or "top level"
        return "", f"unknown key {str(loc[-1])!r} at {parent}", path
    if typ == "missing":
        return path, "missing required key", path
    if typ in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[typ]
        bound = next(iter(ctx.values())) if ctx else "?"
        bound = f"{bound:g}" if isinstance(bound, float) else bound
        return path, f"must be {op} {bound} (got {_fmt_value(got)})", path
    if typ == "union_tag_invalid":
        kind = path + (".kind" if path else "kind")
        return kind, f"unknown kind {ctx.get('tag')!r} (expected {ctx.get('expected_tags')})", kind
    if typ == "union_tag_not_found":
        kind = path + (".kind" if path else "kind")
        return kind, "missing required key (builtin or command)", kind
    if typ == "literal_error":
        return path, f"must be {ctx.get('expected')} (got {_fmt_value(got)})", path
    if typ == "finite_number":
        return path, f"must be a finite number (got {_fmt_value(got)})", path
    if typ == "string_pattern_mismatch":
        return path, f"must match {ctx.get('pattern')} (got {_fmt_value(got)})", path
    msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
    if typ.endswith("_type") or typ.endswith("_parsing"):
        msg = f"{msg} (got {_fmt_value(got)})"
    return path, msg.splitlines()[0], path


def _first(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The error to show: an unknown key first (a typo explains the 'missing' error beside it)."""
    return next((e for e in errors if e.get("type") == "extra_forbidden"), errors[0])


def format_validation_error(err: ValidationError, *, source: str, overridden: Sequence[str] = ()) -> str:
    """One line: `<file>: <key.path>: <message>` for the first error (+ how many more)."""
    errors = err.errors()
    path, msg, key = _error_line(_first(errors))
    line = f"{source}: {path}: {msg}" if path else f"{source}: {msg}"
    if key and any(key == o or key.startswith(o + ".") or o.startswith(key + ".") for o in overridden):
        line += " (set by --set)"
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more)"
    return line


# --------------------------------------------------------------------------- loading
def resolve_storage(spec: StudySpec, cli_url: str | None = None) -> str:
    """The storage URL to use: --storage flag > $NOISESWEEP_STORAGE > the study file's value.

    One rule for every command: this is `sweep.storage.resolve_url` with the spec's URL.
    """
    from sweep.storage import resolve_url

    return resolve_url(cli_url, spec.storage)


def _model_num_layers(spec: StudySpec) -> int | None:
    """Decoder-layer count of the builtin objective's model, when it can be read locally."""
    obj = spec.objective
    if not isinstance(obj, BuiltinObjective):
        return None
    path = obj.config.model.path
    if path == "tiny":
        try:
            from objective.tiny import TINY_CHECKPOINT_DIR
        except ImportError:
            return None
        cfg = Path(TINY_CHECKPOINT_DIR) / "config.json"
    else:
        cfg = Path(path).expanduser() / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
        return int(data.get("num_hidden_layers") or data.get("text_config", {}).get("num_hidden_layers"))
    except (ValueError, TypeError, OSError):
        return None


def check_profile(spec: StudySpec, profile: Any, *, source: str) -> None:
    """The profile must fit the study: known zone names, the model's depth, the quant format."""
    names = set(profile.zone_names())
    if isinstance(spec.space.zones, list):
        for choice in spec.space.zones:
            missing = [n for n in choice.split("+") if n != "all" and n not in names]
            if missing:
                raise UserError(
                    f"{source}: space.zones: zone {missing[0]!r} is not in the profile "
                    f"(profile zones: {', '.join(sorted(names)) or 'none'})"
                )
    for i, seed in enumerate(spec.seed_config_list()):
        missing = [n for n in seed.zones.split("+") if n not in ("all", "worst") and n not in names]
        if missing:
            raise UserError(
                f"{source}: seed_configs.{i}.zones: zone {missing[0]!r} is not in the profile "
                f"(profile zones: {', '.join(sorted(names)) or 'none'})"
            )
    n_layers = _model_num_layers(spec)
    if n_layers is not None and profile.num_layers != n_layers:
        raise UserError(
            f"{source}: profile: {spec.profile} has {profile.num_layers} layers but the model has {n_layers}"
        )
    obj = spec.objective
    if isinstance(obj, BuiltinObjective) and obj.config.quant.format not in ("none", profile.format):
        raise UserError(
            f"{source}: profile: {spec.profile} was measured for {profile.format}, "
            f"but objective.config.quant.format is {obj.config.quant.format}"
        )


def build_study(
    data: Any, *, source: str, study_path: Path | None = None, overrides: Sequence[str] = ()
) -> StudySpec:
    """Validate raw study data (already YAML-parsed) and load its profile.

    `study_path` is the file the data came from: relative profile paths resolve against its folder.
    """
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of study settings, got {type(data).__name__}")
    if overrides:
        data = apply_overrides(data, overrides)
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source=source, overridden=override_paths(overrides))) from None
    if study_path is not None:
        spec._source = Path(study_path).resolve()
    from quant.errors import ProfileError
    from quant.srdd import load_profile

    ppath = spec.profile_path
    if not ppath.is_file():
        raise UserError(f"{source}: profile: no such file {spec.profile} (looked at {ppath})")
    try:
        spec._profile = load_profile(ppath)
    except ProfileError as exc:
        raise UserError(f"{source}: profile: {exc}") from None
    check_profile(spec, spec._profile, source=source)
    from sweep.space import SearchSpace

    try:  # zones choices, seed configs and the prior's center must fit the profile too
        SearchSpace.from_spec(spec, spec._profile).prior_params()
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    return spec


def preflight(spec: StudySpec) -> None:
    """Check the paths a trial will open (model, data, command folder) before a sweep starts.

    Kept out of `load_study` so a study for another machine (the GPU study's placeholder model
    path) can still be loaded, inspected and exported here. UserError naming the key when missing.
    """
    source = str(spec.source_path or spec.name)
    obj = spec.objective
    if isinstance(obj, BuiltinObjective):
        try:
            check_trial_paths(obj.config)
        except UserError as exc:
            raise UserError(f"{source}: objective.config.{exc}") from None
    else:
        cwd = getattr(obj.command, "cwd", None)
        if cwd and not Path(cwd).expanduser().is_dir():
            raise UserError(f"{source}: objective.command.cwd: no such folder {cwd}")
        script = missing_script(obj.command.command, cwd)
        if script:
            raise UserError(f"{source}: objective.command.command: no such script {script}")


SCRIPT_SUFFIXES = (".py", ".sh", ".bash")


def missing_script(command: Sequence[str] | str, cwd: str | None) -> str | None:
    """The first script-like argument (`*.py`, `*.sh`) of a command that does not exist, if any.

    Without this a mistyped trainer script would launch Ray and record a failed trial per config.
    Only arguments that look like paths to scripts are checked; everything else (flags, Hydra
    overrides, `python -m module`) passes through untouched.
    """
    args = shlex.split(command) if isinstance(command, str) else list(command)
    base = Path(cwd).expanduser() if cwd else Path.cwd()
    for arg in args:
        if "=" in arg or arg.startswith("-") or not arg.endswith(SCRIPT_SUFFIXES):
            continue
        path = Path(arg).expanduser()
        if not (path if path.is_absolute() else base / path).is_file():
            return arg
    return None


def check_trial_paths(config: TrialConfig) -> None:
    """model.path and the task files of a trainer config exist (UserError `key: problem`)."""
    if config.model.path != "tiny" and not Path(config.model.path).expanduser().is_dir():
        raise UserError(f"model.path: no such model folder {config.model.path} (a local Hugging Face directory)")
    for key in ("train_path", "val_path"):
        value = getattr(config.task, key)
        if value and not Path(value).expanduser().is_file():
            raise UserError(f"task.{key}: no such file {value}")


def load_study(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> StudySpec:
    """Read, override (`--set key=value`), validate a study file and load its SRDD profile."""
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{source}: no such study file")
    data = load_yaml_file(p)
    if is_trainer_config(data):
        raise UserError(f"{source}: this is a trainer config (run it with noisesweep trial), not a study file")
    return build_study(data, source=source, study_path=p, overrides=overrides)


# --------------------------------------------------------------------------- trainer-config documents
def is_trainer_config(data: Any) -> bool:
    """True for a document written by `noisesweep export --format yaml`."""
    return isinstance(data, dict) and TRAINER_CONFIG_MARKER in data


def trainer_config_document(config: TrialConfig, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """The export format `noisesweep trial` reads back: marker, optional provenance, the config."""
    doc: dict[str, Any] = {TRAINER_CONFIG_MARKER: TRAINER_CONFIG_VERSION}
    if source:
        doc["source"] = source
    doc.update(config.model_dump(mode="json"))
    return doc


def parse_trainer_config(data: dict[str, Any], *, source: str, overrides: Sequence[str] = ()) -> TrialConfig:
    """Validate a trainer-config document (after `--set` overrides) into a TrialConfig."""
    body = dict(data)
    version = body.pop(TRAINER_CONFIG_MARKER, None)
    if version != TRAINER_CONFIG_VERSION:
        raise UserError(f"{source}: {TRAINER_CONFIG_MARKER}: unsupported version {version!r} (expected 1)")
    body.pop("source", None)
    if overrides:
        body = apply_overrides(body, overrides)
    try:
        return TrialConfig.model_validate(body)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source=source, overridden=override_paths(overrides))) from None
