"""The study file's schema (studies/*.yaml): one validated description of a sweep.

Sections (all models forbid unknown keys):
  name, storage, objective (builtin trainer config or a user command), profile (SRDD JSON,
  relative to the study file), space (ranges; defaults from the seed experiments and the
  profile), seed_configs (hand-made configs, enqueued first), budget, pruning, resources,
  sampler, confirm, trial_seed.

Loading a file (overrides, the profile, the fit checks) is sweep.study_loader; checking the
paths a trial opens is sweep.preflight; the trainer-config document is sweep.trainer_config_doc.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import (
    Discriminator,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from objective.config import TrialConfig
from quant.noise_plan import MIN_NUM_STAGES
from sweep.schema_base import NestedError, StrictModel, fmt_value
from sweep.secrets import mask_url
from sweep.seed_data import SEED_CONFIG_DATA

if TYPE_CHECKING:
    from quant.srdd import SrddProfile

DEFAULT_STORAGE = "sqlite:///noisesweep.db"
STORAGE_ENV = "NOISESWEEP_STORAGE"
SITES = ("rmsnorm", "linear")

# Objective metric per built-in task (verl's naming: val-core/<data_source>/acc/mean@1).
TASK_DATA_SOURCES = {"tiny-arith": "tiny-arith", "gsm8k": "openai/gsm8k"}


def task_metric(task_name: str) -> str:
    """The built-in trainer's objective metric for a task (verl's validation accuracy key)."""
    return f"val-core/{TASK_DATA_SOURCES.get(task_name, task_name)}/acc/mean@1"


# --------------------------------------------------------------------------- the search space
class LogRange(StrictModel):
    """A positive float range searched on a log scale; low < high."""

    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _order(self) -> LogRange:
        if self.low >= self.high:
            raise ValueError(f"low must be < high (got low={self.low}, high={self.high})")
        return self


class RatioRange(LogRange):
    """sigma_end / sigma_start, on a log scale in (0, 1]: 1 = constant sigma (no decay)."""

    high: float = Field(gt=0, le=1)


class StagesRange(StrictModel):
    """num_stages: the range must hold only plans QeRL's schedule can run (quant.noise_plan)."""

    low: int = Field(ge=MIN_NUM_STAGES)
    high: int = Field(ge=MIN_NUM_STAGES)

    @model_validator(mode="after")
    def _order(self) -> StagesRange:
        if self.low > self.high:
            raise ValueError(f"low must be <= high (got low={self.low}, high={self.high})")
        return self


class AlphaRange(StrictModel):
    """The multiplier exponent: 0 = uniform noise, 1 = proportional to the layer's error."""

    low: float = Field(ge=0)
    high: float = Field(ge=0)

    @model_validator(mode="after")
    def _order(self) -> AlphaRange:
        if self.low > self.high:
            raise ValueError(f"low must be <= high (got low={self.low}, high={self.high})")
        return self


class SpaceSpec(StrictModel):
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
class SeedConfig(StrictModel):
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


# The seed experiments' five hand-made configs (sweep.seed_data), validated like a study's own.
DEFAULT_SEED_CONFIGS: tuple[SeedConfig, ...] = tuple(SeedConfig(**d) for d in SEED_CONFIG_DATA)
DEFAULT_SEED_NAMES = tuple(s.name for s in DEFAULT_SEED_CONFIGS)


# --------------------------------------------------------------------------- other sections
class BudgetSpec(StrictModel):
    """Stop when either limit would be passed (compute-hours: GPU-hours on GPUs, else CPU-hours)."""

    trials: int | None = Field(None, gt=0)
    compute_hours: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _some(self) -> BudgetSpec:
        if self.trials is None and self.compute_hours is None:
            raise ValueError("give trials and/or compute_hours")
        return self


# Default pruning rungs start at this fraction of the run (see StudySpec.rungs for the measurement).
LATE_RUNG_FRACTION = 0.75


class PruningSpec(StrictModel):
    """ASHA (or a median rule) with rungs at validation steps (None = the objective's late ones)."""

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


class ResourcesSpec(StrictModel):
    cpus_per_trial: float = Field(1.0, gt=0)
    gpus_per_trial: float = Field(0.0, ge=0)
    max_concurrent: int = Field(1, ge=1)


class SamplerSpec(StrictModel):
    """gp-prior = piBO-style prior sampling (sweep.prior) over Optuna's noise-aware GP; prior = the
    same prior over TPE; tpe; gp; random.

    Why gp-prior is the default: on real tiny trials (bench/search_quality.py, bench/RESULTS.md)
    it was never behind TPE + prior in 12 paired sweeps (9 chose the same config, 3 favoured the
    GP by 0.6-1.1 points), and it is the noise-aware model. The evidence is weak; so is the cost
    (~0.07 s per ask at 20 trials).
    """

    kind: Literal["prior", "gp-prior", "tpe", "gp", "random"] = "gp-prior"
    seed: int | None = 0
    prior_weight: float = Field(4.0, ge=0)
    prior_scale: float = Field(0.15, gt=0, le=1)
    prior: dict[str, Any] | None = None  # override the profile-suggested center, by param name
    n_startup_trials: int = Field(5, ge=0)


