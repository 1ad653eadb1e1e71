"""sweep.outage: writes held in order through an outage, one line when it begins and one when it
ends, the window, the spool a later run replays, and which errors count as an outage.

The database here is a stand-in that fails exactly like SQLAlchemy does when PostgreSQL is away
(OperationalError wrapped by Optuna's StorageInternalError on a commit); the real server is in
tests/test_faults_outage.py.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import optuna
import pytest
import sqlalchemy.exc

from sweep.outage import (
    OUTAGE_ENV,
    HeldWrite,
    StorageGuard,
    StorageUnavailable,
    is_outage_error,
    outage_reason,
    outage_window_s,
    read_spool,
)

URL = "postgresql+psycopg://sweeper:S3cret-pw@db.example:5432/noise"


def _refused() -> Exception:
    """What a commit against a stopped PostgreSQL raises through Optuna's RDBStorage."""
    raw = ConnectionRefusedError('connection to server at "db.example", port 5432 failed: S3cret-pw refused')
    op = sqlalchemy.exc.OperationalError("COMMIT", {}, raw)
    try:
        try:
            raise op
        except sqlalchemy.exc.OperationalError as e:
            raise optuna.exceptions.StorageInternalError(
                "An exception is raised during the commit. This typically happens due to invalid data in the commit, "
                "e.g. exceeding max length."
            ) from e
    except optuna.exceptions.StorageInternalError as wrapped:
        return wrapped


class FakeDB:
    """Applies writes to a list while `up`; raises the outage error while down."""

    def __init__(self) -> None:
        self.up = True
        self.rows: list[tuple[str, int | None, dict]] = []
        self.pings = 0

    def apply(self, w: HeldWrite) -> None:
        if not self.up:
            raise _refused()
        self.rows.append((w.kind, w.number, dict(w.args)))

    def ping(self) -> None:
        self.pings += 1
        if not self.up:
            raise _refused()


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def _guard(db: FakeDB, clock: Clock, lines: list[str], window: float = 60.0) -> StorageGuard:
    return StorageGuard(URL, db.apply, window_s=window, say=lines.append, ping=db.ping, clock=clock, sleep=clock.sleep)


def _trial_writes(number: int, value: float) -> list[HeldWrite]:
    return [
        HeldWrite("report", number, 10 + number, {"step": 5, "value": value / 2}),
        HeldWrite("attr", number, 10 + number, {"key": "wall_time_s", "value": 3.0}),
        HeldWrite("tell", number, 10 + number, {"state": "COMPLETE", "value": value}),
    ]


def test_writes_are_held_in_order_through_an_outage_and_written_when_it_ends():
    db, clock, lines = FakeDB(), Clock(), []
    g = _guard(db, clock, lines)
    assert g.submit(_trial_writes(0, 0.5)) and len(db.rows) == 3 and g.ready()
    db.up = False
    assert not g.submit(_trial_writes(1, 0.6))  # the first write meets the outage
    assert not g.submit(_trial_writes(2, 0.7))  # held behind it, not tried
    assert len(db.rows) == 3 and not g.ready() and len(g.pending) == 6
    assert len(lines) == 1 and "unreachable" in lines[0] and "***" in lines[0]
    clock.t += 1.0
    assert not g.try_flush()  # still down: nothing written, no second "began" line
    db.up = True
    assert not g.try_flush()  # the backoff has not elapsed yet
    clock.t += 5.0
    assert g.try_flush() and g.ready()
    assert [(k, n) for k, n, _ in db.rows[3:]] == [(k, n) for n in (1, 2) for k in ("report", "attr", "tell")]
    assert len(lines) == 2 and "reachable again after" in lines[1] and "2 trial result(s)" in lines[1]
    assert g.outages == 1 and not g.expired
    assert g.recovered_within(30.0) and not g.recovered_within(0.0)
    for line in lines:
        assert "S3cret-pw" not in line and "invalid data" not in line and "Traceback" not in line


