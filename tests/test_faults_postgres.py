"""Two `noisesweep run` drivers on one study in a throwaway PostgreSQL finish the budget together.

The server is started by the test setup (tests/servers.py: Debian's postgresql, 127.0.0.1, a
random port, a password user). The URL reaches the drivers only through NOISESWEEP_STORAGE.
Afterwards the password must appear nowhere: not in the work dir, the Ray results dir, the Ray
session logs written during the test, nor the drivers' captured stdout/stderr.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

import faultlib
from faultlib import Driver, assert_sound_study, clean_env, command_study, load_trials, write_study

pytestmark = pytest.mark.slow
BUDGET = 6
PASSWORD = "Tw0-Dr1vers-Pg-9f4a7"

postgres = faultlib.postgres_fixture(PASSWORD)


def _ray_sessions_since(t0: float) -> list[Path]:
    """Ray session folders (default /tmp/ray) created or written since t0."""
    root = Path("/tmp/ray")
    if not root.is_dir():
        return []
    return [p for p in root.glob("session_*") if p.is_dir() and not p.is_symlink() and p.stat().st_mtime >= t0]


def test_two_drivers_share_one_study(postgres, tmp_path: Path):
    t0 = time.time() - 1
    url = postgres.create_database("twodrivers")
    assert PASSWORD in url
    name = "two-drivers"
    study = write_study(tmp_path / "two.yaml", command_study(name, trials=BUDGET, max_concurrent=1, step_sleep=0.05))
    seeds = faultlib.seed_names_of(study)
    ray_dir = tmp_path / "ray"
    env = clean_env(NOISESWEEP_STORAGE=url, NOISESWEEP_RAY_DIR=str(ray_dir))
    logs = tmp_path / "logs"
    drivers = [Driver(["run", str(study)], env=env, log_dir=logs, tag=f"driver{i}", cwd=tmp_path) for i in (1, 2)]
    codes = [d.wait(timeout=420) for d in drivers]
    for d, rc in zip(drivers, codes):
        assert rc == 0, d.stderr()[-3000:]
        assert not faultlib.driver_tracebacks(d.stderr())

    trials = load_trials(url, name)
    assert_sound_study(trials, budget=BUDGET, seed_names=seeds)
    assert not [t for t in trials if t.state == TrialState.FAIL], "no trial may fail here"
    # both drivers did work: the study is shared, not run twice or by one driver alone
    owners = {t.user_attrs["driver"]["pid"] for t in trials if "driver" in t.user_attrs}
    assert owners == {d.proc.pid for d in drivers}, owners
    for d in drivers:
        assert "***" in d.stdout() + d.stderr() or "postgresql" not in d.stdout() + d.stderr()

    # the password is nowhere: work dir (study file, logs), Ray results, Ray session logs
    sessions = _ray_sessions_since(t0)
    assert sessions, "the drivers' Ray session logs were not where the test looked"
    roots = [tmp_path, ray_dir, Path.home() / "ray_results", *sessions]
    hits = faultlib.grep_tree(roots, PASSWORD)
    assert not hits, f"password found in {hits}"
    assert any(ray_dir.rglob("*")), "the Ray results dir was not where the test looked"
