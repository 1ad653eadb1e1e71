"""The seeds' hypotheses (H1-H5) answered from a study's own trials.

Each hypothesis splits the COMPLETE trials into two sides by their params:

- H1 global vs targeted: `zones == "all"` vs any other zones choice.
- H2 more vs less noise in the worst zone: among trials targeting only the worst zone (the
  profile's highest-error zone, as E13i-targeted/-high/-low do), the effective sigma there
  (sigma_start x mean multiplier over the zone's layers) above vs below the seeds' reference
  sigma_start 0.05 (E13i-high 0.08 vs E13i-low 0.03). Trials exactly at 0.05 sit on neither side.
- H3 variable vs uniform multipliers: alpha >= ALPHA_UNIFORM (0.05) vs alpha < 0.05.
- H4 decay vs constant sigma: sigma_ratio < RATIO_CONSTANT (0.95) vs >= 0.95 (a sampled ratio
  is never exactly 1; less than 5 % decay over the run counts as constant).
- H5 RMSNorm vs linear site: the `site` param (absent: the study's only site).

Each side's "best" is its best config by score: the confirmed mean where the config was
confirmed (`noisesweep confirm`, fresh seeds), else its mean over the tuning replicates racing
gave it (sweep.racing), else its single run (marked unconfirmed).

Verdict rule (so a lucky single run does not decide a hypothesis):
1. A side with no COMPLETE trial -> "inconclusive".
2. Both bests confirmed with intervals -> the side whose mean is better wins only when the two
   95 % intervals do not overlap; otherwise "inconclusive".
3. Otherwise a run-to-run noise estimate is needed: the pooled within-config standard deviation
   of all confirmations and all tuning replicate groups with >= 2 values (`noise_sd`). Without
   one -> "inconclusive". With one, the difference of the two bests must exceed
   2 x noise_sd x sqrt(1/n_a + 1/n_b) (n = runs behind each best); the verdict then carries the
   difference with its ~95 % interval, and an inconclusive one says how large a difference the
   data still allow: "no difference larger than X points at 95 %".
   This is a z-style test at ~95 % and ignores that a side's best is the maximum of several
   noisy runs (which favours the side with more trials), so it is deliberately conservative
   only through the factor 2.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from optuna.trial import FrozenTrial

ALPHA_UNIFORM = 0.05
RATIO_CONSTANT = 0.95
H2_REFERENCE_SIGMA = 0.05
Z = 2.0

INCONCLUSIVE = "inconclusive"
# The verdict rule in one paragraph, for the report (the module docstring has the reasoning).
RULE_TEXT = (
    "A side without a COMPLETE trial is inconclusive. A side's best config is scored by its confirmed mean, "
    "else its mean over tuning replicates, else its single run. When both sides' best configs are confirmed with "
    "95 % Student-t intervals, the better mean wins only if the intervals do not overlap. Otherwise the "
    f"difference of the two bests must exceed {Z:g} x the pooled run-to-run sd x sqrt(1/n_a + 1/n_b) "
    "(n: runs behind each best); an inconclusive verdict states the largest difference the data allow at 95 %. "
    "Without any config run on >= 2 seeds there is no noise estimate and the verdict is inconclusive."
)


@dataclass
class Side:
    label: str
    trials: list[FrozenTrial] = field(default_factory=list)
    best: FrozenTrial | None = None
    best_score: float | None = None
    best_confirmation: dict[str, Any] | None = None
    best_runs: list[float] = field(default_factory=list)  # the values behind best_score

    @property
    def n(self) -> int:
        return len(self.trials)

    def runs_behind_best(self) -> int:
        if self.best_confirmation:
            return max(1, len(self.best_confirmation.get("values", []) or []))
        return max(1, len(self.best_runs))


@dataclass
class Hypothesis:
    key: str
    question: str
    a: Side
    b: Side
    verdict: str = INCONCLUSIVE
    reason: str = ""

    @property
    def verdict_text(self) -> str:
        if self.verdict == "a":
            return f"{self.a.label} better"
        if self.verdict == "b":
            return f"{self.b.label} better"
        return INCONCLUSIVE


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


Replicates = dict[int, list[float]]  # trial number -> tuning runs of its config (>= 2 to count)


def replicate_runs(trials: list[FrozenTrial]) -> Replicates:
    """For each of the (COMPLETE) trials, the values of every trial of the same config."""
    from sweep.racing import config_key

    groups: dict[str, list[FrozenTrial]] = {}
    for t in trials:
        groups.setdefault(config_key(t.params), []).append(t)
    out: Replicates = {}
    for members in groups.values():
        if len(members) >= 2:
            runs = [float(m.value) for m in sorted(members, key=lambda m: m.number)]  # type: ignore[arg-type]
            for m in members:
                out[m.number] = runs
    return out


def noise_sd(confirmations: dict[str, dict[str, Any]], replicates: Replicates | None = None) -> float | None:
    """Pooled within-config standard deviation over confirmations and replicate groups with >= 2 values."""
    num = 0.0
    dof = 0
    groups: list[list[Any]] = [
        (entry if isinstance(entry, dict) else {}).get("values", []) or [] for entry in confirmations.values()
    ]
    seen: set[tuple[float, ...]] = set()
    for runs in (replicates or {}).values():  # every trial of a config maps to the same runs: count once
        if tuple(runs) not in seen:
            seen.add(tuple(runs))
            groups.append(runs)
    for group in groups:
        vals = [float(v) for v in group if _finite(v)]
        if len(vals) >= 2:
            num += statistics.variance(vals) * (len(vals) - 1)
            dof += len(vals) - 1
    if dof == 0:
        return None
    return math.sqrt(num / dof)


def _score(
    t: FrozenTrial, confirmations: dict[str, dict[str, Any]], replicates: Replicates | None = None
) -> tuple[float, dict[str, Any] | None, list[float]]:
    entry = confirmations.get(str(t.number))
    if isinstance(entry, dict) and _finite(entry.get("mean")):
        return float(entry["mean"]), entry, [float(v) for v in entry.get("values", []) or [] if _finite(v)]
    runs = (replicates or {}).get(t.number)
    if runs:
        return statistics.fmean(runs), None, list(runs)
    return float(t.value), None, [float(t.value)]  # type: ignore[arg-type]


def _fill(side: Side, confirmations: dict[str, dict[str, Any]], maximize: bool, replicates: Replicates | None = None) -> None:
    for t in side.trials:
        s, entry, runs = _score(t, confirmations, replicates)
        if side.best_score is None or (s > side.best_score if maximize else s < side.best_score):
            side.best, side.best_score, side.best_confirmation, side.best_runs = t, s, entry, runs


def decide(
    h: Hypothesis, confirmations: dict[str, dict[str, Any]], maximize: bool, replicates: Replicates | None = None
) -> None:
    """Apply the module's verdict rule to a hypothesis whose sides are filled."""
    a, b = h.a, h.b
    empty = [s.label for s in (a, b) if s.n == 0]
    if empty:
        h.verdict, h.reason = INCONCLUSIVE, f"no COMPLETE trial on the {' and '.join(empty)} side{'s' if len(empty) > 1 else ''}"
        return
    assert a.best_score is not None and b.best_score is not None
    diff = (a.best_score - b.best_score) if maximize else (b.best_score - a.best_score)
    ca, cb = a.best_confirmation, b.best_confirmation
    if ca and cb and all(_finite(c.get(k)) for c in (ca, cb) for k in ("ci_low", "ci_high")):
        overlap = ca["ci_low"] <= cb["ci_high"] and cb["ci_low"] <= ca["ci_high"]
        if overlap:
            h.verdict, h.reason = INCONCLUSIVE, "the two best configs' 95% confidence intervals overlap"
        else:
            h.verdict = "a" if diff > 0 else "b"
            h.reason = "the two best configs' 95% confidence intervals do not overlap"
        return
    sd = noise_sd(confirmations, replicates)
    if sd is None:
        h.verdict = INCONCLUSIVE
        h.reason = (
            f"difference of the best results {abs(diff):.4f}, but no run-to-run noise estimate "
            "(no config ran on >= 2 seeds: enable racing or run `noisesweep confirm`)"
        )
        return
    threshold = Z * sd * math.sqrt(1 / a.runs_behind_best() + 1 / b.runs_behind_best())
    interval = f"{diff * 100:+.1f} points [95% CI {(diff - threshold) * 100:+.1f}, {(diff + threshold) * 100:+.1f}]"
    if abs(diff) > threshold:
        h.verdict = "a" if diff > 0 else "b"
        h.reason = (f"{h.a.label} - {h.b.label}: {interval}; difference {abs(diff):.4f} > {threshold:.4f} "
                    f"(2 x noise sd {sd:.4f} x sqrt(1/n_a + 1/n_b))")
    else:
        h.verdict = INCONCLUSIVE
        h.reason = (f"no difference larger than {(abs(diff) + threshold) * 100:.1f} points at 95 % "
                    f"({h.a.label} - {h.b.label}: {interval}; difference {abs(diff):.4f} within the noise "
                    f"({threshold:.4f} = 2 x sd {sd:.4f} x sqrt(1/n_a + 1/n_b)))")


