"""`run_sweep`: the Optuna study driven through Ray Tune, resumable and within budget.

Only this driver process opens the storage (NoisesweepSearch lives here); trials run in Ray
workers and just report to Tune, so SQLite sees one writer even with max_concurrent > 1.
Several drivers on one study need PostgreSQL (row locks); they cooperate through the study
itself: heartbeats mark which RUNNING trials are alive, the ledger is recomputed from trials.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState
from ray.tune.stopper import Stopper

from objective.result import StopTrial, TrialResult
from quant.noise_plan import PLAN_ATTR, NoisePlan
from sweep import bookkeeping, bridge, outage
from sweep.budget import Budget, ledger_of
from sweep.racing import RacingPolicy
from sweep.errors import UserError
from sweep.progress import Progress, ProgressCallback
from sweep.ray_setup import RAY_LOG_NAME, default_results_dir, ensure_ray
from sweep.record import set_metric_name
from sweep.schedulers import PruningPlan, build_scheduler
from sweep.secrets import mask_url
from sweep.storage import open_storage, study_lock

if TYPE_CHECKING:
    from objective.command import CommandSpec
    from sweep.space import SearchSpace
    from sweep.study import StudySpec

# objective_fn(config, report) -> TrialResult; config = suggested params + {PLAN_ATTR: NoisePlan dict}
# + bridge.SEED_KEY; report(step, metrics) after each validation.
ObjectiveFn = Callable[[dict[str, Any], Callable[[int, dict[str, float]], None]], TrialResult]


@dataclass
class SweepPlan:
    """Everything run_sweep needs, independent of the study-file format.

    Holds no storage URL: the plan travels to Ray workers inside the trainable.
    """

    study_name: str
    space: Callable[[Any], dict[str, Any] | None]  # define-by-run
    objective_fn: ObjectiveFn
    metric: str
    budget: Budget
    direction: str = "maximize"
    seed_configs: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    pruning: PruningPlan = field(default_factory=PruningPlan)
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 1
    sampler: optuna.samplers.BaseSampler | None = None
    trial_seed: int = 0
    racing: RacingPolicy | None = None  # None: one seed per config (plain Optuna)
    study_attrs: dict[str, Any] = field(default_factory=dict)
    set_torch_threads: bool = True
    storage_outage_s: float | None = None  # None: NOISESWEEP_OUTAGE_S or sweep.outage's default
    distributions: dict[str, Any] = field(default_factory=dict)  # the space's, checked against the study's trials


@dataclass
class SweepSummary:
    """What happened, for the CLI's closing lines."""

    study_name: str
    ran_now: list[int]
    failed_stale: list[int]
    enqueued: list[str]
    stop_reason: str | None
    counts: dict[str, int]
    best_number: int | None
    best_value: float | None
    best_params: dict[str, Any]
    ledger: dict[str, Any]
    results_dir: str
    outages: int = 0  # storage outages ridden out


