"""The sweep on a Ray cluster started with `ray start --head` on loopback, joined via RAY_ADDRESS.

The head node uses its own temp dir, so no other process on the machine (whose `ray.init()`
would look for /tmp/ray/ray_current_cluster) attaches to it by accident. `ray stop --force`
is not used in the teardown: it would stop every Ray on the machine (other tests' too), so the
teardown kills exactly the processes started under the head's temp dir.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

import pytest
from optuna.trial import TrialState

import faultlib
from servers import free_port

pytestmark = pytest.mark.slow
BUDGET = 5


@pytest.fixture
def ray_head():
    """A one-node Ray cluster on 127.0.0.1; yields (address, temp dir)."""
    port = free_port()
    temp_dir = Path(tempfile.mkdtemp(prefix="nsray-", dir="/tmp"))  # short: Ray's socket paths
    # Ray 2.60 turns token auth on for `ray start` once ~/.ray/auth_token exists, and a driver
    # given an explicit address only sends the token when RAY_AUTH_MODE=token: say it for both.
    env = faultlib.clean_env(RAY_AUTH_MODE="token")
    cmd = [faultlib.RAY, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=2",
           "--include-dashboard=false", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    started = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}", temp_dir
    finally:
        _stop_cluster(temp_dir, env)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_cluster(temp_dir: Path, env: dict[str, str]) -> None:
    """Stop only this cluster: SIGKILL the processes whose command line names its temp dir.

    `ray stop --force` would stop every Ray process on the machine, including other tests'
    local instances; the head's daemons all carry --temp-dir/--session-dir under temp_dir.
    """
    me = os.getpid()
    needle = str(temp_dir).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline:
            try:
                os.kill(int(entry.name), signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_sweep_runs_on_a_started_cluster(ray_head, tmp_path: Path):
    address, temp_dir = ray_head
    url = f"sqlite:///{tmp_path / 'cluster.db'}"
    study = faultlib.write_study(tmp_path / "cluster.yaml",
                                 faultlib.command_study("on-cluster", trials=BUDGET, max_concurrent=2, step_sleep=0.02))
    env = faultlib.clean_env(RAY_ADDRESS=address, RAY_AUTH_MODE="token", NOISESWEEP_RAY_DIR=str(tmp_path / "ray"))
    driver = faultlib.Driver(["run", str(study), "--storage", url], env=env, log_dir=tmp_path / "logs",
                             tag="driver", cwd=tmp_path)
    rc = driver.wait(timeout=400)
    assert rc == 0, driver.stderr()[-3000:]

    trials = faultlib.load_trials(url, "on-cluster")
    assert len(trials) == BUDGET
    assert all(t.state == TrialState.COMPLETE for t in trials), [(t.number, t.state.name) for t in trials]
    # the driver joined this cluster (its core-driver log is in the cluster's session), and did
    # not start a Ray of its own under the default /tmp/ray
    logs = list(temp_dir.glob("session_*/logs/python-core-driver-*"))
    assert any(f"_{driver.proc.pid}.log" in p.name for p in logs), [p.name for p in logs]
    workers = list(temp_dir.glob("session_*/logs/python-core-worker-*"))
    assert workers, "no trial ran in the cluster's workers"
