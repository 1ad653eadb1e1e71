"""A thin layer over Ray Tune's OptunaSearch that fixes its defaults for this job.

What OptunaSearch (ray 2.60) gets wrong here, and what this module does instead:
1. storage must be an object and study_name defaults to "optuna": we always pass our
   RDBStorage object and the study's own name.
2. it reports intermediate values at Tune's iteration counter: we report at `result["step"]`,
   the real training step (5, 10, 15, 20).
3. a trial stopped by the scheduler is told COMPLETE with its partial value: we tell PRUNED,
   with `last_step` and `fail_reason` "pruned at step N by ASHA".
4. a NaN final value makes `tell` raise and leaves the trial RUNNING: we tell FAIL with the
   reason (also for failed TrialResults and crashed trial processes).
5. user_attrs are written before `tell` (they cannot be written after).
6. points_to_evaluate is re-enqueued whenever the searcher is built: we never pass it;
   `bookkeeping.enqueue_seed_configs` enqueues each hand-made config once per study.
7. `Tuner.restore` after a dead driver crashes: `bookkeeping.fail_stale_trials` fails RUNNING trials whose
   driver stopped beating, re-queues their params once, and the runner starts a new Tuner.
8. the searcher checkpoint pickles the storage (URL + password): `save` writes no storage.
9. only this searcher (in the driver) ever touches the storage; trials just report to Tune.
10. a NaN intermediate value is not reported to Optuna (it would poison the pruner); the
    trial then ends FAIL ("NaN objective at step N").
"""

from __future__ import annotations

import json
import math
import pickle
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from quant.noise_plan import PLAN_ATTR
from sweep import optuna_private, racing
from sweep.bookkeeping import DRIVER_ATTR, apply_held_write, driver_identity, fail_stale_trials
from sweep.budget import (
    BUDGET_SURPLUS,
    DRIVER_DIED,
    NODE_LOST,
    STORAGE_OUTAGE,
    Budget,
    ledger_of,
    surplus_trial,
    trial_cost_hours,
)
from sweep.outage import DEFAULT_OUTAGE_S, HeldWrite, StorageGuard, is_outage_error

if TYPE_CHECKING:
    from sweep.progress import Progress

# Keys the trainable puts in every Tune result (namespaced so they never clash with metrics).
STEP_KEY = "step"
OBJECTIVE_KEY = "ns_objective"
FINAL_KEY = "ns_final"
STATUS_KEY = "ns_status"
REASON_KEY = "ns_reason"
ELAPSED_KEY = "ns_elapsed_s"
METRICS_KEY = "ns_metrics_json"
APPLIED_KEY = "ns_applied_json"
SEED_KEY = "ns_seed"
NODE_KEY = "ns_node_id"  # the Ray node a trial runs on (a lost node costs only its trials)
NODE_LOSS_WAIT_S = 60.0  # how long a crashed trial waits for Ray to call its node dead


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _alive_nodes() -> set[str]:
    """Ids of the Ray nodes alive now (empty without Ray: unit tests drive the searcher bare)."""
    return {n["NodeID"] for n in _ray_nodes() if n.get("Alive")}


def _dead_nodes() -> set[str]:
    return {n["NodeID"] for n in _ray_nodes() if not n.get("Alive")}


def _ray_nodes() -> list[dict[str, Any]]:
    import ray

    if not ray.is_initialized():
        return []
    try:
        return list(ray.nodes())
    except Exception:  # noqa: BLE001 - the GCS busy or gone: no verdict this time
        return []


class _Keeper(threading.Thread):
    """The driver's background duties: heartbeats, held writes after an outage, stale reclaims.

    Wakes every `TICK_S`; beats every `interval` seconds while the storage answers; while it
    does not, retries the held writes with backoff (sweep.outage) and beats at once when they
    went through, so this driver's trials do not look dead a moment longer than needed.
    """

    TICK_S = 0.5

    def __init__(self, searcher: NoisesweepSearch, interval: float | None, stale_check_s: float | None) -> None:
        super().__init__(name="noisesweep-keeper", daemon=True)
        self.searcher = searcher
        self.interval = interval
        self.stale_check_s = stale_check_s
        self.stop_event = threading.Event()

    def run(self) -> None:
        last_beat = last_check = time.monotonic()
        guard = self.searcher.guard
        while not self.stop_event.wait(self.TICK_S):
            try:
                self.searcher._resolve_errors()
                if not guard.ready():
                    if guard.try_flush() and self.interval:
                        self.searcher.beat()
                        last_beat = time.monotonic()
                    continue
                now = time.monotonic()
                if self.interval and now - last_beat >= self.interval:
                    self.searcher.beat()
                    last_beat = now
                if self.stale_check_s and now - last_check >= self.stale_check_s:
                    last_check = now
                    self.searcher.reclaim_stale(self.stale_check_s)
            except Exception:  # noqa: BLE001 - this thread must outlive any one failed duty
                continue


