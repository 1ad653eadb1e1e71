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
   `enqueue_seed_configs` enqueues each hand-made config once per study.
7. `Tuner.restore` after a dead driver crashes: `fail_stale_trials` fails RUNNING trials whose
   driver stopped beating, re-queues their params once, and the runner starts a new Tuner.
8. the searcher checkpoint pickles the storage (URL + password): `save` writes no storage.
9. only this searcher (in the driver) ever touches the storage; trials just report to Tune.
10. a NaN intermediate value is not reported to Optuna (it would poison the pruner); the
    trial then ends FAIL ("NaN objective at step N").
"""

from __future__ import annotations

import json
import math
import os
import pickle
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from quant.noise_plan import PLAN_ATTR
from sweep import optuna_private, racing
from sweep.budget import DRIVER_DIED, Budget, ledger_of, trial_cost_hours

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
SEED_CONFIG_ATTR = "seed_config"
ENQUEUED_ATTR = "enqueued_seed_configs"
REQUEUED_ATTR = "requeued_trials"
DRIVER_ATTR = "driver"


def driver_identity() -> dict[str, Any]:
    """Who owns a RUNNING trial: a fresh id per driver process, host and pid."""
    return {"id": uuid.uuid4().hex[:12], "host": socket.gethostname(), "pid": os.getpid()}


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def enqueue_seed_configs(study: optuna.Study, seeds: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Enqueue each hand-made config exactly once per study; return the names enqueued now.

    Tracked in the study user_attr `enqueued_seed_configs`; a name already present on any
    trial (from an older record without the attr) is also skipped.
    """
    done = set(study.user_attrs.get(ENQUEUED_ATTR, []))
    done |= {
        t.user_attrs[SEED_CONFIG_ATTR]
        for t in study.get_trials(deepcopy=False)
        if SEED_CONFIG_ATTR in t.user_attrs and REQUEUED_ATTR not in t.user_attrs
    }
    new: list[str] = []
    for name, params in seeds:
        if name in done:
            continue
        study.enqueue_trial(dict(params), user_attrs={SEED_CONFIG_ATTR: name}, skip_if_exists=False)
        done.add(name)
        new.append(name)
    if new or ENQUEUED_ATTR not in study.user_attrs:
        study.set_user_attr(ENQUEUED_ATTR, sorted(done))
    return new


def _set_attr_if_running(storage: optuna.storages.BaseStorage, trial_id: int, key: str, value: Any) -> bool:
    try:
        storage.set_trial_user_attr(trial_id, key, value)
        return True
    except optuna.exceptions.UpdateFinishedTrialError:
        return False


def fail_stale_trials(
    study: optuna.Study, *, grace_period_s: float, exclude_driver: str | None = None
) -> list[int]:
    """FAIL trials left RUNNING by a dead driver and re-queue their params (once each).

    Liveness is optuna's heartbeat table (RDBStorage(heartbeat_interval, grace_period)): each
    live driver beats for its running trials from a thread (ask/tell never starts optuna's own
    beat, which lives inside `study.optimize`). A RUNNING trial is stale when its beat is older
    than the storage's grace period (judged with the database clock, so hosts' clocks do not
    matter), or when it never beat and started longer ago than `grace_period_s`. Trials owned by
    `exclude_driver` (this driver's id) are never failed here. Returns their numbers.
    """
    storage = optuna_private.study_storage(study)
    rdb = optuna_private.rdb_of(storage)
    sid = optuna_private.study_id(study)
    ages = optuna_private.running_heartbeat_ages(rdb, sid) if rdb is not None else {}
    beat_grace = optuna_private.heartbeat_grace_s(rdb) if rdb is not None else None
    stale_ids: set[int] = set()
    now = time.time()
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    for t in running:
        tid = optuna_private.trial_id(study, t.number, sid=sid)
        if exclude_driver is not None and (t.user_attrs.get(DRIVER_ATTR) or {}).get("id") == exclude_driver:
            continue
        if _driver_gone(t):
            stale_ids.add(tid)  # its driver ran here and has exited: no need to wait
        elif tid in ages:
            if beat_grace is not None and ages[tid] > beat_grace:
                stale_ids.add(tid)
        else:
            started = t.datetime_start.timestamp() if t.datetime_start else 0.0
            if now - started > grace_period_s:
                stale_ids.add(tid)
    return fail_and_requeue(study, sorted(stale_ids))


