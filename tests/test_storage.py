"""Storage URLs: resolution order, one-line masked errors, no password in a pickle."""

from __future__ import annotations

import pickle

import optuna
import pytest

from sweep.errors import UserError
from sweep.storage import (
    DEFAULT_URL,
    SafeRDBStorage,
    check_reachable,
    open_storage,
    resolve_url,
)


def test_resolution_order(monkeypatch):
    monkeypatch.delenv("NOISESWEEP_STORAGE", raising=False)
    assert resolve_url(None, None) == DEFAULT_URL
    assert resolve_url(None, "sqlite:///f.db") == "sqlite:///f.db"
    monkeypatch.setenv("NOISESWEEP_STORAGE", "sqlite:///env.db")
    assert resolve_url(None, "sqlite:///f.db") == "sqlite:///env.db"
    assert resolve_url("sqlite:///cli.db", "sqlite:///f.db") == "sqlite:///cli.db"


def test_unreachable_postgres_is_one_masked_line():
    url = "postgresql+psycopg://sweeper:Hunter2-secret@127.0.0.1:1/noise"
    with pytest.raises(UserError) as err:
        check_reachable(url)
    msg = str(err.value)
    assert "\n" not in msg
    assert "Hunter2-secret" not in msg
    assert "sweeper:***@127.0.0.1:1" in msg and "not reachable" in msg


def test_bad_url_and_missing_folder(tmp_path):
    with pytest.raises(UserError, match="not a valid SQLAlchemy URL"):
        open_storage("not a url at all")
    with pytest.raises(UserError, match="does not exist"):
        open_storage(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    assert not (tmp_path / "missing").exists()


def test_pickle_masks_password_and_env_restores_it(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 's.db'}"
    storage = open_storage(url)
    storage.url = "postgresql://u:Sup3r-secret@h/db"
    data = pickle.dumps(storage)
    assert b"Sup3r-secret" not in data
    # a plain RDBStorage would have kept it
    raw = optuna.storages.RDBStorage(url)
    raw.url = "postgresql://u:Sup3r-secret@h/db"
    state = raw.__getstate__()
    assert "Sup3r-secret" in state["url"]
    # with the real URL in the environment, an unpickled storage works
    real = open_storage(url)
    monkeypatch.setenv("NOISESWEEP_STORAGE", url)
    clone = pickle.loads(pickle.dumps(real))
    assert isinstance(clone, SafeRDBStorage)
    assert clone.url == url


@pytest.fixture(scope="module")
def postgres():
    from tests.servers import start_postgres

    server = start_postgres(password="Pg-S3cret-pw")
    yield server
    server.stop()


def test_two_drivers_cooperate_on_postgresql(postgres, monkeypatch):
    """Two drivers on one PostgreSQL study: seeds enqueued once, live trials left alone,
    a shared ledger, and a pickled storage that holds no password but still works."""
    import threading

    from sweep import bookkeeping, bridge
    from sweep.storage import study_lock

    url = postgres.create_database("coop")
    seeds = [("A", {"x": 0.1}), ("B", {"x": 0.2}), ("C", {"x": 0.3})]

    def space(trial):
        trial.suggest_float("x", 0.0, 1.0)
        return None

    barrier = threading.Barrier(2, timeout=60)
    searchers: dict[str, bridge.NoisesweepSearch] = {}

    def driver(name: str) -> None:
        storage = open_storage(url, heartbeat_interval=10, grace_period=30)
        s = bridge.NoisesweepSearch(space, storage=storage, study_name="coop",
                                    sampler=optuna.samplers.RandomSampler(seed=len(name)))
        barrier.wait()  # both start their bookkeeping at the same moment
        with study_lock(storage, "coop"):
            bookkeeping.fail_stale_trials(s.study, grace_period_s=30)
            bookkeeping.enqueue_seed_configs(s.study, seeds)
        searchers[name] = s

    threads = [threading.Thread(target=driver, args=(n,), daemon=True) for n in ("d1", "d2")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    study = searchers["d1"].study
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert sorted(t.user_attrs["seed_config"] for t in waiting) == ["A", "B", "C"]
    # each driver runs a trial; the other's stale check must leave it alone (fresh heartbeat)
    d1, d2 = searchers["d1"], searchers["d2"]
    d1.suggest("t1")
    d2.suggest("t1")
    assert bookkeeping.fail_stale_trials(d2.study, grace_period_s=30) == []
    running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert len(running) == 2
    assert {t.user_attrs["driver"]["id"] for t in running} == {d1.driver["id"], d2.driver["id"]}
    final = {bridge.FINAL_KEY: True, bridge.STATUS_KEY: "complete", bridge.OBJECTIVE_KEY: 0.5,
             bridge.STEP_KEY: 20, "ns_wall_time_s": 3600.0}
    d1.on_trial_complete("t1", final)
    d2.on_trial_complete("t1", final)
    assert study.user_attrs["ledger"] == {"compute_hours": 2.0, "trials": 2}
    # the storage pickles without its password and comes back from the environment
    storage = open_storage(url)
    blob = pickle.dumps(storage)
    assert b"Pg-S3cret-pw" not in blob
    monkeypatch.setenv("NOISESWEEP_STORAGE", url)
    clone = pickle.loads(blob)
    assert optuna.get_all_study_names(clone) == ["coop"]
    d1.close()
    d2.close()
