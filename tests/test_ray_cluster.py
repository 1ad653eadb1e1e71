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
import time
from pathlib import Path

import optuna
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


# --------------------------------------------------------------------------- a lost node
LOST_BUDGET = 8


def _ray_start(args: list[str], env: dict[str, str]) -> None:
    started = subprocess.run([faultlib.RAY, "start", *args], env=env, capture_output=True, text=True, timeout=180)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]


@pytest.fixture
def ray_three_nodes():
    """A head without CPUs (the driver's node) and two 1-CPU worker nodes, each with its own temp
    dir, so a worker node can be removed alone: (address, {name: temp dir})."""
    port = free_port()
    dirs = {name: Path(tempfile.mkdtemp(prefix=f"ns{name}-", dir="/tmp")) for name in ("head", "a", "b")}
    env = faultlib.clean_env(RAY_AUTH_MODE="token")
    address = f"127.0.0.1:{port}"
    try:
        _ray_start(["--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=0",
                    "--include-dashboard=false", f"--temp-dir={dirs['head']}", "--disable-usage-stats"], env)
        for name in ("a", "b"):
            _ray_start([f"--address={address}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                        f"--temp-dir={dirs[name]}", "--disable-usage-stats"], env)
        yield address, dirs
    finally:
        for name in ("b", "a", "head"):
            _stop_cluster(dirs[name], env)
            shutil.rmtree(dirs[name], ignore_errors=True)


def test_a_lost_node_costs_only_the_trials_on_it(ray_three_nodes, tmp_path: Path):
    """Worker node b is killed (raylet and workers, SIGKILL) while a trial runs on each node:
    the trial on b ends FAIL "Ray node lost" and is re-queued once, its compute is in the
    ledger, the sweep finishes its budget on node a, and nothing else is lost."""
    address, dirs = ray_three_nodes
    url = f"sqlite:///{tmp_path / 'lost.db'}"
    name = "lost-node"
    study = faultlib.write_study(tmp_path / "lost.yaml",
                                 faultlib.command_study(name, trials=LOST_BUDGET, max_concurrent=2, step_sleep=0.2))
    env = faultlib.clean_env(RAY_ADDRESS=address, RAY_AUTH_MODE="token", NOISESWEEP_RAY_DIR=str(tmp_path / "ray"))
    driver = faultlib.Driver(["run", str(study), "--storage", url], env=env, log_dir=tmp_path / "logs",
                             tag="driver", cwd=tmp_path)

    def both_nodes_busy() -> bool:
        trials = faultlib.load_trials(url, name)
        return (faultlib.count_state(trials, TrialState.COMPLETE) >= 2
                and faultlib.count_state(trials, TrialState.RUNNING) == 2)

    faultlib.wait_for(both_nodes_busy, timeout=300, interval=0.2, what="a trial running on each worker node")
    time.sleep(1.0)  # both trials are well into their steps
    _stop_cluster(dirs["b"], env)  # node b is gone: raylet, object store, its trial's worker
    rc = driver.wait(timeout=400)
    assert rc == 0, driver.stderr()[-3000:]
    assert not faultlib.driver_tracebacks(driver.stderr())

    trials = faultlib.load_trials(url, name)
    lost = [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") == "Ray node lost"]
    assert len(lost) == 1, [(t.number, t.state.name, t.user_attrs.get("fail_reason")) for t in trials]
    assert not [t for t in trials if t.state == TrialState.FAIL and t not in lost], "only the trial on node b failed"
    faultlib.assert_sound_study(trials, budget=LOST_BUDGET, seed_names=faultlib.seed_names_of(study))
    copy = [t for t in trials if t.user_attrs.get("requeued_trials") == lost[0].number]
    assert len(copy) == 1 and copy[0].params == lost[0].params and copy[0].state == TrialState.COMPLETE
    # the lost trial's compute is charged: the ledger sums every finished trial's compute-hours
    assert lost[0].user_attrs["compute_hours"] > 0
    ledger = optuna.load_study(study_name=name, storage=url).user_attrs["ledger"]
    spent = sum(t.user_attrs.get("compute_hours", 0.0) for t in trials)
    assert ledger["trials"] == LOST_BUDGET and abs(ledger["compute_hours"] - round(spent, 6)) < 1e-6
    assert f"trial {lost[0].number} fail" in driver.stderr() and "Ray node lost" in driver.stderr()
