"""The few Optuna internals noisesweep needs, in one place, each with why no public API does it.

Everything else goes through Optuna's public API (optuna 5.0). Where a public route exists it is
used here too, so callers never touch a private name themselves:
- a Study's storage: `Study._storage`. Optuna 5 exposes `Trial.storage` but no accessor on Study,
  and study/trial *system* attrs (dashboard notes, artifact metadata, the prior's per-trial
  flag) can only be written through the storage since Study/Trial.set_system_attr were removed.
- the RDBStorage behind it: `_CachedStorage._backend` (optuna/storages/_cached_storage.py);
  optuna.storages.get_storage wraps every RDBStorage and offers no way back.
- heartbeat ages: optuna/storages/_rdb/models.py `TrialHeartbeatModel`. The public
  `optuna.storages.fail_stale_trials(study)` fails stale trials itself, before a caller can write
  the trial's `fail_reason` (user_attrs are read-only once a trial is finished), and
  `RDBStorage._get_stale_trial_ids` is private too; so the ages are read from the table directly.
Study and trial ids come from the public `get_study_id_from_name` /
`get_trial_id_from_study_id_trial_number`, not `Study._study_id` / `FrozenTrial._trial_id`.
"""

from __future__ import annotations

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, RDBStorage
from optuna.trial import TrialState


def study_storage(study: optuna.Study) -> BaseStorage:
    """The storage a Study reads and writes through (no public accessor: see module docstring)."""
    return study._storage


def study_id(study: optuna.Study) -> int:
    """The study's id in its storage (public lookup by name)."""
    return study_storage(study).get_study_id_from_name(study.study_name)


def trial_id(study: optuna.Study, number: int, *, sid: int | None = None) -> int:
    """The storage id of trial `number` (public lookup; optuna's cache answers it without a query)."""
    storage = study_storage(study)
    return storage.get_trial_id_from_study_id_trial_number(study_id(study) if sid is None else sid, number)


def rdb_of(storage: BaseStorage) -> RDBStorage | None:
    """The RDBStorage behind a storage (unwrapping optuna's cache), None for other backends."""
    backend = getattr(storage, "_backend", storage)
    return backend if isinstance(backend, RDBStorage) else None


def running_heartbeat_ages(rdb: RDBStorage, sid: int) -> dict[int, float]:
    """trial_id -> seconds since its last heartbeat, for RUNNING trials of study `sid` that beat.

    Judged with the database clock (`now()`), as RDBStorage._get_stale_trial_ids does, so the
    drivers' own clocks do not matter.
    """
    from optuna.storages._rdb import models

    with rdb.scoped_session() as session:
        now = session.execute(sqlalchemy.func.now()).scalar()
        rows = (
            session.query(models.TrialHeartbeatModel.trial_id, models.TrialHeartbeatModel.heartbeat)
            .join(models.TrialModel, models.TrialModel.trial_id == models.TrialHeartbeatModel.trial_id)
            .filter(models.TrialModel.study_id == sid)
            .filter(models.TrialModel.state == TrialState.RUNNING)
            .all()
        )
    now = now.replace(tzinfo=None)
    return {int(tid): (now - beat.replace(tzinfo=None)).total_seconds() for tid, beat in rows}


def heartbeat_grace_s(rdb: RDBStorage) -> float | None:
    """The storage's grace period (None without heartbeats), defaulted as RDBStorage does."""
    if not rdb.heartbeat_interval:
        return None
    return float(rdb.grace_period if rdb.grace_period is not None else 2 * rdb.heartbeat_interval)
