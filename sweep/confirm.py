"""Re-run the study's top configs on fresh seeds: mean and a 95 % Student-t interval.

RL objectives are noisy; the best single run of a sweep is partly luck (the maximum of many
noisy draws is biased upward). `confirm_study` re-runs the top-K COMPLETE configs (distinct
params) on S seeds none of the study's trials or earlier confirmations used, and stores

    confirmations[str(trial_number)] = {values, seeds, mean, ci_low, ci_high, params, ...}

in the study user_attrs, merged entry by entry (other entries are kept; a config confirmed
again accumulates its values, so `--seeds 3` twice gives 6 runs). Existing trials are never
touched. With one value there is no interval (ci_low/ci_high are null).

Execution: sequential and in-process (no Ray): confirmation is a handful of runs whose
progress lines matter more than parallelism, and a trial that fails or is cut short is simply
recorded as a failure (the mean is over the runs that completed). The objective is rebuilt
from the stored spec: the built-in trainer through `SearchSpace.to_trial_config(params,
seed=...)` + `objective.run_trial`, a command objective through `run_command_trial`.
A `runner(params, seed) -> TrialResult` can be injected (tests, custom execution). A run that
raises is recorded as a failure, except ValueError/FileNotFoundError (the objective's way of
saying the spec itself is wrong, e.g. a missing command cwd): those stop the confirmation.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from optuna.trial import FrozenTrial

from sweep.errors import UserError
from sweep.record import StudyRecord, finite_number

Runner = Callable[[dict[str, Any], int], Any]  # (params, seed) -> objective.TrialResult
FIRST_CONFIRM_SEED = 1000  # confirmation seeds start here, skipping every seed already used


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of a Student-t interval; (mean, None, None) for a single value."""
    if not values:
        raise ValueError("mean_ci: no values")
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, None, None
    from scipy.stats import t

    sd = statistics.stdev(values)
    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def used_seeds(record: StudyRecord) -> set[int]:
    """Every seed a trial or an earlier confirmation ran with, failed confirmation runs included
    (a seed whose run failed would mostly fail again: it is not fresh)."""
    seeds: set[int] = set()
    for t in record.trials():
        s = t.user_attrs.get("seed")
        if isinstance(s, int):
            seeds.add(int(s))
    for entry in record.confirmations.values():
        entry = entry if isinstance(entry, dict) else {}
        ran = list(entry.get("seeds", []) or [])
        ran += [f.get("seed") for f in entry.get("failures", []) or [] if isinstance(f, dict)]
        seeds.update(int(s) for s in ran if isinstance(s, int) and not isinstance(s, bool))
    if record.spec is not None:
        seeds.add(int(record.spec.trial_seed))
    return seeds


def fresh_seeds(count: int, used: set[int], start: int = FIRST_CONFIRM_SEED) -> list[int]:
    """The first `count` seeds from `start` up that are not in `used`."""
    out: list[int] = []
    s = start
    while len(out) < count:
        if s not in used:
            out.append(s)
        s += 1
    return out


def top_trials(record: StudyRecord, k: int) -> list[FrozenTrial]:
    """The k best COMPLETE trials by value, one per distinct params (a re-queued config counts once)."""
    trials = sorted(
        record.complete_trials(),
        key=lambda t: (t.value if record.maximize else -t.value, -t.number),  # type: ignore[operator]
        reverse=True,
    )
    out: list[FrozenTrial] = []
    seen: list[dict[str, Any]] = []
    for t in trials:
        if t.params in seen:
            continue
        seen.append(t.params)
        out.append(t)
        if len(out) == k:
            break
    return out


def default_runner(record: StudyRecord) -> Runner:
    """The study's own objective, rebuilt from its stored spec."""
    from sweep.study import BuiltinObjective

    space = record.require_space("confirm")
    spec = record.spec
    metric = spec.metric

    def progress(step: int, metrics: dict[str, float]) -> None:
        v = metrics.get(metric)
        shown = f"{metric}={v:.4f}" if isinstance(v, (int, float)) else f"{len(metrics)} metrics"
        print(f"noisesweep confirm:   step {step}: {shown}", file=sys.stderr, flush=True)

    if isinstance(spec.objective, BuiltinObjective):

        def run_builtin(params: dict[str, Any], seed: int) -> Any:
            import objective

            return objective.run_trial(space.to_trial_config(params, seed=seed), progress)

        return run_builtin

    command = spec.objective.command

    def run_command(params: dict[str, Any], seed: int) -> Any:
        from objective.command import run_command_trial

        values = space.to_command_values(params, seed=seed)
        return run_command_trial(command, values, progress, timeout_s=getattr(command, "timeout_s", None))

    return run_command


@dataclass
class Confirmation:
    """One confirmed config (what the table shows)."""

    trial: int
    seed_config: str | None
    sweep_value: float
    params: dict[str, Any]
    values: list[float]
    seeds: list[int]
    failures: list[dict[str, Any]] = field(default_factory=list)
    mean: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    new_runs: int = 0
    wall_time_s: float = 0.0

    def to_attr(self) -> dict[str, Any]:
        """The `confirmations[str(trial)]` entry (docs/CONTRACTS.md) stored in the study."""
        return {
            "values": self.values,
            "seeds": self.seeds,
            "mean": self.mean,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "params": self.params,
            "sweep_value": self.sweep_value,
            "failures": self.failures,
            "wall_time_s": round(self.wall_time_s, 3),
        }


