"""Storage URLs: resolution order, one-line masked errors, no password in a pickle."""

from __future__ import annotations

import pickle

import optuna
import pytest

from sweep.errors import UserError
from sweep.storage import DEFAULT_URL, SafeRDBStorage, check_reachable, open_storage, resolve_url


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