def fail_and_requeue(study: optuna.Study, trial_ids: list[int], reason: str = DRIVER_DIED) -> list[int]:
    """FAIL RUNNING trials (reason first, while still writable) and enqueue their params once."""
    storage = optuna_private.study_storage(study)
    failed: list[optuna.trial.FrozenTrial] = []
    for trial_id in trial_ids:
        if not _set_attr_if_running(storage, trial_id, "fail_reason", reason):
            continue
        try:
            if storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                failed.append(storage.get_trial(trial_id))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass
    requeued = set(study.user_attrs.get(REQUEUED_ATTR, []))
    for t in failed:
        if t.number in requeued:
            continue
        attrs = {REQUEUED_ATTR: t.number}
        if SEED_CONFIG_ATTR in t.user_attrs:
            attrs[SEED_CONFIG_ATTR] = t.user_attrs[SEED_CONFIG_ATTR]
        study.enqueue_trial(dict(t.params), user_attrs=attrs, skip_if_exists=False)
        requeued.add(t.number)
    if failed:
        study.set_user_attr(REQUEUED_ATTR, sorted(requeued))
    return [t.number for t in failed]


def _driver_gone(trial: optuna.trial.FrozenTrial) -> bool:
    """True when the trial's driver ran on this host under a pid that no longer runs.

    A driver restarted right after a kill must not wait out the heartbeat grace period for
    the dead driver's trials: a short resumed run would otherwise end with them still RUNNING
    (counted as running, never re-queued). Drivers on other hosts, or a pid that is alive
    (even if reused), fall back to heartbeats.
    """
    owner = trial.user_attrs.get(DRIVER_ATTR)
    if not isinstance(owner, dict) or owner.get("host") != socket.gethostname():
        return False
    pid = owner.get("pid")
    if not isinstance(pid, int) or pid <= 0 or pid == os.getpid():
        return False
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            state = fh.read().rsplit(b")", 1)[1].split()[0]
        return state in (b"Z", b"X")  # a zombie has exited
    except FileNotFoundError:
        return True
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        return False


class _Heartbeat(threading.Thread):
    """Beats for this driver's RUNNING trials every `interval` seconds."""

    def __init__(self, searcher: NoisesweepSearch, interval: float, stale_check_s: float | None) -> None:
        super().__init__(name="noisesweep-heartbeat", daemon=True)
        self.searcher = searcher
        self.interval = interval
        self.stale_check_s = stale_check_s
        self.stop_event = threading.Event()

    def run(self) -> None:
        last_check = time.monotonic()
        while not self.stop_event.wait(self.interval):
            self.searcher.beat()
            if self.stale_check_s and time.monotonic() - last_check >= self.stale_check_s:
                last_check = time.monotonic()
                self.searcher.reclaim_stale(self.stale_check_s)


