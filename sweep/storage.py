"""Open the study database: one RDBStorage, reachable or a one-line error, password never kept.

Optuna's RDBStorage pickles its URL verbatim (password included); Ray pickles whatever a
searcher or trainable holds. `SafeRDBStorage` pickles a masked URL and re-reads the real one
from NOISESWEEP_STORAGE when unpickled, so even an accidental pickle leaks nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy

from sweep.errors import UserError
from sweep.secrets import mask_url

ENV_VAR = "NOISESWEEP_STORAGE"
DEFAULT_URL = "sqlite:///noisesweep.db"


def resolve_url(cli_url: str | None = None, file_url: str | None = None) -> str:
    """CLI flag beats NOISESWEEP_STORAGE beats the study file beats the default."""
    for candidate in (cli_url, os.environ.get(ENV_VAR), file_url):
        if candidate:
            return candidate
    return DEFAULT_URL


class SafeRDBStorage(optuna.storages.RDBStorage):
    """An RDBStorage whose pickled form holds no password."""

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        state["url"] = mask_url(self.url)
        state["engine_kwargs"] = {}
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        env_url = os.environ.get(ENV_VAR)
        if env_url and mask_url(env_url) == state["url"]:
            state = {**state, "url": env_url}
        super().__setstate__(state)


def _engine_kwargs(url: str) -> dict[str, Any]:
    """Engine options: pooled connections are checked before use, so a database restart costs
    one reconnect instead of an error (sweep.outage retries what still fails)."""
    if url.startswith("sqlite"):
        # several threads of one driver (heartbeat, Tune callbacks) share the file
        return {"connect_args": {"timeout": 60}}
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        # a host that went away must not hang a retry for the OS's TCP timeout (minutes)
        kwargs["connect_args"] = {"connect_timeout": 5}
    return kwargs


def check_sqlite_path(url: str) -> None:
    """A sqlite file in a missing folder is a user error, said before Ray starts."""
    parsed = sqlalchemy.engine.make_url(url)
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return
    parent = Path(parsed.database).expanduser().resolve().parent
    if not parent.is_dir():
        raise UserError(f"storage {mask_url(url)}: folder {parent} does not exist")


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
) -> SafeRDBStorage:
    """Build the storage and prove the database answers; errors are one masked line."""
    try:
        sqlalchemy.engine.make_url(url)
    except Exception as exc:  # noqa: BLE001 - any parse problem is the user's URL
        raise UserError(f"storage URL {mask_url(url)} is not a valid SQLAlchemy URL") from exc
    check_sqlite_path(url)
    try:
        for attempt in range(5):
            try:
                storage = SafeRDBStorage(
                    url,
                    engine_kwargs=_engine_kwargs(url),
                    heartbeat_interval=heartbeat_interval,
                    grace_period=grace_period,
                )
                break
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
                # two drivers creating the tables of a fresh database at once: the loser
                # hits a duplicate-key/exists error; the tables are there on the next try
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
    except ImportError as exc:
        raise UserError(f"storage {mask_url(url)}: database driver missing ({exc.name})") from exc
    except Exception as exc:  # noqa: BLE001 - connection refused, auth failed, ...
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        password = sqlalchemy.engine.make_url(url).password
        if password:
            first = first.replace(str(password), "***")
        raise UserError(f"storage {mask_url(url)} is not reachable: {first}") from exc
    return storage


def check_reachable(url: str) -> None:
    """Open and close the storage once (used by `run`/`status` before anything else)."""
    storage = open_storage(url)
    storage.engine.dispose()


@contextlib.contextmanager
def study_lock(storage: optuna.storages.BaseStorage, study_name: str) -> Iterator[None]:
    """Serialize a driver's start-up bookkeeping (stale check, seed enqueue) across drivers.

    Two drivers starting at once would both read `enqueued_seed_configs` as empty and both
    enqueue the seeds. PostgreSQL: a session advisory lock keyed by the study name, held on a
    dedicated connection while optuna works on its own ones. SQLite: an flock beside the file.
    Other backends: no lock (one driver at a time).
    """
    rdb = getattr(storage, "_backend", storage)
    if not isinstance(rdb, optuna.storages.RDBStorage):
        yield
        return
    engine = rdb.engine
    backend = engine.url.get_backend_name()
    key = int.from_bytes(hashlib.sha256(f"noisesweep:{study_name}".encode()).digest()[:8], "big", signed=True)
    if backend == "postgresql":
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": key})
                conn.commit()
        return
    database = engine.url.database
    if backend == "sqlite" and database and database != ":memory:":
        import fcntl

        with open(f"{database}.noisesweep-lock", "a+") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return
    yield
