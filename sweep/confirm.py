"""Re-run the study's top configs on fresh seeds: mean and a 95 % Student-t interval.

RL objectives are noisy; the best single run of a sweep is partly luck (the maximum of many
noisy draws is biased upward). `confirm_study` re-runs the top-K configs (ranked by their mean
over tuning replicates, see sweep.racing) on S seeds none of the study's trials or earlier
confirmations used (the confirmation pool is disjoint from the tuning pool), and stores

    confirmations[str(trial_number)] = {values, seeds, mean, ci_low, ci_high, params, ...}

in the study user_attrs, merged entry by entry (other entries are kept; a config confirmed
again accumulates its values, so `--seeds 3` twice gives 6 runs). Existing trials are never
touched. With one value there is no interval (ci_low/ci_high are null).

Execution: through Ray Tune with the sweep's resources and parallelism (sweep.confirm_ray), so a
GPU user's confirmations run on the cluster; the objective is rebuilt from the stored spec
exactly as the sweep runs it. A run that fails or is cut short is recorded as a failure (the
mean is over the runs that completed). A `runner(params, seed) -> TrialResult` can be injected
instead (tests, custom execution): it runs sequentially in this process, and there a run that
raises ValueError/FileNotFoundError (the objective's way of saying the spec itself is wrong)
stops the confirmation.
"""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import IO, Any

from optuna.trial import FrozenTrial

from sweep.best import replicates_of
from sweep.confirm_ray import Outcome
from sweep.errors import UserError
from sweep.racing import config_key, group_configs, incumbent
from sweep.record import StudyRecord, finite_number

from sweep.stats import mean_ci

Runner = Callable[[dict[str, Any], int], Any]  # (params, seed) -> objective.TrialResult

FIRST_CONFIRM_SEED = 1000  # confirmation seeds start here, skipping every seed already used


def used_seeds(record: StudyRecord) -> set[int]:
    """Every seed a trial or an earlier confirmation ran with, failed confirmation runs included
    (a seed whose run failed would mostly fail again: it is not fresh), and the whole racing
    tuning pool, used yet or not: tuning and confirmation seeds stay disjoint."""
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
        first = int(record.spec.trial_seed)
        seeds.update(range(first, first + record.spec.racing.max_seeds) if record.spec.racing.enabled else (first,))
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


def sweep_score(record: StudyRecord, trial: FrozenTrial) -> float:
    """What the sweep saw of `trial`'s config: its mean over tuning replicates (one run: its value)."""
    reps = replicates_of(record, trial)
    return statistics.fmean(reps.values()) if reps else float(trial.value)  # type: ignore[arg-type]


def top_trials(record: StudyRecord, k: int) -> list[FrozenTrial]:
    """The k best configs, each as its first COMPLETE trial (a replicated or re-queued config
    counts once): the racing incumbent first when it has replicates (what `noisesweep best`
    names), then the rest by their mean over tuning replicates."""
    complete = record.complete_trials()
    first: dict[str, FrozenTrial] = {}
    for t in sorted(complete, key=lambda t: t.number):
        first.setdefault(config_key(t.params), t)
    sign = 1.0 if record.maximize else -1.0
    ranked = sorted(first.values(), key=lambda t: (sign * sweep_score(record, t), -t.number), reverse=True)
    inc = incumbent(group_configs(complete, direction="maximize" if record.maximize else "minimize"))
    if inc is not None and inc.n >= 2:
        lead = first[inc.key]
        ranked = [lead, *[t for t in ranked if t is not lead]]
    return ranked[:k]


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
    used = used_seeds(record)
    confs: list[Confirmation] = []
    jobs: list[tuple[Confirmation, int]] = []
    for t in chosen:
        prev = record.confirmations.get(str(t.number)) or {}
        new_seeds = fresh_seeds(seeds, used)
        used.update(new_seeds)
        conf = Confirmation(
            trial=t.number, seed_config=t.user_attrs.get("seed_config"), sweep_value=sweep_score(record, t),
            params=dict(t.params), values=[float(v) for v in prev.get("values", []) if finite_number(v)],
            seeds=[int(s) for s in prev.get("seeds", [])], failures=list(prev.get("failures", []) or []),
            wall_time_s=float(prev.get("wall_time_s", 0.0) or 0.0),
        )
        confs.append(conf)
        jobs.extend((conf, seed) for seed in new_seeds)

    def label(i: int) -> str:
        conf, seed = jobs[i]
        return f"trial {conf.trial}" + (f" ({conf.seed_config})" if conf.seed_config else "") + f", seed {seed}"

    def done(i: int, outcome: Outcome) -> None:
        conf, seed = jobs[i]
        if outcome.status == "complete" and finite_number(outcome.value):
            conf.values.append(float(outcome.value))  # type: ignore[arg-type]
            conf.seeds.append(seed)
            conf.new_runs += 1
            print(f"noisesweep confirm: {label(i)} -> {outcome.value:.4f} ({outcome.wall_time_s:.1f} s)", file=stream, flush=True)
        else:
            conf.failures.append({"seed": seed, "status": outcome.status, "reason": outcome.reason})
            print(f"noisesweep confirm: {label(i)} -> {outcome.status}: {outcome.reason}", file=stream, flush=True)
        conf.wall_time_s += outcome.wall_time_s
        if conf.values:
            conf.mean, conf.ci_low, conf.ci_high = mean_ci(conf.values)
        _store(record, conf)  # after every run: an interrupted confirmation keeps what it finished

    print(f"noisesweep confirm: {len(jobs)} run(s) of {len(confs)} config(s)", file=stream, flush=True)
    if runner is None:
        from sweep.confirm_ray import run_on_ray

        metric = record.spec.metric

        def step(i: int, at: int, value: Any) -> None:
            shown = f"{metric}={value:.4f}" if finite_number(value) else "no value"
            print(f"noisesweep confirm:   {label(i)}, step {at}: {shown}", file=stream, flush=True)

        run_on_ray(record, [(dict(c.params), s) for c, s in jobs], done, on_step=step)
    else:
        _run_sequentially(runner, jobs, done, label, stream)
    return confs


def _run_sequentially(
    runner: Runner, jobs: list[tuple[Confirmation, int]], done: Callable[[int, Outcome], None],
    label: Callable[[int], str], stream: IO[str],
) -> None:
    """An injected runner (tests, custom execution), one run after another in this process."""
    for i, (conf, seed) in enumerate(jobs):
        print(f"noisesweep confirm: {label(i)} ({i + 1}/{len(jobs)}) ...", file=stream, flush=True)
        t0 = time.monotonic()
        try:
            result = runner(dict(conf.params), seed)
            status, value, reason = result.status, result.value, result.reason
        except (KeyboardInterrupt, UserError, ValueError, FileNotFoundError):
            raise  # an interrupt, or a spec problem (bad cwd, unmapped value) that would fail every run alike
        except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
            status, value, reason = "failed", None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        done(i, Outcome(status, value, reason, time.monotonic() - t0))


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