class NoisesweepSearch(OptunaSearch):
    """OptunaSearch with the corrections listed in the module docstring.

    Subclassing reaches into OptunaSearch's own state (`_ot_study`, `_ot_trials`,
    `_completed_trials`, `_suggest_from_define_by_run_func`; ray/tune/search/optuna/optuna_search.py):
    Ray offers no hooks for these corrections.
    """

    def __init__(
        self,
        space: Callable[[Any], dict[str, Any] | None],
        *,
        storage: optuna.storages.BaseStorage,
        study_name: str,
        sampler: optuna.samplers.BaseSampler | None,
        direction: str = "maximize",
        final_step: int | None = None,
        budget: Budget | None = None,
        cpus_per_trial: float = 1.0,
        gpus_per_trial: float = 0.0,
        trial_seed: Callable[[int], int] | int = 0,
        scheduler_name: str = "the scheduler",
        progress: Progress | None = None,
        heartbeat_interval: float | None = None,
        grace_period: float | None = None,
        racing_policy: racing.RacingPolicy | None = None,
        guard: StorageGuard | None = None,
    ) -> None:
        if not isinstance(storage, optuna.storages.BaseStorage):
            raise TypeError("NoisesweepSearch needs an optuna storage object, not a URL")
        if not study_name:
            raise ValueError("NoisesweepSearch needs the study's name (else it writes to 'optuna')")
        mode = "max" if direction == "maximize" else "min"
        super().__init__(
            space=space,
            metric=OBJECTIVE_KEY,
            mode=mode,
            sampler=sampler,
            study_name=study_name,
            storage=storage,
            points_to_evaluate=None,  # correction 6: never; see enqueue_seed_configs
        )
        self.study: optuna.Study = self._ot_study
        self.direction = direction
        self.final_step = final_step
        self.budget = budget
        self.cpus_per_trial = cpus_per_trial
        self.gpus_per_trial = gpus_per_trial
        self._trial_seed = trial_seed
        self.racing = racing_policy
        self.scheduler_name = scheduler_name
        self.progress = progress
        self.driver = driver_identity()
        self._lock = threading.RLock()
        self._started: dict[str, float] = {}
        self._last: dict[str, dict[str, Any]] = {}
        self._running: set[str] = set()
        self._plans: dict[str, dict[str, Any]] = {}  # trial_id -> the NoisePlan dict `space` returned
        self.unprunable: set[str] = set()  # the racing incumbent's replicates: no scheduler may cut them
        self._rdb = optuna_private.rdb_of(storage)
        self._study_sid = optuna_private.study_id(self.study)
        self._storage_ids: dict[int, int] = {}  # trial number -> storage trial id
        self._asking_since = 0.0  # when the last suggest started asking the study (epoch s)
        self._errored: dict[str, float] = {}  # crashed trials awaiting the node verdict -> deadline
        self._nodes_at_start: dict[str, set[str]] = {}  # trial -> Ray nodes alive when it started
        self.node_loss_wait_s = NODE_LOSS_WAIT_S
        self.launched = 0
        self.finished_numbers: list[int] = []
        self.stop_reason: str | None = None
        if guard is None:
            url = self._rdb.url if self._rdb is not None else study_name
            guard = StorageGuard(url, lambda w: None, window_s=DEFAULT_OUTAGE_S,
                                 say=progress.note if progress is not None else (lambda line: None))
        self.guard = guard
        self._told_fail: set[int] = set()  # trials whose value the storage refused (told FAIL)
        self.guard.bind(self._apply, ping=lambda: optuna_private.study_id(self.study))
        self._keeper = _Keeper(self, heartbeat_interval, grace_period)
        self._keeper.start()

    # --- liveness -----------------------------------------------------------------------
    def beat(self) -> None:
        """Record a heartbeat for every trial this driver is running (skipped during an outage)."""
        storage = self._rdb
        if storage is None or not storage.heartbeat_interval or not self.guard.ready():
            return
        with self._lock:
            ids = [self._storage_id(self._ot_trials[t].number) for t in self._running if t in self._ot_trials]
        for trial_id in ids:
            try:
                storage.record_heartbeat(trial_id)
            except Exception as exc:  # noqa: BLE001 - a missed beat only risks a late FAIL
                if is_outage_error(exc):
                    self.guard.enter_outage(exc)
                    return

    def reclaim_stale(self, grace_period_s: float) -> list[int]:
        """During a run: fail and re-queue trials of drivers that died meanwhile (not ours).

        Not during an outage nor for a grace period after one: the other drivers' beats were
        cut off too, and they are alive.
        """
        if self.guard.recovered_within(grace_period_s):
            return []
        try:
            numbers = fail_stale_trials(self.study, grace_period_s=grace_period_s, exclude_driver=self.driver["id"])
        except Exception:  # noqa: BLE001 - the start-up check of the next run catches them
            return []
        if numbers and self.progress is not None:
            self.progress.note(f"re-queued trial(s) {numbers} of a driver that stopped beating")
        return numbers

    def close(self, *, wait: bool = True) -> list[int]:
        """Stop the keeper; write what is held; trials this driver still has RUNNING (Ctrl-C, a
        crash of Tune) are failed as "driver died" and re-queued now, not left for the grace
        period to expire. With `wait`, held writes are retried through an outage and
        sweep.outage.StorageUnavailable is raised past the window; without it (on the way out
        of an interrupt) what cannot be written at once stays held for the caller to spool."""
        self._keeper.stop_event.set()
        self._resolve_errors(final=True)
        with self._lock:
            left = [(self._ot_trials[t].number, self._storage_id(self._ot_trials[t].number)) for t in self._running
                    if t in self._ot_trials and t not in self._completed_trials]
            self._running.clear()
        if left:
            self.guard.submit([HeldWrite("requeue", n, tid, {"reason": DRIVER_DIED}) for n, tid in sorted(left)])
        if wait:
            self.guard.blocking(lambda: None)
        else:
            self.guard.try_flush(force=True)
        return sorted(n for n, _ in left)

    # --- Searcher API ---------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        """A new trial, or None while the storage is away (Tune asks again a moment later).

        FINISHED once the outage outlasted its window: with no trial running, Tune waits in
        `_update_trial_queue` for a suggestion and only a finished searcher ends that wait.
        """
        if self.guard.expired:
            self.stop_reason = "storage unreachable past the outage window"
            return Searcher.FINISHED
        if not self.guard.ready():
            return None
        self._resolve_errors()
        try:
            return self._suggest(trial_id)
        except Exception as exc:
            if not is_outage_error(exc):
                raise
            self.guard.enter_outage(exc)
            self._abandon(trial_id)
            return None

    def _suggest(self, trial_id: str) -> dict | None:
        self._asking_since = time.time()
        with self._lock:
            if self.budget is not None:
                ledger = ledger_of(self.study.get_trials(deepcopy=False))
                # count our own launched-but-not-yet-asked trials too
                refusal = self.budget.launch_refusal(ledger)
                if refusal is not None:
                    if self._errored:
                        return None  # a trial awaiting its node verdict may yet be re-queued
                    self.stop_reason = refusal
                    return Searcher.FINISHED
            if self.racing is not None:
                self._enqueue_replicate()
            config = super().suggest(trial_id)
            ot_trial = self._ot_trials[trial_id]
            if self.budget is not None and self._drop_if_surplus(trial_id, ot_trial, self.budget):
                return Searcher.FINISHED
            seed = self._seed_for(ot_trial)
            if ot_trial.user_attrs.get(racing.RACING_ATTR) == "incumbent":
                self.unprunable.add(trial_id)
            ot_trial.set_user_attr("seed", seed)  # owner + first beat: _suggest_from_define_by_run_func
            plan = config.get(PLAN_ATTR)
            if plan is not None:  # recorded at launch, so a RUNNING trial already shows its noise
                self._plans[trial_id] = plan
                ot_trial.set_user_attr(PLAN_ATTR, plan)
            self._started[trial_id] = time.time()
            self._nodes_at_start[trial_id] = _alive_nodes()
            self._running.add(trial_id)
            self.launched += 1
        if self.progress is not None:
            self.progress.started(ot_trial.number, dict(ot_trial.params))
        return {**config, SEED_KEY: seed}

    def _drop_if_surplus(self, trial_id: str, ot_trial: optuna.trial.Trial, budget: Budget) -> bool:
        """FAIL (not counted, never run) a trial another driver's simultaneous ask made one too
        many (sweep.budget.surplus_trial), and end this searcher: the budget is spent."""
        if not surplus_trial(self.study.get_trials(deepcopy=False), ot_trial.number, budget.trials):
            return False
        ot_trial.set_user_attr("fail_reason", BUDGET_SURPLUS)
        ot_trial.set_user_attr("compute_hours", 0.0)
        self.study.tell(ot_trial, state=TrialState.FAIL)
        self._ot_trials.pop(trial_id, None)
        self.stop_reason = f"trial budget reached ({budget.trials}; trial {ot_trial.number} not run)"
        return True

    def _seed_for(self, ot_trial: optuna.trial.Trial) -> int:
        """An enqueued replicate's own seed; with racing every new config's first tuning seed
        (common random numbers across configs); else the study's trial_seed."""
        seed = ot_trial.user_attrs.get(racing.SEED_ATTR)
        if isinstance(seed, int) and not isinstance(seed, bool):
            return seed
        if self.racing is not None:
            return self.racing.first_seed
        return self._trial_seed(ot_trial.number) if callable(self._trial_seed) else int(self._trial_seed)

    def _enqueue_replicate(self) -> None:
        """Queue the evaluation the race asks for (sweep.racing); the ask that follows takes it.

        Only into an empty queue: behind waiting trials (hand configs, re-queued ones) it would
        not be the one asked next, and could be left WAITING when the budget runs out. The race
        is a function of the study, so it asks again at the next launch.
        """
        trials = self.study.get_trials(deepcopy=False)
        if any(t.state == TrialState.WAITING for t in trials):
            return
        rep = racing.next_replicate(trials, self.racing, direction=self.direction)
        if rep is None:
            return
        self.study.enqueue_trial(
            rep.params,
            user_attrs={racing.SEED_ATTR: rep.seed, racing.REPLICATE_ATTR: rep.replicate_of, racing.RACING_ATTR: rep.reason},
        )
        if self.progress is not None:
            self.progress.note(f"racing: config of trial {rep.replicate_of} gets seed {rep.seed} ({rep.reason})")

    def _abandon(self, trial_id: str) -> None:
        """A trial asked for just before the outage hit never ran: FAIL it and re-queue its params
        (held until the storage is back), so it is neither lost nor left RUNNING."""
        writes = [HeldWrite("orphans", args={"since": self._asking_since - 1.0, "until": time.time() + 1.0})]
        with self._lock:
            ot_trial = self._ot_trials.pop(trial_id, None)
            self._plans.pop(trial_id, None)
            if ot_trial is not None:
                number = ot_trial.number
                writes.insert(0, HeldWrite("requeue", number, self._storage_ids.get(number), {"reason": STORAGE_OUTAGE}))
        self.guard.submit(writes)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._record(trial_id, result)

    def _record(self, trial_id: str, result: dict) -> None:
        """Keep the latest step/value and report a finite value at the real step."""
        last = self._last.setdefault(trial_id, {})
        if result.get(NODE_KEY):
            last["node"] = str(result[NODE_KEY])
        if ELAPSED_KEY in result:
            last["elapsed"] = float(result[ELAPSED_KEY])
        if result.get(FINAL_KEY):
            return  # the final result is handled in on_trial_complete
        step = result.get(STEP_KEY)
        value = result.get(OBJECTIVE_KEY)
        if step is None:
            return
        step = int(step)
        last["step"] = step
        if METRICS_KEY in result:
            last["metrics"] = result[METRICS_KEY]
        if not _finite(value):
            last.setdefault("nan_step", step)  # correction 10: never report NaN to Optuna
            return
        last["value"] = float(value)
        reported = last.setdefault("reported", set())
        if step in reported:
            return  # optuna keeps the first value of a step, as Trial.report does
        reported.add(step)
        number = self._ot_trials[trial_id].number
        # correction 2: the real training step; held in order during an outage
        self.guard.submit([HeldWrite("report", number, self._storage_id(number), {"step": step, "value": float(value)})])

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        result = result or {}
        if self.guard.expired and not result.get(FINAL_KEY) and not error:
            return  # Tune stopped it because the storage stayed away: left RUNNING, re-queued next run
        if result and not result.get(FINAL_KEY):
            # Tune hands the result that made the scheduler stop the trial to
            # on_trial_complete, not on_trial_result: record it as an intermediate value.
            self._record(trial_id, result)
        if error and not result.get(FINAL_KEY) and len(_ray_nodes()) > 1:
            # A crashed trial process on a multi-node cluster: was it its node that went away?
            # Ray marks a node dead only after its health checks fail, often after the actor's
            # death reached Tune, so the verdict waits (keeper thread) up to NODE_LOSS_WAIT_S.
            with self._lock:
                self._errored[trial_id] = time.monotonic() + self.node_loss_wait_s
            self._resolve_errors()
            return
        last = self._last.get(trial_id, {})
        state, value, reason, attrs = self._outcome(trial_id, result, error, last)
        self._finish(trial_id, state, value, reason, attrs)

    def _finish(self, trial_id: str, state: TrialState, value: float | None, reason: str | None,
                attrs: dict[str, Any], *, requeue: str | None = None) -> None:
        """Write a finished trial (attrs before tell, then the ledger) and print its line.

        `requeue` (a NOT_COUNTED reason): FAIL it for that reason and re-queue its params once
        instead of a plain tell; its compute still lands in the ledger.
        """
        last = self._last.get(trial_id, {})
        number = self._ot_trials[trial_id].number
        tid = self._storage_id(number)
        if reason is not None and requeue is None:
            attrs["fail_reason"] = reason
        # correction 5: every user_attr before tell; then the ledger. Held in order during an outage.
        writes = [HeldWrite("attr", number, tid, {"key": k, "value": v}) for k, v in attrs.items()]
        if requeue is not None:
            writes.append(HeldWrite("requeue", number, tid, {"reason": requeue, "copies": False}))
        else:
            writes.append(HeldWrite("tell", number, tid, {"state": state.name, "value": value}))
        writes.append(HeldWrite("ledger"))
        self.guard.submit(writes)
        if number in self._told_fail:
            state = TrialState.FAIL  # the storage refused the value: told FAIL instead
        with self._lock:
            self._completed_trials.add(trial_id)
            self._running.discard(trial_id)
            self.finished_numbers.append(number)
        if self.progress is not None:
            self.progress.finished(
                number, state.name, value if state == TrialState.COMPLETE else last.get("value"),
                attrs.get("last_step"), attrs.get("wall_time_s", 0.0), reason, counted=requeue is None,
            )

    # --- lost Ray nodes ---------------------------------------------------------------------
    def _resolve_errors(self, *, final: bool = False) -> None:
        """Decide the crashed trials: "Ray node lost" (FAIL, re-queued once) when the node the
        trial ran on is dead, else a crash of its own once the wait is over (or `final`)."""
        with self._lock:
            pending = dict(self._errored)
        if not pending:
            return
        dead = _dead_nodes()
        for trial_id, deadline in pending.items():
            lost = self._on_dead_node(trial_id, dead)
            if not lost and not final and time.monotonic() < deadline:
                continue
            with self._lock:
                if self._errored.pop(trial_id, None) is None:
                    continue  # the other thread decided it meanwhile
            last = self._last.get(trial_id, {})
            state, value, reason, attrs = self._outcome(trial_id, {}, True, last)
            if lost:
                self._finish(trial_id, TrialState.FAIL, None, NODE_LOST, attrs, requeue=NODE_LOST)
            else:
                self._finish(trial_id, state, value, reason, attrs)

    def _on_dead_node(self, trial_id: str, dead: set[str]) -> bool:
        """The trial's node (from its results) is dead; without results yet, a node that was
        alive when the trial started has died."""
        if not dead:
            return False
        node = self._last.get(trial_id, {}).get("node")
        if node:
            return node in dead
        return bool(self._nodes_at_start.get(trial_id, set()) & dead)

    def _apply(self, write: HeldWrite) -> None:
        if apply_held_write(self.study, write) == TrialState.FAIL and write.kind == "tell" and write.args.get("state") != "FAIL":
            self._told_fail.add(write.number)  # type: ignore[arg-type]

    def _outcome(
        self, trial_id: str, result: dict, error: bool, last: dict[str, Any]
    ) -> tuple[TrialState, float | None, str | None, dict[str, Any]]:
        """Decide the Optuna state of a finished Tune trial (corrections 3, 4, 10)."""
        wall = result.get("ns_wall_time_s")
        if not _finite(wall):
            wall = last.get("elapsed")
        if not _finite(wall):
            wall = time.time() - self._started.get(trial_id, time.time())
        wall = float(wall)
        attrs: dict[str, Any] = {
            "wall_time_s": round(wall, 3),
            "compute_hours": trial_cost_hours(wall, self.cpus_per_trial, self.gpus_per_trial),
        }
        last_step = result.get(STEP_KEY, last.get("step")) if result.get(FINAL_KEY) else last.get("step")
        if last_step is not None:
            attrs["last_step"] = int(last_step)
        metrics = result.get(METRICS_KEY) or last.get("metrics")
        if metrics:
            attrs["metrics"] = json.loads(metrics)
        applied = json.loads(result[APPLIED_KEY]) if result.get(APPLIED_KEY) else {}
        plan = self._plans.get(trial_id, {})
        multipliers = applied.get("multipliers")
        if multipliers is None:
            multipliers = plan.get("multipliers")
        if multipliers is not None:
            attrs["multipliers"] = list(multipliers)
        sigma_end = applied.get("sigma_end", plan.get("sigma_end"))
        if sigma_end is not None:
            attrs["sigma_end"] = sigma_end
        if applied:
            attrs["applied"] = applied
            if "verified" in applied:  # a flat attr: a column the dashboard's trial table can sort and filter
                attrs["applied_verified"] = bool(applied["verified"])

        if result.get(FINAL_KEY):
            status = result.get(STATUS_KEY)
            value = result.get(OBJECTIVE_KEY)
            reason = result.get(REASON_KEY) or None
            if status == "complete":
                if "nan_step" in last:
                    return TrialState.FAIL, None, f"NaN objective at step {last['nan_step']}", attrs
                if not _finite(value):
                    return TrialState.FAIL, None, f"final objective is {value} (not a finite number)", attrs
                return TrialState.COMPLETE, float(value), None, attrs
            if status == "pruned":
                return TrialState.PRUNED, None, reason or f"pruned at step {last_step}", attrs
            return TrialState.FAIL, None, reason or "trial failed", attrs
        if error:
            return TrialState.FAIL, None, "trial process crashed or raised (see Ray logs)", attrs
        if "nan_step" in last:
            return TrialState.FAIL, None, f"NaN objective at step {last['nan_step']}", attrs
        # no final result and no error: Tune stopped it (the scheduler pruned it)
        step = last.get("step")
        return TrialState.PRUNED, None, f"pruned at step {step} by {self.scheduler_name}", attrs

    def _suggest_from_define_by_run_func(self, func: Callable, ot_trial: Any) -> dict:
        # Claim the trial right after `ask`, before sampling (many storage round trips): a
        # driver killed while sampling must not leave an ownerless, beat-less RUNNING trial
        # that a resumed run cannot tell from a live one.
        ot_trial.set_user_attr(DRIVER_ATTR, self.driver)
        tid = self._storage_id(ot_trial.number)
        if self._rdb is not None and self._rdb.heartbeat_interval:
            self._rdb.record_heartbeat(tid)
        return super()._suggest_from_define_by_run_func(func, ot_trial)

    def _storage_id(self, number: int) -> int:
        """The storage id of our trial `number`, looked up once (public API; see optuna_private)."""
        if number not in self._storage_ids:
            self._storage_ids[number] = optuna_private.trial_id(self.study, number, sid=self._study_sid)
        return self._storage_ids[number]

    # --- checkpoints: correction 8 ----------------------------------------------------------
    def save(self, checkpoint_path: str) -> None:
        """Write a storage-free marker; the study itself is the record (we never restore)."""
        state = {"study_name": self._study_name, "note": "noisesweep resumes from the study"}
        with open(checkpoint_path, "wb") as fh:
            pickle.dump(state, fh)

    def restore(self, checkpoint_path: str) -> None:
        raise RuntimeError("noisesweep never restores a searcher; it resumes from the study")

    _UNPICKLED = ("_storage", "_rdb", "_ot_study", "study", "_ot_trials", "_keeper", "guard", "_lock", "progress")

    def __getstate__(self) -> dict[str, Any]:
        """Ray pickles the search algorithm into tuner.pkl: leave the storage (and URL) out."""
        return {k: v for k, v in self.__dict__.items() if k not in self._UNPICKLED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
