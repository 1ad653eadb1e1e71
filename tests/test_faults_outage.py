"""A running sweep rides out PostgreSQL going away: a restart, a 20 s outage, one past its window.

The server is a throwaway PostgreSQL started by the test setup (tests/servers.py, 127.0.0.1, a
random port, a password user); `halt`/`resume`/`restart` are pg_ctl on that server. The sweep
is the real `noisesweep run` (Ray Tune, the command objective running tests/fake_verl.py),
budget 10, 2 trials at a time; the outage starts once 2 trials are COMPLETE, while others run.
"Nothing lost": exactly the budget of finished trials, none RUNNING or WAITING, every seed
config run once (faultlib.assert_sound_study), and every COMPLETE trial has its value, its
intermediate values and its metrics.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import faultlib
from faultlib import Driver, assert_sound_study, clean_env, command_study, load_trials, wait_for, write_study

pytestmark = pytest.mark.slow
BUDGET = 10
PASSWORD = "Outage-Pg-Pw-51c3"
BEGAN = re.compile(r"^\[sweep\] storage postgresql\+psycopg://sweeper:\*\*\*@127\.0\.0\.1:\d+/\w+ unreachable \(")
ENDED = re.compile(r"^\[sweep\] storage postgresql\+psycopg://sweeper:\*\*\*@127\.0\.0\.1:\d+/\w+ reachable again after ([\d.]+) s")

postgres = faultlib.postgres_fixture(PASSWORD)


def _start(postgres, tmp_path: Path, name: str, **env: str) -> tuple[str, Path, Driver]:
    url = postgres.create_database(name.replace("-", "_"))
    study = write_study(tmp_path / f"{name}.yaml",
                        command_study(name, trials=BUDGET, max_concurrent=2, step_sleep=0.06))
    driver_env = clean_env(NOISESWEEP_STORAGE=url, NOISESWEEP_RAY_DIR=str(tmp_path / "ray"), **env)
    driver = Driver(["run", str(study)], env=driver_env, log_dir=tmp_path / "logs", tag=name, cwd=tmp_path)
    wait_for(lambda: faultlib.count_state(load_trials(url, name), TrialState.COMPLETE) >= 2,
             timeout=300, interval=0.2, what="2 COMPLETE trials")
    return url, study, driver


def _assert_nothing_lost(url: str, name: str, study: Path) -> list[optuna.trial.FrozenTrial]:
    trials = load_trials(url, name)
    assert_sound_study(trials, budget=BUDGET, seed_names=faultlib.seed_names_of(study))
    for t in trials:
        if t.state == TrialState.COMPLETE:
            assert t.value is not None and sorted(t.intermediate_values) == [0, 5, 10, 15, 20], (t.number, t.intermediate_values)
            assert faultlib.ACC_KEY in t.user_attrs["metrics"] and t.user_attrs["compute_hours"] > 0
    return trials


def _assert_clean_output(driver: Driver) -> list[str]:
    text = driver.stdout() + driver.stderr()
    assert PASSWORD not in text
    assert "invalid data" not in text and "internal error" not in text
    assert not faultlib.driver_tracebacks(text)
    return driver.stderr().splitlines()


def test_sweep_rides_out_a_postgres_restart(postgres, tmp_path: Path):
    url, study, driver = _start(postgres, tmp_path, "pg-restart")
    postgres.restart()  # pg_ctl restart -m fast: every connection is cut
    assert driver.wait(timeout=400) == 0, driver.stderr()[-3000:]
    lines = _assert_clean_output(driver)
    began = [line for line in lines if BEGAN.match(line)]
    ended = [line for line in lines if ENDED.match(line)]
    assert len(began) == len(ended) <= 1, began + ended  # a restart between two writes goes unnoticed
    _assert_nothing_lost(url, "pg-restart", study)


def test_sweep_rides_out_a_20s_outage(postgres, tmp_path: Path):
    url, study, driver = _start(postgres, tmp_path, "pg-outage")
    postgres.halt()
    time.sleep(20)
    postgres.resume()
    assert driver.wait(timeout=400) == 0, driver.stderr()[-3000:]
    lines = _assert_clean_output(driver)
    began = [line for line in lines if BEGAN.match(line)]
    ended = [ENDED.match(line) for line in lines if ENDED.match(line)]
    assert len(began) == 1 and len(ended) == 1, lines
    assert 19.0 <= float(ended[0].group(1)) <= 40.0, ended[0].group(0)
    assert lines.index(began[0]) < [i for i, line in enumerate(lines) if ENDED.match(line)][0]
    assert "rode out 1 storage outage(s)" in driver.stdout()
    _assert_nothing_lost(url, "pg-outage", study)


def test_past_the_window_one_line_then_the_next_run_resumes_with_nothing_lost(postgres, tmp_path: Path):
    url, study, driver = _start(postgres, tmp_path, "pg-window", NOISESWEEP_OUTAGE_S="4")
    postgres.halt()
    try:
        t0 = time.monotonic()
        assert driver.wait(timeout=120) == 2, driver.stderr()[-3000:]
        assert time.monotonic() - t0 < 60
    finally:
        postgres.resume()
    lines = _assert_clean_output(driver)
    last = lines[-1]
    assert re.match(r"^noisesweep: error: storage postgresql\+psycopg://sweeper:\*\*\*@127\.0\.0\.1:\d+/pg_window "
                    r"unreachable for [\d.]+ s \(outage window 4\.0 s", last), last
    assert "run the same command again to resume" in last
    rerun = Driver(["run", str(study)], env=clean_env(NOISESWEEP_STORAGE=url, NOISESWEEP_RAY_DIR=str(tmp_path / "ray")),
                   log_dir=tmp_path / "logs", tag="pg-window-rerun", cwd=tmp_path)
    assert rerun.wait(timeout=400) == 0, rerun.stderr()[-3000:]
    _assert_clean_output(rerun)
    _assert_nothing_lost(url, "pg-window", study)
    assert not list((tmp_path / "ray").rglob("held-writes.jsonl")), "the held writes were replayed and removed"


def test_heartbeats_resume_after_an_outage(postgres):
    """A driver's RUNNING trial beats again right after the outage (it must not look dead)."""
    from sweep import bridge, optuna_private
    from sweep.storage import open_storage

    url = postgres.create_database("beats")
    storage = open_storage(url, heartbeat_interval=1, grace_period=60)

    def space(trial):
        trial.suggest_float("x", 0.0, 1.0)

    searcher = bridge.NoisesweepSearch(space, storage=storage, study_name="beats", sampler=optuna.samplers.RandomSampler(seed=0),
                                       heartbeat_interval=1, grace_period=60)
    try:
        assert searcher.suggest("t0") is not None
        sid = optuna_private.study_id(searcher.study)
        postgres.halt()
        wait_for(lambda: searcher.guard.in_outage, timeout=20, what="the keeper to notice the outage")
        time.sleep(3)
        postgres.resume()
        wait_for(lambda: searcher.guard.ready(), timeout=30, what="the outage to end")
        time.sleep(1.5)
        ages = optuna_private.running_heartbeat_ages(storage, sid)
        assert list(ages.values()) and max(ages.values()) < 1.5, ages  # beat since, not 3+ s ago
        assert searcher.guard.outages == 1
    finally:
        searcher.close(wait=False)
        storage.engine.dispose()