def _make_trainable(objective_fn: ObjectiveFn, metric: str, set_threads: bool, cpus: float) -> Callable:
    """The Tune function trainable; it never sees the storage (correction 9)."""

    def trainable(config: dict[str, Any]) -> None:
        from ray import tune as _tune

        threads = max(int(cpus), 1)
        os.environ["OMP_NUM_THREADS"] = str(threads)
        if set_threads:
            import torch

            torch.set_num_threads(threads)
        start = time.monotonic()
        node = _node_id()

        def report(step: int, metrics: dict[str, float]) -> None:
            value = metrics.get(metric, float("nan"))
            _tune.report(
                {
                    bridge.NODE_KEY: node,
                    bridge.STEP_KEY: int(step),
                    bridge.OBJECTIVE_KEY: float(value) if value is not None else float("nan"),
                    bridge.ELAPSED_KEY: time.monotonic() - start,
                    bridge.METRICS_KEY: json.dumps(_jsonable(metrics)),
                }
            )

        try:
            result = objective_fn(dict(config), report)
        except StopTrial as exc:
            result = TrialResult(status="pruned", reason=str(exc) or "pruned")
        except Exception as exc:  # noqa: BLE001 - a failed trial is a result, not a crash
            result = TrialResult(status="failed", reason=f"{type(exc).__name__}: {exc}"[:500])
        wall = result.wall_time_s if result.wall_time_s else time.monotonic() - start
        last_metrics = result.history[-1]["metrics"] if result.history else {}
        final: dict[str, Any] = {
            bridge.NODE_KEY: node,
            bridge.FINAL_KEY: True,
            bridge.STATUS_KEY: result.status,
            bridge.OBJECTIVE_KEY: float(result.value) if result.value is not None else float("nan"),
            bridge.REASON_KEY: result.reason or "",
            "ns_wall_time_s": float(wall),
            bridge.ELAPSED_KEY: time.monotonic() - start,
            bridge.APPLIED_KEY: json.dumps(_jsonable(result.applied)),
        }
        if result.step is not None:
            final[bridge.STEP_KEY] = int(result.step)
        if last_metrics:
            final[bridge.METRICS_KEY] = json.dumps(_jsonable(last_metrics))
        _tune.report(final)

    trainable.__name__ = "noisesweep_trial"
    return trainable


def _node_id() -> str:
    """The Ray node this trial runs on (reported with each result; see bridge.NODE_KEY)."""
    import ray

    try:
        return str(ray.get_runtime_context().get_node_id())
    except Exception:  # noqa: BLE001 - outside Ray (a trainable called directly in a test)
        return ""


def _trial_name(trial: Any) -> str:
    """Short names: Ray's default embeds the whole config (28 multipliers) in the path."""
    return f"trial_{trial.trial_id}"


def _jsonable(obj: Any) -> Any:
    try:
        return json.loads(json.dumps(obj, default=float))
    except (TypeError, ValueError):
        return str(obj)