class RacingSpec(StrictModel):
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


class ConfirmSpec(StrictModel):
    top: int = Field(3, ge=1)
    seeds: int = Field(3, ge=1)


class BuiltinObjective(StrictModel):
    """The built-in trainer: `config` is a partial TrialConfig merged onto its defaults."""

    kind: Literal["builtin"]
    config: TrialConfig = Field(default_factory=TrialConfig)
    metric: str | None = None  # None: val-core/<task data source>/acc/mean@1


class CommandObjective(StrictModel):
    """The user's own trainer run as a command (objective.command.CommandSpec)."""

    kind: Literal["command"]
    command: Any  # an objective.command.CommandSpec (see _command); Any keeps that import lazy
    metric: str | None = None  # None: the command spec's metric

    @field_validator("command", mode="before")
    @classmethod
    def _command(cls, v: Any) -> Any:
        from objective.command import (
            CommandSpec,  # lazily: the schema loads without the runner
        )

        if isinstance(v, CommandSpec):
            return v
        try:
            return CommandSpec.model_validate(v)
        except ValidationError as err:
            raise NestedError((), err) from None


Objective = Annotated[BuiltinObjective | CommandObjective, Discriminator("kind")]


class StudySpec(StrictModel):
    """A validated study file; `load_study` builds it (and loads the SRDD profile)."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    storage: str = DEFAULT_STORAGE
    storage_outage_s: float = Field(600.0, gt=0)  # ride out a storage outage this long (sweep.outage)
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
    _profile: SrddProfile | None = PrivateAttr(default=None)

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
            raise ValueError(f"must be 'default' or a list of seed configs / seed config names (got {fmt_value(v)})")
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
                    raise NestedError((i,), err) from None
            else:
                raise NestedError((i,), f"expected a seed config mapping or a name (got {fmt_value(item)})")
        names = [s if isinstance(s, str) else s.name for s in out]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate seed config names {dup}")
        return out

    @model_validator(mode="after")
    def _measures_what_it_says(self) -> StudySpec:
        """Settings that would silently change what is measured are errors, not surprises.

        Pruning rungs must be validation steps before the final one (a rung with no validation
        never fires; one at the final step would cut finished trials), and a vLLM rollout cannot
        serve `site: linear` (objective.rollout.checks), so a space that can pick it would fail
        about half its trials at their start.
        """
        obj = self.objective
        if not isinstance(obj, BuiltinObjective):
            return self
        steps = obj.config.steps
        if self.pruning.enabled and self.pruning.rungs is not None:
            allowed = [s for s in steps.val_at if 0 < s < steps.total]
            bad = [r for r in self.pruning.rungs if r not in allowed]
            if bad:
                raise NestedError(
                    ("pruning", "rungs"),
                    f"{bad} are not validation steps before the final step {steps.total} (validation steps: {allowed})",
                )
        from objective.rollout.checks import check_noise_sites

        try:
            check_noise_sites(obj.config.rollout.backend, self.space.site, where="space.site")
        except ValueError as exc:
            raise NestedError((), str(exc)) from None
        return self

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
    def srdd_profile(self) -> SrddProfile:
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
        return None  # a command's validation steps are known only from what it reports

    def rungs(self) -> list[int] | None:
        """Pruning rungs: the configured ones, else the late validation steps before the last.

        Why late only: on 40 real 20-step tiny trials (bench/pruning_noise.py, bench/RESULTS.md) the
        step-5 and step-10 values rank the final one no better than chance (Spearman 0.01, 0.08),
        step 15 does (0.50); ASHA on 5/10/15 cut the top-quartile trials as often as any trial
        (79 % vs 80 %), on 15 alone 29 % vs 46 %. So the default rungs are the validation steps from
        LATE_RUNG_FRACTION of the run on, or the last one before the final if none is that late.
        """
        if self.pruning.rungs is not None:
            return list(self.pruning.rungs)
        steps = self.validation_steps()
        if not steps or len(steps) < 2:
            return None
        before_final = steps[:-1]
        late = [s for s in before_final if s >= LATE_RUNG_FRACTION * steps[-1]]
        return late or before_final[-1:]

    def to_record(self) -> dict[str, Any]:
        """JSON-able spec for the study's `noisesweep_spec` attr (storage URL masked)."""
        data = self.model_dump(mode="json")
        data["storage"] = mask_url(self.storage)
        data["profile"] = str(self.profile_path)
        return data