class NoisesweepSearch(OptunaSearch):
    """OptunaSearch with the corrections listed in the module docstring."""

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
        self.launched = 0
        self.finished_numbers: list[int] = []
        self.stop_reason: str | None = None
        self._heartbeat: _Heartbeat | None = None
        if heartbeat_interval:
            self._heartbeat = _Heartbeat(self, heartbeat_interval, grace_period)
            self._heartbeat.start()

    # --- liveness -----------------------------------------------------------------------
    def beat(self) -> None:
        """Record a heartbeat for every trial this driver is running."""
        storage = self._rdb
        if storage is None or not storage.heartbeat_interval:
            return
        with self._lock:
            ids = [self._storage_id(self._ot_trials[t].number) for t in self._running if t in self._ot_trials]
        for trial_id in ids:
            try:
                storage.record_heartbeat(trial_id)
            except Exception:  # noqa: BLE001 - a missed beat only risks a late FAIL
                pass

    def reclaim_stale(self, grace_period_s: float) -> list[int]:
        """During a run: fail and re-queue trials of drivers that died meanwhile (not ours)."""
        try:
            numbers = fail_stale_trials(self.study, grace_period_s=grace_period_s, exclude_driver=self.driver["id"])
        except Exception:  # noqa: BLE001 - the start-up check of the next run catches them
            return []
        if numbers and self.progress is not None:
            self.progress.note(f"re-queued trial(s) {numbers} of a driver that stopped beating")
        return numbers

    def close(self) -> list[int]:
        """Stop beating; trials this driver still has RUNNING (Ctrl-C, a crash of Tune) are
        failed as "driver died" and re-queued now, not left for the grace period to expire."""
        if self._heartbeat is not None:
            self._heartbeat.stop_event.set()
        with self._lock:
            left = [self._storage_id(self._ot_trials[t].number) for t in self._running
                    if t in self._ot_trials and t not in self._completed_trials]
            self._running.clear()
        return fail_and_requeue(self.study, sorted(left)) if left else []

    # --- Searcher API ---------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        with self._lock:
            if self.budget is not None:
                ledger = ledger_of(self.study.get_trials(deepcopy=False))
                # count our own launched-but-not-yet-asked trials too
                refusal = self.budget.launch_refusal(ledger)
                if refusal is not None:
                    self.stop_reason = refusal
                    return Searcher.FINISHED
            if self.racing is not None:
                self._enqueue_replicate()
            config = super().suggest(trial_id)
            ot_trial = self._ot_trials[trial_id]
            seed = self._seed_for(ot_trial)
            if ot_trial.user_attrs.get(racing.RACING_ATTR) == "incumbent":
                self.unprunable.add(trial_id)
            ot_trial.set_user_attr("seed", seed)  # owner + first beat: _suggest_from_define_by_run_func
            plan = config.get(PLAN_ATTR)
            if plan is not None:  # recorded at launch, so a RUNNING trial already shows its noise
                self._plans[trial_id] = plan
                ot_trial.set_user_attr(PLAN_ATTR, plan)
            self._started[trial_id] = time.time()
            self._running.add(trial_id)
            self.launched += 1
        if self.progress is not None:
            self.progress.started(ot_trial.number, dict(ot_trial.params))
        return {**config, SEED_KEY: seed}

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
        """Queue the evaluation the race asks for (sweep.racing); the ask that follows takes it."""
        rep = racing.next_replicate(self.study.get_trials(deepcopy=False), self.racing, direction=self.direction)
        if rep is None:
            return
        self.study.enqueue_trial(
            rep.params,
            user_attrs={racing.SEED_ATTR: rep.seed, racing.REPLICATE_ATTR: rep.replicate_of, racing.RACING_ATTR: rep.reason},
        )
        if self.progress is not None:
            self.progress.note(f"racing: config of trial {rep.replicate_of} gets seed {rep.seed} ({rep.reason})")

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        self._record(trial_id, result)

    def _record(self, trial_id: str, result: dict) -> None:
        """Keep the latest step/value and report a finite value at the real step."""
        last = self._last.setdefault(trial_id, {})
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
        ot_trial = self._ot_trials[trial_id]
        ot_trial.report(float(value), step)  # correction 2: the real training step

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        ot_trial = self._ot_trials[trial_id]
        result = result or {}
        if result and not result.get(FINAL_KEY):
            # Tune hands the result that made the scheduler stop the trial to
            # on_trial_complete, not on_trial_result: record it as an intermediate value.
            self._record(trial_id, result)
        last = self._last.get(trial_id, {})
        state, value, reason, attrs = self._outcome(trial_id, result, error, last)
        # correction 5: every user_attr before tell
        for key, val in attrs.items():
            ot_trial.set_user_attr(key, val)
        if reason is not None:
            ot_trial.set_user_attr("fail_reason", reason)
        try:
            if state == TrialState.COMPLETE:
                self.study.tell(ot_trial, value)
            else:
                self.study.tell(ot_trial, state=state)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another process failed it as stale; its params were re-queued
        except Exception:  # noqa: BLE001 - never leave a trial RUNNING
            self.study.tell(ot_trial, state=TrialState.FAIL)
            state = TrialState.FAIL
        with self._lock:
            self._completed_trials.add(trial_id)
            self._running.discard(trial_id)
            self.finished_numbers.append(ot_trial.number)
            trials = self.study.get_trials(deepcopy=False)
            self.study.set_user_attr("ledger", ledger_of(trials).to_attr())
        if self.progress is not None:
            self.progress.finished(
                ot_trial.number, state.name, value if state == TrialState.COMPLETE else last.get("value"),
                attrs.get("last_step"), attrs.get("wall_time_s", 0.0), reason,
            )

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
        if self._rdb is not None and self._rdb.heartbeat_interval:
            self._rdb.record_heartbeat(self._storage_id(ot_trial.number))
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

    _UNPICKLED = ("_storage", "_rdb", "_ot_study", "study", "_ot_trials", "_heartbeat", "_lock", "progress")

    def __getstate__(self) -> dict[str, Any]:
        """Ray pickles the search algorithm into tuner.pkl: leave the storage (and URL) out."""
        return {k: v for k, v in self.__dict__.items() if k not in self._UNPICKLED}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.RLock()