def run_sweep(
    plan: SweepPlan,
    *,
    storage_url: str,
    max_trials: int | None = None,
    results_dir: str | Path | None = None,
    stream: IO[str] | None = None,
    heartbeat_interval: int = 10,
    grace_period: int = 60,
    summary_every_s: float = 30.0,
    outage_window_s: float | None = None,
) -> SweepSummary:
    """Run (or continue) the study until its budget is used; return a summary.

    Resume: writes a previous run held through a storage outage are applied first, trials left
    RUNNING by a dead driver are failed ("driver died") and re-queued once; then a new Tuner on
    the same study runs what is left of the budget. `max_trials` (the CLI's --trials) overrides
    the trial budget. Storage outages are ridden out for `outage_window_s` (sweep.outage);
    past it, StorageUnavailable after the held writes were spooled beside Ray's results.
    """
    stream = stream if stream is not None else sys.stderr
    budget = plan.budget
    if max_trials is not None:
        budget = Budget(trials=max_trials, compute_hours=budget.compute_hours)
    window = outage_window_s if outage_window_s is not None else outage.outage_window_s(plan.storage_outage_s)
    with warnings.catch_warnings():  # heartbeat_interval is "experimental" in optuna 5
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = open_storage(storage_url, heartbeat_interval=heartbeat_interval, grace_period=grace_period)
    # ERROR: optuna logs each SQLAlchemy error it retries (SQL text and all); sweep.outage
    # says what the user needs in one line
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    guard = outage.StorageGuard(storage_url, lambda w: None, window_s=window,
                                say=lambda line: print(f"[sweep] {line}", file=stream, flush=True))
    study = guard.blocking(lambda: optuna.create_study(
        storage=storage, study_name=plan.study_name, direction=plan.direction, load_if_exists=True
    ))
    guard.bind(lambda w: bookkeeping.apply_held_write(study, w), ping=lambda: study.user_attrs)
    guard.blocking(lambda: check_space_unchanged(study, plan.distributions))
    out_dir = Path(results_dir) if results_dir else default_results_dir(plan.study_name)
    out_dir.mkdir(parents=True, exist_ok=True)
    spool_path = out_dir / outage.SPOOL_NAME

    def start_up() -> tuple[list[int], list[str], list[outage.HeldWrite]]:
        with study_lock(storage, plan.study_name):  # several drivers may start at once
            kept = outage.read_spool(spool_path, plan.study_name)
            for write in kept:  # each is safe to apply twice (bookkeeping.apply_held_write)
                bookkeeping.apply_held_write(study, write)
            failed = bookkeeping.fail_stale_trials(study, grace_period_s=grace_period)
            for key, value in plan.study_attrs.items():
                study.set_user_attr(key, value)
            set_metric_name(study, plan.metric)
            return failed, bookkeeping.enqueue_seed_configs(study, plan.seed_configs), kept

    failed_stale, enqueued, replayed = guard.blocking(start_up)
    if replayed:
        spool_path.unlink(missing_ok=True)
    ledger = guard.blocking(lambda: ledger_of(study.get_trials(deepcopy=False)))
    remaining = budget.remaining_trials(ledger)
    progress = Progress(
        total_trials=remaining, direction=plan.direction, stream=stream, summary_every_s=summary_every_s
    )
    guard.say = progress.note
    if replayed:
        told = sum(1 for w in replayed if w.kind == "tell")
        progress.note(f"wrote {told} trial result(s) a previous run held through a storage outage ({spool_path})")
    if failed_stale:
        progress.note(f"failed {len(failed_stale)} trial(s) left running by a dead driver and re-queued them: {failed_stale}")
    progress.note(
        f"study {plan.study_name!r} on {mask_url(storage_url)}: {ledger.trials} counted trial(s), "
        f"{ledger.compute_hours:.4f} compute-hours spent"
    )
    refusal = budget.launch_refusal(ledger)
    scheduler, scheduler_name = build_scheduler(
        plan.pruning, plan.direction, protect=lambda trial_id: trial_id in searcher.unprunable
    )
    searcher = guard.blocking(lambda: bridge.NoisesweepSearch(
        plan.space,
        storage=storage,
        study_name=plan.study_name,
        sampler=plan.sampler,
        direction=plan.direction,
        final_step=plan.pruning.final_step,
        budget=budget,
        cpus_per_trial=plan.cpus_per_trial,
        gpus_per_trial=plan.gpus_per_trial,
        trial_seed=plan.trial_seed,
        scheduler_name=scheduler_name,
        progress=progress,
        heartbeat_interval=heartbeat_interval,
        grace_period=grace_period,
        racing_policy=plan.racing,
        guard=guard,
    ))
    interrupted = False
    try:
        try:
            if refusal is None:
                _fit(plan, searcher, scheduler, progress, guard, out_dir)
            else:
                searcher.stop_reason = refusal
        except BaseException:
            interrupted = True  # Ctrl-C or a crash: do not wait out an outage window on the way out
            raise
        finally:
            abandoned = searcher.close(wait=not interrupted)  # StorageUnavailable past the window
            if abandoned:
                progress.note(f"trial(s) {abandoned} did not finish; failed and re-queued for the next run")
        if guard.expired:
            raise outage.StorageUnavailable(guard.exit_message())
        trials, best = guard.blocking(lambda: _closing(study))
        progress.summary()
        ray_log = out_dir / RAY_LOG_NAME
        if refusal is None and ray_log.is_file() and ray_log.stat().st_size:
            progress.note(f"Ray's own messages of this and earlier runs: {ray_log}")
    except outage.StorageUnavailable:
        held = sum(1 for w in guard.pending if w.kind == "tell")
        kept = guard.spool(spool_path, plan.study_name)
        raise outage.StorageUnavailable(guard.exit_message(kept, held)) from None
    finally:
        if guard.pending:  # interrupted with writes still held: keep them for the next run
            guard.spool(spool_path, plan.study_name)
    counts = {s.name: sum(1 for t in trials if t.state == s) for s in TrialState}
    best_number, best_value, best_params = best
    final_ledger = ledger_of(trials).to_attr()
    return SweepSummary(
        study_name=plan.study_name,
        ran_now=list(searcher.finished_numbers),
        failed_stale=failed_stale,
        enqueued=enqueued,
        stop_reason=searcher.stop_reason,
        counts=counts,
        best_number=best_number,
        best_value=best_value,
        best_params=best_params,
        ledger=final_ledger,
        results_dir=str(out_dir),
        outages=guard.outages,
    )


