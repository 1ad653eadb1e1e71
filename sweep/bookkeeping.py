"""The study's cross-driver bookkeeping: who owns a RUNNING trial, which are stale, what is re-queued.

Several drivers (and a driver's next run) cooperate only through the study record:
- a driver claims each trial it asks for (`DRIVER_ATTR`: id, host, pid) and beats for it;
- `fail_stale_trials` FAILs trials whose driver is gone and `fail_and_requeue` enqueues their
  params once (`REQUEUED_ATTR`), so no config is lost and none runs twice;
- `enqueue_seed_configs` enqueues each hand-made config once per study (`ENQUEUED_ATTR`);
- `apply_held_write` applies one sweep.outage.HeldWrite: now, after an outage, or replayed by
  the next run from its spool file. Every write here is safe to apply twice.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from typing import Any

import optuna
from optuna.trial import TrialState

from sweep import optuna_private, racing
from sweep.budget import DRIVER_DIED, STORAGE_OUTAGE, ledger_of
from sweep.outage import HeldWrite, is_outage_error

SEED_CONFIG_ATTR = "seed_config"
ENQUEUED_ATTR = "enqueued_seed_configs"
REQUEUED_ATTR = "requeued_trials"
DRIVER_ATTR = "driver"


def driver_identity() -> dict[str, Any]:
    """Who owns a RUNNING trial: a fresh id per driver process, host and pid."""
    return {"id": uuid.uuid4().hex[:12], "host": socket.gethostname(), "pid": os.getpid()}


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


def fail_and_requeue(
    study: optuna.Study, trial_ids: list[int], reason: str = DRIVER_DIED, *, requeue_copies: bool = True
) -> list[int]:
    """FAIL RUNNING trials (reason first, while still writable) and enqueue their params once.

    Safe to call again after it was cut short (a storage outage between its writes): a trial
    already FAILed for `reason` but not yet re-queued is re-queued, and one whose re-queued
    copy exists (user_attr `requeued_trials` on any trial) never gets a second copy.
    `requeue_copies=False`: a trial that is itself a re-queued copy is not re-queued again
    (a config is re-run at most once for that reason).
    Returns the numbers of the trials failed by this call or a cut-short earlier one.
    """
    storage = optuna_private.study_storage(study)
    failed: list[optuna.trial.FrozenTrial] = []
    for trial_id in trial_ids:
        if _set_attr_if_running(storage, trial_id, "fail_reason", reason):
            try:
                storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass
        t = storage.get_trial(trial_id)
        if t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") == reason:
            failed.append(t)
    if not failed:
        return []
    requeued = set(study.user_attrs.get(REQUEUED_ATTR, []))
    requeued |= {t.user_attrs[REQUEUED_ATTR] for t in study.get_trials(deepcopy=False) if REQUEUED_ATTR in t.user_attrs}
    for t in failed:
        if t.number in requeued or (not requeue_copies and REQUEUED_ATTR in t.user_attrs):
            continue
        attrs = {REQUEUED_ATTR: t.number}
        # the copy is the same evaluation: same hand-config name, and a replicate keeps its seed
        for key in (SEED_CONFIG_ATTR, racing.SEED_ATTR, racing.REPLICATE_ATTR, racing.RACING_ATTR):
            if key in t.user_attrs and (key != racing.SEED_ATTR or racing.REPLICATE_ATTR in t.user_attrs):
                attrs[key] = t.user_attrs[key]
        study.enqueue_trial(dict(t.params), user_attrs=attrs, skip_if_exists=False)
        requeued.add(t.number)
    study.set_user_attr(REQUEUED_ATTR, sorted(requeued))
    return [t.number for t in failed]


def apply_held_write(study: optuna.Study, write: HeldWrite) -> TrialState | None:
    """Apply one study write (sweep.outage.HeldWrite): now, after an outage, or from a spool file.

    Each kind is safe to apply twice (an outage may hide whether the first try committed):
    values and attrs are upserts, a finished trial is never told again. Returns the state a
    `tell` wrote (FAIL when the storage refused the value), else None.
    """
    storage = optuna_private.study_storage(study)
    tid = write.trial_id
    if tid is None and write.number is not None:
        tid = optuna_private.trial_id(study, write.number)
    a = write.args
    if write.kind == "report":
        try:
            storage.set_trial_intermediate_value(tid, int(a["step"]), float(a["value"]))
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # failed as stale meanwhile, or replayed after it was told
    elif write.kind == "attr":
        _set_attr_if_running(storage, tid, str(a["key"]), a["value"])
    elif write.kind == "tell":
        state = TrialState[a["state"]]
        # skip_if_finished: told already, or failed as stale by another driver (params re-queued)
        try:
            if state == TrialState.COMPLETE:
                study.tell(write.number, float(a["value"]), skip_if_finished=True)
            else:
                study.tell(write.number, state=state, skip_if_finished=True)
        except Exception as exc:  # noqa: BLE001 - never leave a trial RUNNING
            if is_outage_error(exc):
                raise
            study.tell(write.number, state=TrialState.FAIL, skip_if_finished=True)
            return TrialState.FAIL
        return state
    elif write.kind == "requeue":
        fail_and_requeue(study, [tid], reason=str(a.get("reason", DRIVER_DIED)), requeue_copies=bool(a.get("copies", True)))
    elif write.kind == "orphans":
        fail_and_requeue(study, orphans(study, float(a["since"]), float(a["until"])), reason=STORAGE_OUTAGE)
    elif write.kind == "ledger":
        study.set_user_attr("ledger", ledger_of(study.get_trials(deepcopy=False)).to_attr())
    else:
        raise ValueError(f"unknown held write kind {write.kind!r}")
    return None


def orphans(study: optuna.Study, since: float, until: float) -> list[int]:
    """Storage ids of RUNNING trials nobody claimed that started in [since, until] (epoch s).

    An outage that cuts `study.ask()` short can leave the trial it just made RUNNING before
    this driver claimed it (DRIVER_ATTR). Nobody else created trials while the storage was
    away, and live drivers claim theirs within milliseconds, so an unclaimed trial from that
    interval is the interrupted ask's.
    """
    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = t.datetime_start.timestamp() if t.datetime_start else None
        if DRIVER_ATTR not in t.user_attrs and started is not None and since <= started <= until:
            out.append(optuna_private.trial_id(study, t.number))
    return out


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
