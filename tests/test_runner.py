"""run_sweep end to end on a local Ray with fast pure-python objectives.

One Ray instance for the module (~5-10 s to start). Covers: ASHA pruning told as PRUNED at
real steps, workers never opening the storage, no password in anything written, resume after
a dead driver, and the compute budget.
"""

from __future__ import annotations

import io
import os
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from objective.result import TrialResult
from sweep import runner
from sweep.budget import Budget
from sweep.runner import PruningPlan, SweepPlan, run_sweep
from sweep.storage import open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)
STEPS = (5, 10, 15, 20)


@pytest.fixture(scope="module")
def ray_local():
    import ray
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    runner.ensure_ray(num_cpus=2)
    yield ray
    ray.shutdown()


def space(trial: optuna.Trial) -> dict:
    x = trial.suggest_float("x", 0.0, 1.0)
    trial.suggest_categorical("zones", ["all", "high"])
    return {"noise_plan": {"sigma_end": x / 100, "multipliers": [1.0 - x, 1.0 + x]}}  # as SearchSpace.define


def make_objective(*, delay_per_x: float = 0.0, fake_wall_s: float | None = None, db_name: str = ""):
    """acc = (1 - (x - 0.3)^2) * step / 20; waits delay_per_x * x s before the first report."""

    def objective(config: dict, report) -> TrialResult:
        x = float(config["x"])
        # correction 9: this runs in a Ray worker, which must never open the study database
        fds = Path("/proc/self/fd")
        db_open = any(db_name and db_name in os.path.realpath(fds / fd) for fd in os.listdir(fds)) if db_name else False
        time.sleep(delay_per_x * x)
        history = []
        value = 0.0
        for step in STEPS:
            value = (1 - (x - 0.3) ** 2) * step / 20
            metrics = {"acc": value, "db_open": float(db_open), "pid": float(os.getpid())}
            report(step, metrics)
            history.append({"step": step, "metrics": metrics})
        return TrialResult(status="complete", value=value, step=20, history=history,
                           applied={"multipliers": [1.0 - x, 1.0 + x]},
                           wall_time_s=fake_wall_s if fake_wall_s is not None else 0.0)

    return objective


def make_plan(name: str, budget: Budget, objective, *, pruning: bool = True, concurrent: int = 1,
              seeds=(("A", {"x": 0.3, "zones": "all"}), ("B", {"x": 0.95, "zones": "high"}))) -> SweepPlan:
    return SweepPlan(
        study_name=name, space=space, objective_fn=objective, metric="acc", budget=budget,
        seed_configs=list(seeds), pruning=PruningPlan(enabled=pruning, rungs=[5, 10, 15], final_step=20, min_samples=1),
        cpus_per_trial=1, max_concurrent=concurrent, sampler=optuna.samplers.TPESampler(seed=1),
        trial_seed=7, set_torch_threads=False,
    )


def test_sweep_prunes_at_real_steps_and_writes_no_secret(ray_local, tmp_path, monkeypatch, capfd):
    db = tmp_path / "e2e-study.db"
    secret = "Pl4nted-Pa55word"
    secret_url = f"postgresql://sweeper:{secret}@db.internal:5432/noise"

    def planted_storage(url, **kw):
        # the runner is handed a password URL; the study really lives in sqlite, but the
        # storage object carries the secret exactly where RDBStorage keeps a real URL
        assert url == secret_url
        st = open_storage(f"sqlite:///{db}", **kw)
        st.url = secret_url
        return st

    monkeypatch.setattr(runner, "open_storage", planted_storage)
    stream = io.StringIO()
    plan = make_plan("e2e", Budget(trials=7), make_objective(delay_per_x=1.5, db_name=db.name), concurrent=2)
    summary = run_sweep(plan, storage_url=secret_url, results_dir=tmp_path / "ray", stream=stream,
                        summary_every_s=1)
    study = optuna.load_study(study_name="e2e", storage=f"sqlite:///{db}")
    trials = study.get_trials()
    states = [t.state for t in trials]
    assert TrialState.RUNNING not in states and len(trials) == 7
    # B (worst, slowest) reaches step 5 after A finished: ASHA cuts it and it is PRUNED, not COMPLETE
    by_seed = {t.user_attrs.get("seed_config"): t for t in trials}
    assert set(by_seed) >= {"A", "B"}
    b = by_seed["B"]
    assert b.state == TrialState.PRUNED
    assert b.user_attrs["fail_reason"] == "pruned at step 5 by ASHA"
    assert list(b.intermediate_values) == [5]
    for t in trials:  # intermediate values at the training step, never Tune's 1, 2, 3
        assert set(t.intermediate_values) <= set(STEPS)
        assert t.user_attrs["metrics"]["db_open"] == 0.0
        assert t.user_attrs["metrics"]["pid"] != os.getpid()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    for t in complete:
        assert sorted(t.intermediate_values) == list(STEPS)
        for key in ("wall_time_s", "compute_hours", "multipliers", "seed", "last_step", "metrics", "sigma_end"):
            assert key in t.user_attrs, key
        assert t.user_attrs["seed"] == 7
    assert study.best_trial.user_attrs["last_step"] == 20
    assert summary.best_number == by_seed["A"].number
    assert study.user_attrs["ledger"]["trials"] == 7
    assert study.metric_names == ["acc"]  # optuna-dashboard shows the metric, not "Objective 0"
    # the live display: events, and a summary with counts and best so far
    shown = stream.getvalue()
    assert f"trial {b.number} pruned" in shown
    assert "best 1.0000 (trial" in shown and "remaining ~" in shown
    # correction 8: the password is nowhere noisesweep or Ray wrote
    out, err = capfd.readouterr()
    assert secret not in shown + out + err
    assert "sweeper:***@db.internal" in shown
    roots = [tmp_path / "ray", Path(ray_local._private.worker._global_node.get_session_dir_path())]
    scanned = 0
    for root in roots:
        for f in root.rglob("*"):
            if f.is_file() and not f.is_symlink() and f.stat().st_size < 50_000_000:
                assert secret.encode() not in f.read_bytes(), f
                scanned += 1
    assert scanned > 5  # Ray really wrote experiment state / trial files there
    assert any("searcher-state" in p.name for p in (tmp_path / "ray").rglob("*"))