def _store(record: StudyRecord, conf: Confirmation) -> None:
    """Merge one entry into the study's `confirmations` (re-read first: others may have written)."""
    study = record.study
    fresh = study.user_attrs.get("confirmations") or {}  # read from the storage, not a cache
    merged = dict(fresh) if isinstance(fresh, dict) else {}
    merged[str(conf.trial)] = conf.to_attr()
    study.set_user_attr("confirmations", merged)


def confirm_study(
    record: StudyRecord,
    *,
    top: int,
    seeds: int,
    runner: Runner | None = None,
    stream: IO[str] | None = None,
) -> list[Confirmation]:
    """Re-run the top configs on fresh seeds; store and return the confirmations."""
    if top < 1:
        raise UserError(f"--top must be >= 1 (got {top})")
    if seeds < 1:
        raise UserError(f"--seeds must be >= 1 (got {seeds})")
    stream = stream if stream is not None else sys.stderr
    chosen = top_trials(record, top)
    if not chosen:
        raise UserError(f"study {record.name!r} has no COMPLETE trial to confirm")
    run = runner if runner is not None else default_runner(record)
    used = used_seeds(record)
    out: list[Confirmation] = []
    for t in chosen:
        prev = record.confirmations.get(str(t.number)) or {}
        new_seeds = fresh_seeds(seeds, used)
        used.update(new_seeds)
        values = [float(v) for v in prev.get("values", []) if finite_number(v)]
        seed_list = [int(s) for s in prev.get("seeds", [])]
        failures = list(prev.get("failures", []) or [])
        conf = Confirmation(
            trial=t.number, seed_config=t.user_attrs.get("seed_config"), sweep_value=float(t.value),  # type: ignore[arg-type]
            params=dict(t.params), values=values, seeds=seed_list, failures=failures,
            wall_time_s=float(prev.get("wall_time_s", 0.0) or 0.0),
        )
        for i, seed in enumerate(new_seeds, 1):
            print(
                f"noisesweep confirm: trial {t.number}" + (f" ({conf.seed_config})" if conf.seed_config else "")
                + f", seed {seed} ({i}/{len(new_seeds)}) ...",
                file=stream, flush=True,
            )
            t0 = time.monotonic()
            try:
                result = run(dict(t.params), seed)
                status, value, reason = result.status, result.value, result.reason
            except (KeyboardInterrupt, UserError, ValueError, FileNotFoundError):
                raise  # an interrupt, or a spec problem (bad cwd, unmapped value) that would fail every run alike
            except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
                status, value, reason = "failed", None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            dt = time.monotonic() - t0
            if status == "complete" and finite_number(value):
                conf.values.append(float(value))
                conf.seeds.append(seed)
                conf.new_runs += 1
                print(f"noisesweep confirm:   -> {value:.4f} ({dt:.1f} s)", file=stream, flush=True)
            else:
                conf.failures.append({"seed": seed, "status": status, "reason": reason})
                print(f"noisesweep confirm:   -> {status}: {reason} ({dt:.1f} s)", file=stream, flush=True)
            conf.wall_time_s += dt
            if conf.values:
                conf.mean, conf.ci_low, conf.ci_high = mean_ci(conf.values)
            _store(record, conf)  # after every run: an interrupted confirmation keeps what it finished
        out.append(conf)
    return out


def format_table(record: StudyRecord, confs: list[Confirmation]) -> str:
    """Single sweep run beside the confirmed mean: the gap shows how much of the best run was luck."""
    head = f"{'trial':>5}  {'seed config':<14} {'sweep run':>9}  {'conf. mean':>10}  {'95% CI':<19} {'mean-run':>8}  {'n':>2}  values"
    lines = [f"confirmations of study {record.name} (metric: {record.spec.metric if record.spec else 'value'})", head]
    for c in confs:
        mean = f"{c.mean:10.4f}" if c.mean is not None else f"{'-':>10}"
        if c.ci_low is not None and c.ci_high is not None:
            ci = f"[{c.ci_low:.4f}, {c.ci_high:.4f}]"
        elif c.mean is not None:
            ci = "no interval (n=1)"
        else:
            ci = "all runs failed"
        gap = f"{c.mean - c.sweep_value:+8.4f}" if c.mean is not None else f"{'-':>8}"
        vals = ", ".join(f"{v:.4f}" for v in c.values)
        if c.failures:
            vals += f" ({len(c.failures)} failed)"
        lines.append(
            f"{c.trial:>5}  {(c.seed_config or '-'):<14} {c.sweep_value:9.4f}  {mean}  {ci:<19} {gap}  {len(c.values):>2}  {vals}"
        )
    ranked = [c for c in confs if c.mean is not None]
    if ranked:
        best = max(ranked, key=lambda c: c.mean if record.maximize else -c.mean)  # type: ignore[arg-type,operator]
        first = confs[0]
        lines.append("")
        lines.append(f"best confirmed: trial {best.trial} (mean {best.mean:.4f})")
        if best.trial != first.trial:
            lines.append(
                f"note: the sweep's best single run (trial {first.trial}, {first.sweep_value:.4f}) is not the best "
                "confirmed config: its single run was partly luck"
            )
    return "\n".join(lines)
