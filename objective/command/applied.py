"""Did the fork apply the noise the trial asked for? Its own ``[AQN]`` lines, checked against the plan.

The seeds' runs silently applied uniform noise while per-layer multipliers were configured:
the fork dropped the key and said nothing. The fork does print what its noise code did
(`objective.verl_log.parse_aqn_line`), so every trial is checked, line by line, as the lines
arrive (a contradiction stops the trial at once, before hours of GPU time):

- the sigma of each ``Noise injection`` line equals the plan's schedule at that step of the
  trainer's own T (`verl_fork.fork_sigma_at`: the fork's float interval arithmetic, its T =
  total_epochs x dataloader length, printed as ``Step: s/T``);
- its ``LayerTypes`` are the plan's site and its ``Target`` the plan's zones as patterns;
- it is ``SRDD-guided`` over every decoder layer whenever the plan's multipliers are not
  uniform (and not SRDD-guided when they are);
- the ``Applied noise to N ... layers (skipped K ...)`` line that follows a sigma > 0 line
  agrees with the noised layers: N modules = p per noised layer, and N + K (every module of
  that type) = p per decoder layer plus fewer than p outside the layers (the final norm).

``strict`` fails the trial with a one-line reason naming what was not applied; it also fails a
trial whose trainer printed no ``[AQN]`` line at all. ``warn`` accepts that silence (a trainer
that prints nothing) and records it; contradictions still fail: a trial whose noise is known
to be wrong is never a result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from objective.command.verl_fork import fork_sigma_at, layer_types, noise_off, noised_layers, target_patterns
from objective.verl_log import AqnApplied, AqnEnabled, AqnInjection, parse_aqn_line
from quant.noise_plan import NoisePlan

# The fork prints sigma with 6 decimals (f"{sigma:.6f}").
_SIGMA_ABS_TOL = 6e-7
_SIGMA_REL_TOL = 1e-6


def layers_text(layers: list[int]) -> str:
    """'10-19' / '0, 3, 5-7': the noised layers, short."""
    runs: list[list[int]] = []
    for i in layers:
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    return ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


@dataclass
class _Step:
    """What the trainer applied at one schedule step (the last weight sync of that step wins)."""

    step: int
    sigma: float
    srdd_guided: bool
    layers: int = 0  # modules noised (0 while sigma is 0)
    skipped: int | None = None
    syncs: int = 1

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": self.step, "sigma": self.sigma, "layers": self.layers, "srdd_guided": self.srdd_guided}
        if self.syncs > 1:
            out["syncs"] = self.syncs
        return out


@dataclass
class AppliedNoiseCheck:
    """Feed it every output line (`feed`); read the verdict with `finish`. See the module docstring."""

    plan: NoisePlan
    mode: Literal["strict", "warn"] = "strict"
    total_steps: int | None = None  # the trainer's T, from its lines
    steps: dict[int, _Step] = field(default_factory=dict)
    failure: str | None = None
    _pending: AqnInjection | None = None
    _lines: int = 0

    # ------------------------------------------------------------------ expectations
    @property
    def _num_layers(self) -> int | None:
        return None if self.plan.multipliers is None else len(self.plan.multipliers)

    @property
    def _wants_srdd(self) -> bool:
        return not self.plan.uniform

    def _zones_text(self) -> str:
        layers = noised_layers(self.plan)
        return "all layers" if layers is None else f"layers {layers_text(layers)}"

    # ------------------------------------------------------------------ feeding
    def feed(self, line: str) -> str | None:
        """Check one output line; returns the reason the trial must fail, once (None otherwise)."""
        if self.failure is not None:
            return None
        parsed = parse_aqn_line(line)
        if parsed is None:
            return None
        self._lines += 1
        if isinstance(parsed, AqnInjection):
            reason = self._unapplied_pending() or self._check_injection(parsed)
        elif isinstance(parsed, AqnApplied):
            reason = self._check_applied(parsed)
        else:
            reason = self._check_enabled(parsed)
        if reason is not None:
            self.failure = reason
        return reason

    def _check_enabled(self, line: AqnEnabled) -> str | None:
        self.total_steps = line.total_steps
        if line.stages != self.plan.num_stages - 1:
            return (f"{self.plan.num_stages} noise stages requested but the trainer's rollout got "
                    f"{line.stages + 1} (a sigma_trend of {line.stages} values)")
        return None

    def _check_injection(self, line: AqnInjection) -> str | None:
        self.total_steps = line.total_steps
        if noise_off(self.plan):
            return f"no noise requested but the trainer injects noise (sigma {line.sigma:g} at step {line.step})"
        want_types = tuple(layer_types(self.plan))
        if line.layer_types != want_types:
            return f"noise on {self.plan.site} requested but the trainer noised layer types {list(line.layer_types)}"
        want_target = tuple(target_patterns(self.plan))
        if line.target != want_target:
            got = "ALL modules (no target pattern arrived)" if line.target is None else f"{list(line.target)}"
            return f"zones requested ({self._zones_text()}) but the trainer targeted {got}"
        if self._wants_srdd and line.srdd_layers is None:
            return "per-layer multipliers requested but the trainer applied uniform noise"
        if self._wants_srdd and self._num_layers is not None and line.srdd_layers != self._num_layers:
            return (f"per-layer multipliers for {self._num_layers} layers requested but the trainer used "
                    f"SRDD-guided multipliers for {line.srdd_layers}")
        if not self._wants_srdd and line.srdd_layers is not None:
            return (f"uniform noise requested but the trainer applied SRDD-guided multipliers for "
                    f"{line.srdd_layers} layers (set outside noisesweep)")
        _, want = fork_sigma_at(self.plan, line.step, line.total_steps)
        if not math.isclose(line.sigma, want, rel_tol=_SIGMA_REL_TOL, abs_tol=_SIGMA_ABS_TOL):
            return (f"sigma schedule {self.plan.sigma_start:g} -> {self.plan.sigma_end:g} over {self.plan.num_stages} "
                    f"stages requested but the trainer applied sigma {line.sigma:g} at step {line.step}/{line.total_steps} "
                    f"(expected {want:.6f})")
        known = self.steps.get(line.step)
        if known is not None:
            known.syncs += 1
        else:
            self.steps[line.step] = _Step(step=line.step, sigma=line.sigma, srdd_guided=line.srdd_layers is not None)
        self._pending = line if line.sigma != 0 else None
        return None

    def _check_applied(self, line: AqnApplied) -> str | None:
        pending, self._pending = self._pending, None
        if pending is None:
            return None  # an Applied line without its announcement (lost or interleaved): nothing to compare
        record = self.steps[pending.step]
        record.layers, record.skipped = line.count, line.skipped
        if line.srdd_guided != (pending.srdd_layers is not None):
            return "the trainer's noise lines disagree about SRDD-guided multipliers"
        if line.count == 0:
            return f"noise requested on {self._zones_text()} but the trainer applied it to 0 layers at step {pending.step}"
        layers = noised_layers(self.plan)
        if layers is None or self._num_layers is None:
            return None
        per_layer, rest = divmod(line.count, len(layers))
        outside = line.count + line.skipped - per_layer * self._num_layers
        if rest or not 0 <= outside < per_layer:
            return (f"noise requested on {self._zones_text()} ({len(layers)} of {self._num_layers}) but the trainer "
                    f"noised {line.count} {'+'.join(line.layer_types)} modules (skipped {line.skipped})")
        return None

    def _unapplied_pending(self) -> str | None:
        pending, self._pending = self._pending, None
        if pending is None:
            return None
        return (f"the trainer announced sigma {pending.sigma:g} at step {pending.step} but printed no "
                "'Applied noise' line for it")

    # ------------------------------------------------------------------ verdict
    def finish(self) -> tuple[dict[str, Any], str | None]:
        """(what goes into TrialResult.applied, the reason the trial fails or None)."""
        out: dict[str, Any] = {"check": self.mode}
        reason = self.failure
        if reason is None and self._pending is not None:
            reason = self._unapplied_pending()
        if reason is None and not self.steps and noise_off(self.plan):
            out.update(verified=True, noised_layers=[], steps=[])  # noise off, and the trainer said nothing
            return out, None
        if reason is None and not self.steps:
            reason = ("the trainer printed no [AQN] noise line, so the requested noise was not verified "
                      "(objective.command.verify_applied: warn accepts a trainer that prints nothing)")
            if self.mode == "warn":
                out.update(verified=False, warning=reason)
                return out, None
        if reason is not None:
            out.update(verified=False, not_applied=reason)
            if self.steps:
                out["steps"] = [s.to_dict() for s in sorted(self.steps.values(), key=lambda s: s.step)]
            return out, reason
        steps = sorted(self.steps.values(), key=lambda s: s.step)
        noisy = [s for s in steps if s.sigma > 0]
        out.update(
            verified=True,
            schedule_total_steps=self.total_steps,
            site=self.plan.site,
            noised_layers=noised_layers(self.plan),
            srdd_guided=self._wants_srdd,
            sigma_max=max((s.sigma for s in steps), default=0.0),
            sigma_last=steps[-1].sigma if steps else None,
            modules_noised=noisy[-1].layers if noisy else 0,
            steps=[s.to_dict() for s in steps],
        )
        return out, None