def check_space_unchanged(study: optuna.Study, distributions: dict[str, Any]) -> None:
    """Refuse, before anything is written, a study file whose search space no longer fits the
    study's trials (other zone choices, ranges of another kind): Optuna would raise at the
    first `ask`, after this run had already rewritten the study's attrs. The rule is Optuna's
    own (optuna.distributions.check_distribution_compatibility); a range that widened or moved
    is fine."""
    if not distributions:
        return
    for t in study.get_trials(deepcopy=False):
        for name, old in t.distributions.items():
            new = distributions.get(name)
            if new is None:
                continue
            try:
                optuna.distributions.check_distribution_compatibility(old, new)
            except ValueError as exc:
                raise UserError(
                    f"study {study.study_name!r}: the study file searches {name} as {_dist_text(new)}, but its "
                    f"trials used {_dist_text(old)} ({exc}); give the study a new name"
                ) from None


def _dist_text(d: Any) -> str:
    if isinstance(d, optuna.distributions.CategoricalDistribution):
        return "choices [" + ", ".join(str(c) for c in d.choices) + "]"
    return f"{type(d).__name__}({getattr(d, 'low', '?')}..{getattr(d, 'high', '?')})"


def _closing(study: optuna.Study) -> tuple[list[Any], tuple[int | None, float | None, dict[str, Any]]]:
    """The final read of the study and its ledger write (retried through an outage as one call)."""
    trials = study.get_trials(deepcopy=False)
    best: tuple[int | None, float | None, dict[str, Any]] = (None, None, {})
    completed = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    if completed:
        b = study.best_trial
        best = (b.number, b.value, dict(b.params))
    study.set_user_attr("ledger", ledger_of(trials).to_attr())
    return trials, best


_GUARDS: dict[int, outage.StorageGuard] = {}  # OutageStopper key -> this process's guard


class OutageStopper(Stopper):
    """Tune Stopper that ends the experiment once the storage stayed away past the window.

    Tune checks `stop_all()` every step and then stops all trials without telling the searcher
    they completed (ray/tune/execution/tune_controller.py `_stop_experiment_if_needed`), so
    unfinished trials stay RUNNING for the next run to re-queue. Tune copies and pickles its
    run config, so the stopper holds only a key into this process's `_GUARDS`.
    """

    def __init__(self, guard: outage.StorageGuard) -> None:
        super().__init__()
        self.key = id(guard)
        _GUARDS[self.key] = guard

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        guard = _GUARDS.get(self.key)
        return bool(guard is not None and guard.expired)


def _fit(plan: SweepPlan, searcher: bridge.NoisesweepSearch, scheduler: Any, progress: Progress,
         guard: outage.StorageGuard, out_dir: Path) -> None:
    """Build the Tuner on the searcher and run it until the searcher says FINISHED."""
    from ray import tune
    from ray.tune.search import ConcurrencyLimiter

    ensure_ray(log_path=out_dir / RAY_LOG_NAME)
    trainable = _make_trainable(plan.objective_fn, plan.metric, plan.set_torch_threads, plan.cpus_per_trial)
    resources = {"cpu": plan.cpus_per_trial, "gpu": plan.gpus_per_trial}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        tune_config=tune.TuneConfig(
            search_alg=ConcurrencyLimiter(searcher, max_concurrent=max(plan.max_concurrent, 1)),
            scheduler=scheduler,
            # the searcher ends the run (Searcher.FINISHED) when the budget says so: it
            # sees the whole study, so trials re-queued mid-run and other drivers count
            num_samples=-1,
            # a fresh worker per trial costs ~2 s (process, imports, model load) plus the
            # fake-quant compile; reused workers measured 0.21 s vs 2.11 s extra per trial
            # (bench/sweep_overhead.py). Each trial still seeds and builds its own model.
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=f"run-{int(time.time())}",
            storage_path=str(out_dir.resolve()),
            verbose=0,
            stop=OutageStopper(guard),
            callbacks=[ProgressCallback(progress)],
            checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=False),
            log_to_file=False,
        ),
    )
    with warnings.catch_warnings():
        # ask/tell drives the heartbeat ourselves (see bookkeeping.fail_stale_trials)
        warnings.filterwarnings("ignore", message="Heartbeat of storage")
        try:
            tuner.fit()
        finally:
            _GUARDS.pop(id(guard), None)