def test_a_write_the_database_refuses_for_another_reason_is_dropped_not_retried_forever():
    db, clock, lines = FakeDB(), Clock(), []
    g = _guard(db, clock, lines)
    db.up = False
    g.submit(_trial_writes(1, 0.6))
    db.up = True
    real_apply = db.apply

    def picky(w: HeldWrite) -> None:
        if w.kind == "attr":
            raise optuna.exceptions.UpdateFinishedTrialError("Trial#1 has already finished")
        real_apply(w)

    g.bind(picky)
    clock.t += 10
    assert g.try_flush()
    assert [k for k, _, _ in db.rows] == ["report", "tell"]
    assert any("dropped a held attr of trial 1" in line for line in lines)


def test_past_the_window_the_guard_expires_and_blocking_says_one_masked_line():
    db, clock, lines = FakeDB(), Clock(), []
    g = _guard(db, clock, lines, window=30.0)
    db.up = False
    g.submit(_trial_writes(1, 0.6))
    for _ in range(20):
        clock.t += 5
        g.try_flush()
    assert g.expired
    with pytest.raises(StorageUnavailable) as exc:
        g.blocking(lambda: "never")
    msg = str(exc.value)
    assert "\n" not in msg and "postgresql+psycopg://sweeper:***@db.example:5432/noise" in msg
    assert "unreachable for 1m40s" in msg and "S3cret-pw" not in msg and "Traceback" not in msg


def test_blocking_rides_out_a_short_outage_with_growing_backoff():
    db, clock, lines = FakeDB(), Clock(), []
    g = _guard(db, clock, lines, window=60.0)
    calls: list[float] = []

    def read() -> str:
        calls.append(clock.t)
        if len(calls) == 6:
            db.up = True
        return db.ping() or "trials"

    db.up = False
    assert g.blocking(read) == "trials"
    gaps = [b - a for a, b in zip(calls, calls[1:])]
    assert gaps == sorted(gaps) and gaps[0] >= 0.5 and max(gaps) <= 5.0  # 0.5, 1, 2, 4, 5 s
    assert len(lines) == 2 and g.outages == 1


def test_spool_keeps_held_writes_for_the_next_run(tmp_path: Path):
    db, clock, lines = FakeDB(), Clock(), []
    g = _guard(db, clock, lines)
    db.up = False
    g.submit(_trial_writes(3, 0.61))
    path = g.spool(tmp_path / "held-writes.jsonl", "study-a")
    assert path is not None and not g.pending  # moved to the file: never spooled twice
    back = read_spool(path, "study-a")
    assert [(w.kind, w.number, w.trial_id, w.args) for w in back] == [
        (w.kind, w.number, w.trial_id, w.args) for w in _trial_writes(3, 0.61)
    ]
    assert read_spool(path, "another-study") == []  # another study's results never replay here
    assert g.spool(tmp_path / "held-writes.jsonl", "study-a") is None  # nothing held: no file change
    assert len(read_spool(path, "study-a")) == 3


@pytest.mark.parametrize("exc, outage", [
    (_refused(), True),
    (sqlalchemy.exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("database is locked")), True),
    (sqlalchemy.exc.InterfaceError("SELECT 1", {}, Exception("connection already closed")), True),
    (sqlalchemy.exc.IntegrityError("INSERT", {}, Exception("duplicate key")), False),
    (optuna.exceptions.UpdateFinishedTrialError("finished"), False),
    (ValueError("bad value"), False),
])
def test_only_connection_errors_count_as_outages(exc: Exception, outage: bool):
    assert is_outage_error(exc) is outage


def test_the_reason_names_the_root_cause_never_optunas_invalid_data_text():
    reason = outage_reason(_refused(), URL)
    assert reason.startswith("ConnectionRefusedError: connection to server")
    assert "invalid data" not in reason and "S3cret-pw" not in reason and "***" in reason


def test_outage_window_from_env_study_or_default(monkeypatch):
    monkeypatch.delenv(OUTAGE_ENV, raising=False)
    assert outage_window_s(None) == 600.0
    assert outage_window_s(42.0) == 42.0
    monkeypatch.setenv(OUTAGE_ENV, "90")
    assert outage_window_s(42.0) == 90.0
    for bad in ("soon", "-5", "0", "nan"):
        monkeypatch.setenv(OUTAGE_ENV, bad)
        with pytest.raises(StorageUnavailable.__mro__[1]) as exc:  # UserError: one line, exit 2
            outage_window_s(42.0)
        assert OUTAGE_ENV in str(exc.value)