def _worst_zone_sigma(t: FrozenTrial, worst_layers: list[int]) -> float | None:
    mult = t.user_attrs.get("multipliers")
    if not isinstance(mult, list) or not worst_layers or max(worst_layers) >= len(mult):
        return float(t.params["sigma_start"])  # uniform inside the zone: multipliers 1
    vals = [float(mult[i]) for i in worst_layers]
    return float(t.params["sigma_start"]) * (sum(vals) / len(vals))


def analyze(
    trials: list[FrozenTrial],
    confirmations: dict[str, dict[str, Any]],
    *,
    maximize: bool = True,
    worst_zone: str | None = None,
    worst_layers: list[int] | None = None,
    default_site: str = "rmsnorm",
) -> list[Hypothesis]:
    """H1-H5 over the COMPLETE trials (pass only those), with verdicts (see the module docstring)."""
    hs = [
        Hypothesis("H1", "global (all zones) vs targeted zones", Side("global"), Side("targeted")),
        Hypothesis(
            "H2",
            f"more vs less noise in the worst zone ({worst_zone or '?'}), trials targeting only that zone; "
            f"effective sigma_start above vs below {H2_REFERENCE_SIGMA}",
            Side("more noise"), Side("less noise"),
        ),
        Hypothesis("H3", f"variable (alpha >= {ALPHA_UNIFORM}) vs uniform (alpha < {ALPHA_UNIFORM}) multipliers",
                   Side("variable"), Side("uniform")),
        Hypothesis("H4", f"decaying (sigma_ratio < {RATIO_CONSTANT}) vs constant sigma", Side("decay"), Side("constant")),
        Hypothesis("H5", "RMSNorm vs linear injection site", Side("rmsnorm"), Side("linear")),
    ]
    h1, h2, h3, h4, h5 = hs
    for t in trials:
        p = t.params
        zones = str(p.get("zones", "all"))
        (h1.a if zones == "all" else h1.b).trials.append(t)
        if worst_zone is not None and zones == worst_zone:
            eff = _worst_zone_sigma(t, worst_layers or [])
            if eff is not None and eff > H2_REFERENCE_SIGMA:
                h2.a.trials.append(t)
            elif eff is not None and eff < H2_REFERENCE_SIGMA:
                h2.b.trials.append(t)
        (h3.a if float(p.get("alpha", 0.0)) >= ALPHA_UNIFORM else h3.b).trials.append(t)
        (h4.a if float(p.get("sigma_ratio", 1.0)) < RATIO_CONSTANT else h4.b).trials.append(t)
        site = str(p.get("site", default_site))
        (h5.a if site == "rmsnorm" else h5.b).trials.append(t)
    reps = replicate_runs(trials)
    for h in hs:
        _fill(h.a, confirmations, maximize, reps)
        _fill(h.b, confirmations, maximize, reps)
        decide(h, confirmations, maximize, reps)
    return hs


def side_text(side: Side) -> str:
    """'trial 3 (E13i-targeted): 0.5120 [95% CI ...] confirmed' or '... unconfirmed'."""
    if side.best is None:
        return "no trials"
    t = side.best
    name = f"trial {t.number}" + (f" ({t.user_attrs['seed_config']})" if t.user_attrs.get("seed_config") else "")
    c = side.best_confirmation
    if c:
        n = len(c.get("values", []) or [])
        if _finite(c.get("ci_low")) and _finite(c.get("ci_high")):
            return f"{name}: {c['mean']:.4f} [95% CI {c['ci_low']:.4f}, {c['ci_high']:.4f}], confirmed n={n}"
        return f"{name}: {c['mean']:.4f}, confirmed n={n} (no interval)"
    if len(side.best_runs) >= 2:
        return f"{name}: {side.best_score:.4f}, mean of {len(side.best_runs)} tuning seeds, unconfirmed"
    return f"{name}: {float(t.value):.4f}, unconfirmed"  # type: ignore[arg-type]