def test_resume_after_dead_driver_keeps_results_and_fails_stale(ray_local, tmp_path):
    url = f"sqlite:///{tmp_path / 'resume.db'}"
    objective = make_objective()
    first = run_sweep(make_plan("resume", Budget(trials=3), objective, pruning=False), storage_url=url,
                      results_dir=tmp_path / "ray", stream=io.StringIO())
    assert len(first.ran_now) == 3
    study = optuna.load_study(study_name="resume", storage=url)
    before = {t.number: (t.params, t.value) for t in study.get_trials() if t.state == TrialState.COMPLETE}
    assert len(before) == 3
    # a driver dies mid-trial: its trial stays RUNNING in the storage, with no heartbeat
    study.enqueue_trial({"x": 0.42, "zones": "high"})
    dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1),
                      "zones": optuna.distributions.CategoricalDistribution(["all", "high"])})
    time.sleep(1.2)
    second = run_sweep(make_plan("resume", Budget(trials=5), objective, pruning=False), storage_url=url,
                       results_dir=tmp_path / "ray", stream=io.StringIO(), grace_period=1)
    assert second.failed_stale == [dead.number]
    assert second.enqueued == []  # seeds A and B were enqueued by the first run only
    trials = study.get_trials()
    assert TrialState.RUNNING not in [t.state for t in trials]
    d = trials[dead.number]
    assert d.state == TrialState.FAIL and d.user_attrs["fail_reason"] == "driver died"
    rerun = [t for t in trials if t.user_attrs.get("requeued_trials") == dead.number]
    assert len(rerun) == 1 and rerun[0].state == TrialState.COMPLETE
    assert rerun[0].params == {"x": 0.42, "zones": "high"}
    after = {t.number: (t.params, t.value) for t in trials if t.number in before}
    assert after == before  # no completed trial lost or changed
    assert sum(1 for t in trials if t.state == TrialState.COMPLETE) == 5  # budget: dead one not charged
    seeds = [t.user_attrs.get("seed_config") for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(s for s in seeds if s) == ["A", "B"]  # no seed config ran twice
    # a third run with the same budget launches nothing
    third = run_sweep(make_plan("resume", Budget(trials=5), objective, pruning=False), storage_url=url,
                      results_dir=tmp_path / "ray", stream=io.StringIO())
    assert third.ran_now == [] and "trial budget reached" in third.stop_reason


def test_compute_budget_stops_before_projected_spend_passes(ray_local, tmp_path):
    url = f"sqlite:///{tmp_path / 'budget.db'}"
    # each trial claims 360 s on 1 CPU = 0.1 CPU-hours; budget 0.35 h -> 3 trials, not 4
    plan = make_plan("budget", Budget(compute_hours=0.35), make_objective(fake_wall_s=360.0), pruning=False)
    summary = run_sweep(plan, storage_url=url, results_dir=tmp_path / "ray", stream=io.StringIO())
    assert len(summary.ran_now) == 3
    assert summary.ledger["compute_hours"] == pytest.approx(0.3)
    assert "projected 0.4000" in summary.stop_reason
    study = optuna.load_study(study_name="budget", storage=url)
    assert study.user_attrs["ledger"] == {"compute_hours": 0.3, "trials": 3}


def fast_command_objective(space, command):
    """Stands in for the user's verl command: a curve in sigma_start, at steps 5..20."""

    def objective(config: dict, report) -> TrialResult:
        s = float(config["sigma_start"])
        value = 0.0
        for step in STEPS:
            value = (1.0 - abs(s - 0.05)) * step / 20
            report(step, {"val-core/openai/gsm8k/acc/mean@1": value})
        return TrialResult(status="complete", value=value, step=20, wall_time_s=1.0)

    return objective


def test_run_and_status_commands(ray_local, tmp_path, monkeypatch, capsys):
    from sweep.cli import main

    monkeypatch.setattr(runner, "command_objective", fast_command_objective)
    monkeypatch.delenv("NOISESWEEP_STORAGE", raising=False)
    db = tmp_path / "cli.db"
    url = f"sqlite:///{db}"
    study = "studies/verl-command-mxfp4-w4a4.yaml"
    cpu = ["--set", "resources.gpus_per_trial=0", "--set", "resources.cpus_per_trial=1",
           "--set", "seed_configs=[E13i-baseline, E13i-targeted]"]
    # bad input: one line, exit 2, nothing written (the shipped cwd is the user's verl checkout)
    assert main(["run", study, "--storage", url, *cpu]) == 2
    from sweep.study_loader import load_study

    checkout = tmp_path / "verl"
    checkout.mkdir()
    cpu += ["--set", f"objective.command.cwd={checkout}"]
    # the script the shipped study names must exist relative to cwd (preflight); the objective is faked
    script = checkout / next(a for a in load_study(study).objective.command.command if a.endswith(".sh"))
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/bash\n")
    assert main(["run", study, "--storage", url, "--set", "budget.trials=zero"]) == 2
    assert main(["run", study, "--storage", url, "--trials", "0"]) == 2
    assert main(["run", study, "--storage", "postgresql://u:Zz9-secret@127.0.0.1:1/x"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 4 and "objective.command.cwd" in err and "Zz9-secret" not in err
    assert not db.exists()
    # a real run, then a second one that continues the same study
    assert main(["run", study, "--storage", url, "--trials", "2", *cpu]) == 0
    out = capsys.readouterr().out
    assert "best: trial" in out and '"sigma_start": 0.05' in out  # E13i-baseline is the optimum here
    assert f"noisesweep export {study} --format verl" in out and "noisesweep dashboard" in out
    assert main(["run", study, "--storage", url, "--trials", "3", *cpu]) == 0
    s = optuna.load_study(study_name="verl-command-mxfp4-w4a4", storage=url)
    trials = s.get_trials()
    assert [t.state for t in trials].count(TrialState.COMPLETE) == 3
    assert sorted(t.user_attrs["seed_config"] for t in trials if "seed_config" in t.user_attrs) == [
        "E13i-baseline", "E13i-targeted"]
    assert s.user_attrs["noisesweep_spec"]["name"] == "verl-command-mxfp4-w4a4"
    assert "srdd_profile" in s.user_attrs
    capsys.readouterr()
    assert main(["status", "--storage", url]) == 0
    table = capsys.readouterr().out
    assert "verl-command-mxfp4-w4a4" in table and "3/24 trials" in table
    assert main(["status", "--storage", url, "nope"]) == 2


def test_ray_log_records_go_to_the_log_file_not_the_terminal(tmp_path, monkeypatch, capfd):
    """Ray's own notices (the token-authentication one in the middle of `make sweep`, Tune's
    "Trial task failed" tracebacks) land in ray-driver.log; NOISESWEEP_RAY_LOGS=1 keeps them."""
    import logging

    from sweep import ray_setup

    ray_logger = logging.getLogger("ray")
    saved = (list(ray_logger.handlers), ray_logger.propagate)
    try:
        log = tmp_path / "ray-driver.log"
        monkeypatch.delenv("NOISESWEEP_RAY_LOGS", raising=False)
        ray_setup.route_ray_logs(log)
        ray_setup.route_ray_logs(log)  # a second run in the same process adds no second handler
        logging.getLogger("ray._private.authentication").warning("Token authentication is enabled for this Ray cluster.")
        logging.getLogger("ray.tune.execution.tune_controller").error("Trial task failed for trial trial_1")
        for h in ray_logger.handlers:
            h.flush()
        err = capfd.readouterr().err
        assert "Token authentication" not in err and "Trial task failed" not in err
        text = log.read_text()
        assert text.count("Token authentication is enabled") == 1 and "Trial task failed" in text
        # with NOISESWEEP_RAY_LOGS=1 Ray's handlers are left as they are
        ray_logger.handlers[:] = saved[0]
        monkeypatch.setenv("NOISESWEEP_RAY_LOGS", "1")
        ray_setup.route_ray_logs(tmp_path / "other.log")
        assert ray_logger.handlers == saved[0] and not (tmp_path / "other.log").exists()
    finally:
        for h in ray_logger.handlers:
            if h not in saved[0]:
                h.close()
        ray_logger.handlers[:] = saved[0]
        ray_logger.propagate = saved[1]


@pytest.mark.slow
def test_the_cli_prints_only_its_own_lines(tmp_path):
    """`noisesweep run` starting its own Ray: every stderr line is the sweep's (no Ray WARNING)."""
    import faultlib

    study = faultlib.write_study(tmp_path / "quiet.yaml", faultlib.command_study("quiet", trials=2, max_concurrent=2))
    env = faultlib.clean_env(NOISESWEEP_RAY_DIR=str(tmp_path / "ray"))
    proc = faultlib.run_cli(["run", str(study), "--storage", f"sqlite:///{tmp_path / 'q.db'}"], env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    noise = [line for line in proc.stderr.splitlines() if line.strip() and not line.startswith("[sweep] ")]
    assert not noise, noise
