"""NoisePlan: the one frozen, validated description of the noise a trial injects.

Every consumer reads this object: the built-in trainer's `noise` section, the command
objective's Hydra overrides, the exports, the report and the dashboard. It is built once from
a trial's searched params and the SRDD profile (`NoisePlan.build`), validated once (here, in
`__post_init__`), and travels as a plain dict (`to_dict` / `from_dict`) through Ray's trial
config and Optuna's user_attrs.

The schedule math is QeRL's (NVlabs/QeRL `trl_trainer/noise_scheduler.py`): `num_stages` equal
intervals of the real run, interval 0 noise-free, then a geometric decay from sigma_start to
sigma_end, hence num_stages >= MIN_NUM_STAGES. Per-layer multipliers follow the seeds'
RIN-variable rule m_l = (e_l / mean e)^alpha inside the target zones, 0 outside.

Pure Python on purpose: the sweep driver builds plans without importing torch.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

Site = Literal["rmsnorm", "linear"]
SITES: tuple[Site, ...] = ("rmsnorm", "linear")

# The one name of a plan in Ray's trial config and in an Optuna trial's user_attrs.
PLAN_ATTR = "noise_plan"

# Interval 0 is noise-free and the decay needs two more intervals to have a start and an end.
MIN_NUM_STAGES = 3


def check_schedule(sigma_start: float, sigma_end: float, num_stages: int, *, decaying: bool = True) -> None:
    """Raise ValueError (one line) unless (sigma_start, sigma_end, num_stages) is a QeRL schedule.

    The single home of the schedule's rules: finite sigmas >= 0, sigma_end <= sigma_start (the
    schedule only decays; constant sigma is sigma_end == sigma_start), an integer num_stages >=
    MIN_NUM_STAGES, and no geometric decay from 0. `decaying=False` admits a growing schedule
    (`sigma_at` computes one; a NoisePlan never holds one).
    """
    if isinstance(num_stages, bool) or not isinstance(num_stages, int) or num_stages < MIN_NUM_STAGES:
        raise ValueError(
            f"num_stages must be an integer >= {MIN_NUM_STAGES} (interval 0 is noise-free), got {num_stages!r}"
        )
    for name, value in (("sigma_start", sigma_start), ("sigma_end", sigma_end)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if sigma_start == 0 and sigma_end != 0:
        raise ValueError("sigma_start is 0 but sigma_end is not: a geometric schedule cannot start at 0")
    if decaying and sigma_end > sigma_start:
        raise ValueError(f"sigma_end ({sigma_end:g}) > sigma_start ({sigma_start:g}); the schedule only decays")


def sigma_at(step: int, total_steps: int, sigma_start: float, sigma_end: float, num_stages: int) -> float:
    """QeRL's staged schedule: `num_stages` equal intervals of the real run length.

    k = floor(min(step, total) / (total / num_stages)), capped at num_stages - 1, computed in
    integers (min(step, total) * num_stages // total) so interval edges never wobble by float
    rounding. k == 0 -> 0.0 (quantization noise only); k >= 1 ->
    sigma_start * (sigma_end / sigma_start) ** ((k - 1) / (num_stages - 2)).
    `total_steps` must be the run's real step count: a run cut short must still reach the last stage.
    """
    check_schedule(sigma_start, sigma_end, num_stages, decaying=False)
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    k = min(min(step, total_steps) * num_stages // total_steps, num_stages - 1)
    if k == 0:
        return 0.0
    if sigma_start == sigma_end:
        return float(sigma_start)
    return float(sigma_start * (sigma_end / sigma_start) ** ((k - 1) / (num_stages - 2)))


def layer_multipliers(errors: Sequence[float], zone_layers: set[int] | None, alpha: float) -> list[float]:
    """m_l = (e_l / mean(e)) ** alpha inside the zones (None = every layer), 0.0 outside.

    The mean runs over all layers, so a zone's multipliers do not depend on which zones are on.
    """
    errs = [float(e) for e in errors]
    if not errs:
        raise ValueError("layer_multipliers needs at least one per-layer error, got none")
    bad = [i for i, e in enumerate(errs) if not math.isfinite(e) or e <= 0]
    if bad:
        raise ValueError(f"per-layer errors must be finite and > 0; bad layers: {bad}")
    if not math.isfinite(alpha) or alpha < 0:
        raise ValueError(f"alpha must be a finite number >= 0, got {alpha}")
    n = len(errs)
    if zone_layers is not None:
        outside = sorted(i for i in zone_layers if not 0 <= int(i) < n)
        if outside:
            raise ValueError(f"zone layer indices {outside} out of range for {n} layers")
        zone = {int(i) for i in zone_layers}
    else:
        zone = set(range(n))
    mean = sum(errs) / n
    return [(e / mean) ** alpha if i in zone else 0.0 for i, e in enumerate(errs)]


@dataclass(frozen=True, kw_only=True)
class NoisePlan:
    """What noise one trial injects; construct with `build` (from params) or directly.

    `multipliers` holds one value per decoder layer (0 = not noised); None means 1.0 on every
    layer (uniform noise, no profile). `zones` and `alpha` are the searched names the
    multipliers came from, kept for display and for the command objective's param_map.
    """

    sigma_start: float
    sigma_end: float
    num_stages: int
    site: Site = "rmsnorm"
    multipliers: tuple[float, ...] | None = None
    zones: str = "all"
    alpha: float = 0.0

    def __post_init__(self) -> None:
        check_schedule(self.sigma_start, self.sigma_end, self.num_stages)
        if self.site not in SITES:
            raise ValueError(f"site must be one of {', '.join(SITES)}, got {self.site!r}")
        if not math.isfinite(self.alpha) or self.alpha < 0:
            raise ValueError(f"alpha must be a finite number >= 0, got {self.alpha!r}")
        if self.multipliers is not None:
            object.__setattr__(self, "multipliers", tuple(float(m) for m in self.multipliers))
            bad = [i for i, m in enumerate(self.multipliers) if not math.isfinite(m) or m < 0]
            if bad:
                raise ValueError(f"multipliers must be finite and >= 0; bad layers: {bad}")

    @classmethod
    def build(
        cls,
        *,
        sigma_start: float,
        sigma_ratio: float,
        num_stages: int,
        zones: str,
        zone_layers: set[int] | None,
        alpha: float,
        errors: Sequence[float],
        site: Site = "rmsnorm",
    ) -> NoisePlan:
        """The plan of a searched config: sigma_end = sigma_start x sigma_ratio, multipliers from the profile.

        `zone_layers` is the resolved layer set of `zones` (None = every layer); `errors` the
        profile's per-layer errors. sigma_ratio must lie in (0, 1].
        """
        if not (isinstance(sigma_ratio, (int, float)) and 0 < sigma_ratio <= 1):
            raise ValueError(f"sigma_ratio must be in (0, 1] (sigma_end <= sigma_start), got {sigma_ratio!r}")
        try:
            multipliers = layer_multipliers(errors, zone_layers, float(alpha))
        except OverflowError:  # a huge alpha overflows (e_l / mean) ** alpha
            raise ValueError(f"alpha {alpha:g} gives no usable multipliers (overflow)") from None
        return cls(
            sigma_start=float(sigma_start),
            sigma_end=float(sigma_start) * float(sigma_ratio),
            num_stages=int(num_stages),
            site=site,
            multipliers=tuple(multipliers),
            zones=str(zones),
            alpha=float(alpha),
        )

    # ------------------------------------------------------------------ derived views
    @property
    def sigma_ratio(self) -> float:
        """sigma_end / sigma_start (1.0 for a zero schedule)."""
        return self.sigma_end / self.sigma_start if self.sigma_start > 0 else 1.0

    @property
    def target_layers(self) -> list[int] | None:
        """Indices of the noised layers (multiplier > 0); None = every layer."""
        if self.multipliers is None:
            return None
        return [i for i, m in enumerate(self.multipliers) if m > 0]

    @property
    def uniform(self) -> bool:
        """True when every noised layer gets the same multiplier (what the fork does without SRDD)."""
        if self.multipliers is None:
            return True
        noised = {m for m in self.multipliers if m > 0}
        return len(noised) <= 1 and (not noised or math.isclose(noised.pop(), 1.0))

    def sigma_at(self, step: int, total_steps: int) -> float:
        """The schedule's sigma at `step` of a run of `total_steps` (see `sigma_at`)."""
        return sigma_at(step, total_steps, self.sigma_start, self.sigma_end, self.num_stages)

    def multipliers_dict(self) -> dict[int, float]:
        """{layer: multiplier} for every layer, the shape the team's verl fork reads."""
        if self.multipliers is None:
            raise ValueError("this plan has no per-layer multipliers (uniform noise)")
        return {i: m for i, m in enumerate(self.multipliers)}

    # ------------------------------------------------------------------ transport
    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (Ray trial config, Optuna user_attrs); `from_dict` inverts it exactly."""
        return {
            "sigma_start": self.sigma_start,
            "sigma_end": self.sigma_end,
            "num_stages": self.num_stages,
            "site": self.site,
            "multipliers": None if self.multipliers is None else list(self.multipliers),
            "zones": self.zones,
            "alpha": self.alpha,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NoisePlan:
        """Inverse of `to_dict`; unknown keys are an error (a record from another tool)."""
        known = {"sigma_start", "sigma_end", "num_stages", "site", "multipliers", "zones", "alpha"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"noise plan: unknown key {unknown[0]!r}")
        mult = data.get("multipliers")
        return cls(
            sigma_start=float(data["sigma_start"]),
            sigma_end=float(data["sigma_end"]),
            num_stages=int(data["num_stages"]),
            site=cast(Site, data.get("site", "rmsnorm")),
            multipliers=None if mult is None else tuple(float(m) for m in mult),
            zones=str(data.get("zones", "all")),
            alpha=float(data.get("alpha", 0.0)),
        )