def _plan_of(config: dict[str, Any]) -> NoisePlan:
    """The trial's NoisePlan, as SearchSpace.define put it into Ray's config."""
    return NoisePlan.from_dict(config[PLAN_ATTR])


def builtin_objective(space: SearchSpace) -> ObjectiveFn:
    """The built-in trainer as an objective_fn (runs in a Ray worker)."""

    def objective_fn(config: dict[str, Any], report: Callable[[int, dict[str, float]], None]) -> TrialResult:
        from objective import run_trial

        trial_config = space.to_trial_config(_plan_of(config), seed=int(config[bridge.SEED_KEY]))
        return run_trial(trial_config, report)

    return objective_fn


def command_objective(space: SearchSpace, command: CommandSpec) -> ObjectiveFn:
    """The user's command (objective.command) as an objective_fn (runs in a Ray worker)."""

    def objective_fn(config: dict[str, Any], report: Callable[[int, dict[str, float]], None]) -> TrialResult:
        from objective.command import run_command_trial

        values = space.to_command_values(_plan_of(config), seed=int(config[bridge.SEED_KEY]))
        return run_command_trial(command, values, report, timeout_s=command.timeout_s)

    return objective_fn


def plan_from_spec(spec: StudySpec, *, objective_fn: ObjectiveFn | None = None) -> SweepPlan:
    """Turn a validated StudySpec into a SweepPlan; nothing here holds the storage URL."""
    from sweep.space import SearchSpace
    from sweep.study import BuiltinObjective

    safe_spec = spec.model_copy(update={"storage": mask_url(spec.storage)})
    profile = spec.srdd_profile
    space = SearchSpace.from_spec(safe_spec, profile)
    obj = spec.objective
    is_builtin = isinstance(obj, BuiltinObjective)
    if objective_fn is None:
        objective_fn = builtin_objective(space) if is_builtin else command_objective(space, obj.command)
    val_steps = spec.validation_steps() or []
    if is_builtin:
        final_step = int(obj.config.steps.total)
    else:
        final_step = max(val_steps) if val_steps else 10**9
    rungs = spec.rungs() or []
    p = spec.pruning
    pruning = PruningPlan(
        enabled=p.enabled and bool(rungs),
        kind=p.kind,
        rungs=rungs,
        grace_step=p.grace_step,
        reduction_factor=p.reduction_factor,
        final_step=final_step,
    )
    attrs: dict[str, Any] = {"noisesweep_spec": spec.to_record(), "srdd_profile": json.loads(profile.to_json())}
    return SweepPlan(
        study_name=spec.name,
        space=space.define,
        objective_fn=objective_fn,
        metric=spec.metric,
        budget=Budget(trials=spec.budget.trials, compute_hours=spec.budget.compute_hours),
        direction="maximize",
        seed_configs=space.seed_configs(),
        pruning=pruning,
        cpus_per_trial=spec.resources.cpus_per_trial,
        gpus_per_trial=spec.resources.gpus_per_trial,
        max_concurrent=spec.resources.max_concurrent,
        sampler=space.make_sampler(spec.sampler.seed),
        trial_seed=spec.trial_seed,
        racing=spec.racing.policy(first_seed=spec.trial_seed),
        study_attrs=attrs,
        set_torch_threads=is_builtin,
        storage_outage_s=spec.storage_outage_s,
        distributions=dict(space.distributions),
    )
