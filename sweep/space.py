"""The search space, seeded from the SRDD profile: params, seed configs, prior, sampler.

Trial params (names fixed by docs/CONTRACTS.md): `sigma_start` (log), `sigma_ratio` (log, in
(0, 1]; sigma_end = sigma_start * sigma_ratio, so the schedule never grows), `num_stages`
(int >= 3), `zones` (`all` or profile zone names joined by `+`), `alpha` (>= 0) and, when
more than one site is searched, `site`. `plan(params)` turns params into the trial's
quant.noise_plan.NoisePlan (sigma_end, per-layer multipliers), built and validated once; `define`
returns it under PLAN_ATTR as a constant of Ray's trial config, and it lands in user_attrs.

Zones `auto`: the profile's zones ranked by mean error, worst first, taken cumulatively
(worst, worst+next, ...) plus `all`: the seeds' "targeted" and "global" choices and the
3-tier steps between them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from objective.config import NoiseCfg, TrialConfig
from quant.noise_plan import PLAN_ATTR, NoisePlan
from sweep.errors import UserError
from sweep.study import BuiltinObjective, CommandObjective, SeedConfig, StudySpec

if TYPE_CHECKING:
    from quant.srdd import SrddProfile

PARAM_NAMES = ("sigma_start", "sigma_ratio", "num_stages", "zones", "alpha", "site")

# The profile-suggested center of the prior (piBO's "user belief"), from the seeds' best evidence:
# E12 (72.48 %, the best LoRA run) used sigma 0.05 -> 0.0005 over 10 stages with SRDD-variable
# multipliers (alpha 1); the seeds' 3-tier strategy puts the noise on the high + medium tiers.
PRIOR_CENTER = {"sigma_start": 0.05, "sigma_ratio": 0.01, "num_stages": 10, "alpha": 1.0}


# Default alpha range: 0 (uniform) up to the exponent at which the worst layer gets MAX_SPREAD x
# the mean noise, so alpha means the same on a flat profile (the tiny model: errors within 2 %)
# as on a steep one (Qwen2.5-1.5B: worst layer 1.17x the mean -> alpha up to 2.6).
MAX_SPREAD = 1.5
ALPHA_HIGH_BOUNDS = (2.0, 25.0)


def default_alpha_high(errors: list[float]) -> float:
    """alpha at which max(e)/mean(e) reaches MAX_SPREAD, within ALPHA_HIGH_BOUNDS (1 decimal)."""
    mean = sum(errors) / len(errors)
    top = max(errors) / mean if mean > 0 else 1.0
    if top <= 1.0 + 1e-9:
        return ALPHA_HIGH_BOUNDS[0]
    a = math.log(MAX_SPREAD) / math.log(top)
    return round(min(max(a, ALPHA_HIGH_BOUNDS[0]), ALPHA_HIGH_BOUNDS[1]), 1)


def _clamp(v: float, lo: float, hi: float) -> float:
    return min(max(v, lo), hi)


def _number(value: Any, where: str) -> float:
    """`value` as a finite float, else a UserError naming `where` (NaN/inf would reach the trainer)."""
    if isinstance(value, bool):
        raise UserError(f"{where}: must be a number (got {value!r})")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: must be a number (got {value!r})") from None
    if not math.isfinite(v):
        raise UserError(f"{where}: must be a finite number (got {value!r})")
    return v


class SearchSpace:
    """A study's search space over one SRDD profile (see the module docstring)."""

    def __init__(self, spec: StudySpec, profile: SrddProfile) -> None:
        self.spec = spec
        self.profile = profile
        self.errors: list[float] = list(profile.errors())
        self.num_layers = len(self.errors)
        self._zones = {z.name: sorted(int(i) for i in z.layers) for z in profile.zones}
        self.zone_rank = self._rank_zones()
        self.zone_choices: list[str] = self._zone_choices()
        self.sites: list[str] = list(spec.space.site)
        sp = spec.space
        self.alpha_range = (sp.alpha.low, sp.alpha.high) if sp.alpha else (0.0, default_alpha_high(self.errors))
        self.distributions: dict[str, BaseDistribution] = {
            "sigma_start": FloatDistribution(sp.sigma_start.low, sp.sigma_start.high, log=True),
            "sigma_ratio": FloatDistribution(sp.sigma_ratio.low, sp.sigma_ratio.high, log=True),
            "num_stages": IntDistribution(sp.num_stages.low, sp.num_stages.high),
            "zones": CategoricalDistribution(self.zone_choices),
            "alpha": FloatDistribution(*self.alpha_range),
        }
        if len(self.sites) > 1:
            self.distributions["site"] = CategoricalDistribution(self.sites)
        self.notes: list[str] = []  # how seed configs were fitted into the ranges
        self._seeds = self._fit_seeds(spec.seed_config_list())

    @classmethod
    def from_spec(cls, spec: StudySpec, profile: SrddProfile | None = None) -> SearchSpace:
        """Build the space from a validated spec and its profile (default: the spec's own)."""
        return cls(spec, profile if profile is not None else spec.srdd_profile)

    # ------------------------------------------------------------------ zones
    def _rank_zones(self) -> list[str]:
        """Zone names, highest mean relative error first."""

        def mean_err(name: str) -> float:
            layers = self._zones[name]
            return sum(self.errors[i] for i in layers) / len(layers) if layers else -math.inf

        return sorted(self._zones, key=lambda n: (-mean_err(n), n))

    def _zone_choices(self) -> list[str]:
        zones = self.spec.space.zones
        if zones != "auto":
            return list(zones)
        choices = ["all"]
        ranked = [n for n in self.zone_rank if self._zones[n]]
        for k in range(1, len(ranked)):  # all k zones together is `all`, already listed
            choices.append("+".join(ranked[:k]))
        return choices

    def zone_layers(self, zones: str) -> set[int] | None:
        """Layer indices of a zones expression (`all` -> None, i.e. every layer)."""
        names = zones.split("+")
        if names == ["all"]:
            return None
        layers: set[int] = set()
        for n in names:
            if n == "worst":
                n = self.zone_rank[0]
            if n not in self._zones:
                known = ", ".join(self._zones) or "none"
                raise UserError(f"zones: {n!r} is not a zone of the profile (zones: {known})")
            layers.update(self._zones[n])
        return layers

    def _choice_for(self, zones: str) -> str | None:
        """The zones choice covering the same layers as `zones` (None: not searchable)."""
        want = self.zone_layers(zones)
        want = set(range(self.num_layers)) if want is None else want
        for choice in self.zone_choices:
            got = self.zone_layers(choice)
            if (set(range(self.num_layers)) if got is None else got) == want:
                return choice
        return None

    # ------------------------------------------------------------------ seeds
    def _fit_seeds(self, seeds: list[SeedConfig]) -> list[tuple[str, dict[str, Any]]]:
        out: list[tuple[str, dict[str, Any]]] = []
        for seed in seeds:
            choice = self._choice_for(seed.zones)
            if choice is None:
                self.notes.append(f"seed config {seed.name} skipped: zones {seed.zones!r} is not among {self.zone_choices}")
                continue
            params: dict[str, Any] = {
                "sigma_start": seed.sigma_start,
                "sigma_ratio": seed.ratio,
                "num_stages": seed.num_stages,
                "zones": choice,
                "alpha": seed.alpha,
            }
            if "site" in self.distributions:
                site = seed.site or self.sites[0]
                if site not in self.sites:
                    self.notes.append(f"seed config {seed.name}: site {site} not searched, using {self.sites[0]}")
                    site = self.sites[0]
                params["site"] = site
            elif seed.site is not None and seed.site != self.sites[0]:
                self.notes.append(f"seed config {seed.name}: site {seed.site} not searched, using {self.sites[0]}")
            for name in ("sigma_start", "sigma_ratio", "num_stages", "alpha"):
                dist = self.distributions[name]
                v = params[name]
                c = _clamp(v, dist.low, dist.high)  # type: ignore[attr-defined]
                if isinstance(dist, IntDistribution):
                    c = int(round(c))
                if c != v:
                    self.notes.append(f"seed config {seed.name}: {name} {v} clamped to {c} (outside space.{name})")
                    params[name] = c
            dup = next((n for n, p in out if p == params), None)
            if dup is not None:
                self.notes.append(f"seed config {seed.name} skipped: same params as {dup} after clamping")
                continue
            out.append((seed.name, params))
        return out

    def seed_configs(self) -> list[tuple[str, dict[str, Any]]]:
        """(name, params) of the hand-made configs to enqueue first, inside the distributions."""
        return [(n, dict(p)) for n, p in self._seeds]

    # ------------------------------------------------------------------ prior
    def prior_params(self) -> dict[str, Any]:
        """The profile-suggested config the prior sampler centers on (see PRIOR_CENTER).

        Zones: the two worst zones together (the seeds' high + medium tiers), else the worst
        alone, else the first choice; `sampler.prior` in the study overrides any value.
        """
        center: dict[str, Any] = dict(PRIOR_CENTER)
        ranked = [n for n in self.zone_rank if self._zones[n]]
        zones = None
        for k in (2, 1):
            if len(ranked) >= k:
                zones = self._choice_for("+".join(ranked[:k]))
                if zones is not None:
                    break
        center["zones"] = zones or self.zone_choices[0]
        if "site" in self.distributions:
            center["site"] = self.sites[0]
        given = dict(self.spec.sampler.prior or {})
        if "sigma_end" in given:  # after sigma_start, whatever the order in the file
            if "sigma_ratio" in given:
                raise UserError("sampler.prior: give sigma_end or sigma_ratio, not both")
            end = _number(given.pop("sigma_end"), "sampler.prior.sigma_end")
            start = _number(given.get("sigma_start", center["sigma_start"]), "sampler.prior.sigma_start")
            if not 0 < end <= start or start <= 0:
                raise UserError(f"sampler.prior.sigma_end: must be in (0, sigma_start={start:g}] (got {end:g})")
            given["sigma_ratio"] = end / start
        for key, value in given.items():
            if key not in self.distributions:
                raise UserError(f"sampler.prior: unknown parameter {key!r} (known: {', '.join(self.distributions)})")
            center[key] = value
        for name, dist in self.distributions.items():
            v = center[name]
            if isinstance(dist, CategoricalDistribution):
                if v not in dist.choices:
                    raise UserError(f"sampler.prior.{name}: {v!r} is not among {list(dist.choices)}")
            else:  # a center outside the searched range is pulled to its edge
                v = _clamp(_number(v, f"sampler.prior.{name}"), dist.low, dist.high)  # type: ignore[attr-defined]
                center[name] = int(round(v)) if isinstance(dist, IntDistribution) else v
        return center

    def make_sampler(self, seed: int | None = None) -> optuna.samplers.BaseSampler:
        """The sampler named by `spec.sampler` (seed: the argument, else the spec's)."""
        cfg = self.spec.sampler
        seed = cfg.seed if seed is None else seed
        if cfg.kind == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        base: optuna.samplers.BaseSampler
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if cfg.kind in ("gp", "gp-prior"):
                # Optuna's GP with a learned noise variance (deterministic_objective=False): replicates
                # of one config are pooled as noisy observations of one value, not trusted one by one.
                base = optuna.samplers.GPSampler(
                    seed=seed, n_startup_trials=cfg.n_startup_trials, deterministic_objective=False,
                    warn_independent_sampling=False,
                )
            else:
                base = optuna.samplers.TPESampler(
                    multivariate=True,
                    group=True,
                    constant_liar=True,
                    seed=seed,
                    n_startup_trials=cfg.n_startup_trials,
                )
        if cfg.kind in ("tpe", "gp"):
            return base
        from sweep.prior import PriorGuidedSampler

        return PriorGuidedSampler(
            base, self.prior_params(), prior_scale=cfg.prior_scale, weight=cfg.prior_weight, seed=seed
        )

    # ------------------------------------------------------------------ trials
    def define(self, trial: optuna.trial.Trial) -> dict[str, Any]:
        """Define-by-run space for Ray's OptunaSearch: suggest the params, return {PLAN_ATTR: plan dict}."""
        d = self.distributions
        params: dict[str, Any] = {
            "sigma_start": trial.suggest_float("sigma_start", d["sigma_start"].low, d["sigma_start"].high, log=True),
            "sigma_ratio": trial.suggest_float("sigma_ratio", d["sigma_ratio"].low, d["sigma_ratio"].high, log=True),
            "num_stages": trial.suggest_int("num_stages", d["num_stages"].low, d["num_stages"].high),
            "zones": trial.suggest_categorical("zones", self.zone_choices),
            "alpha": trial.suggest_float("alpha", d["alpha"].low, d["alpha"].high),
        }
        if "site" in d:
            params["site"] = trial.suggest_categorical("site", self.sites)
        return {PLAN_ATTR: self.plan(params).to_dict()}

    def normalize(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Complete and check a params dict (also accepts sigma_end instead of sigma_ratio).

        Used for `noisesweep trial --params`: any zones expression of the profile is accepted,
        not only the searched choices; values outside the ranges are allowed (a hand-run trial).
        """
        p = dict(params)
        unknown = sorted(set(p) - set(PARAM_NAMES) - {"sigma_end"})
        if unknown:
            raise UserError(f"params: unknown parameter {unknown[0]!r} (known: {', '.join(PARAM_NAMES)}, sigma_end)")
        if "sigma_end" in p and "sigma_ratio" in p:
            raise UserError("params: give sigma_end or sigma_ratio, not both")
        sigma_end = p.pop("sigma_end", None)
        out = self.prior_params()
        out.update(p)
        if sigma_end is not None:
            start = _number(out["sigma_start"], "params: sigma_start")
            end = _number(sigma_end, "params: sigma_end")
            out["sigma_ratio"] = end / start if start > 0 else 1.0
        out.setdefault("site", self.sites[0])
        for key in ("sigma_start", "sigma_ratio", "alpha"):
            out[key] = _number(out[key], f"params: {key}")
        if not out["sigma_start"] > 0:
            raise UserError(f"params: sigma_start must be > 0 (got {out['sigma_start']})")
        if not 0 < out["sigma_ratio"] <= 1:
            raise UserError(f"params: sigma_ratio must be in (0, 1] (got {out['sigma_ratio']}); sigma_end <= sigma_start")
        if out["alpha"] < 0:
            raise UserError(f"params: alpha must be >= 0 (got {out['alpha']})")
        if out["site"] not in ("rmsnorm", "linear"):
            raise UserError(f"params: site must be rmsnorm or linear (got {out['site']!r})")
        self.zone_layers(str(out["zones"]))  # raises for an unknown zone
        try:
            self.plan(out)
        except ValueError as exc:
            raise UserError(f"params: {exc}") from None
        return out

    def plan(self, params: Mapping[str, Any]) -> NoisePlan:
        """The NoisePlan of a params dict: zones resolved on the profile, multipliers from alpha.

        The one place params become noise; ValueError (one line) for a config no trial can run.
        """
        zones = str(params["zones"])
        return NoisePlan.build(
            sigma_start=params["sigma_start"],
            sigma_ratio=params["sigma_ratio"],
            num_stages=params["num_stages"],
            zones=zones,
            zone_layers=self.zone_layers(zones),
            alpha=float(params["alpha"]),
            errors=self.errors,
            site=params.get("site", self.sites[0]),
        )

    def _plan_of(self, plan_or_params: NoisePlan | Mapping[str, Any]) -> NoisePlan:
        return plan_or_params if isinstance(plan_or_params, NoisePlan) else self.plan(plan_or_params)

    def to_trial_config(self, plan_or_params: NoisePlan | Mapping[str, Any], *, seed: int) -> TrialConfig:
        """The builtin objective's fixed config with its noise section from the plan (or params)."""
        obj = self.spec.objective
        if not isinstance(obj, BuiltinObjective):
            raise UserError("to_trial_config: the study's objective is a command; use to_command_values")
        plan = self._plan_of(plan_or_params)
        return obj.config.model_copy(
            update={"seed": int(seed), "noise": NoiseCfg.from_plan(plan, apply_to=obj.config.noise.apply_to)}
        )

    def to_command_values(self, plan_or_params: NoisePlan | Mapping[str, Any], *, seed: int) -> dict[str, Any]:
        """Values a command objective maps to its overrides (names as in `param_map`).

        The plan's fields (`sigma_start`, `sigma_end`, `sigma_ratio`, `num_stages`, `zones`,
        `alpha`, `site`), `multipliers` (list), `layer_multipliers` (the fork's {layer:
        multiplier} dict), `target_layers` (layer list, None = all) and `seed`.
        """
        if not isinstance(self.spec.objective, CommandObjective):
            raise UserError("to_command_values: the study's objective is the builtin trainer; use to_trial_config")
        plan = self._plan_of(plan_or_params)
        layers = self.zone_layers(plan.zones)
        return {
            "sigma_start": plan.sigma_start,
            "sigma_end": plan.sigma_end,
            "sigma_ratio": plan.sigma_ratio,
            "num_stages": plan.num_stages,
            "zones": plan.zones,
            "alpha": plan.alpha,
            "site": plan.site,
            "multipliers": list(plan.multipliers or ()),
            "layer_multipliers": plan.multipliers_dict(),
            "target_layers": None if layers is None else sorted(layers),
            "seed": int(seed),
        }
