"""Shared helpers for the fault tests: fast objectives, study-file writers, subprocess drivers.

The fault tests run the real product (the `noisesweep` CLI, Ray, Optuna, the command
objective) against a fast trainer: tests/fake_verl.py, a verl look-alike that prints verl's
metric lines in about a second. A study file selects it through the ordinary
`objective: {kind: command}` section, so no test-only code path exists in the product.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from objective.result import TrialResult
from sweep.budget import NOT_COUNTED_REASONS, counts

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
BIN_DIR = Path(PYTHON).parent
NOISESWEEP = str(BIN_DIR / "noisesweep")
RAY = str(BIN_DIR / "ray")
FAKE_VERL = REPO / "tests" / "fake_verl.py"
QWEN_PROFILE = REPO / "studies" / "priors" / "qwen2.5-1.5b-mxfp4.json"
ACC_KEY = "val-core/openai/gsm8k/acc/mean@1"
DRIVER_DIED = "driver died"
ARTIFACTS = REPO / "test-artifacts"


# --------------------------------------------------------------------------- servers
def postgres_fixture(password: str) -> Any:
    """A module-scoped `postgres` fixture: one throwaway server (tests/servers.py) with `password`.

    Why a factory: each fault module uses its own password, so a leak check can search for it.
    Use as `postgres = faultlib.postgres_fixture(PASSWORD)` at module level.
    """

    @pytest.fixture(scope="module")
    def postgres():
        from servers import start_postgres

        server = start_postgres(password)
        yield server
        server.stop()

    return postgres


# --------------------------------------------------------------------------- study files
def command_study(
    name: str,
    *,
    trials: int,
    storage: str | None = None,
    step_sleep: float = 0.04,
    max_concurrent: int = 1,
    pruning: bool = False,
    timeout_s: float = 120,
    extra_overrides: Iterable[str] = (),
    seed_configs: Any = "default",
) -> dict[str, Any]:
    """A study whose objective is fake_verl (20 steps, validation every 5, ~1 s a trial)."""
    spec: dict[str, Any] = {
        "name": name,
        "objective": {
            "kind": "command",
            "command": {
                "command": [PYTHON, str(FAKE_VERL)],
                "noise_keys": "verl-fork-patched",  # the trial's NoisePlan in the fork's keys, [AQN] lines checked
                "extra_overrides": [
                    "+fake.patched=true",  # the stand-in with the layer_sigma_config fix
                    "trainer.test_freq=5",
                    "trainer.total_training_steps=20",
                    f"+fake.step_sleep={step_sleep}",
                    *extra_overrides,
                ],
                "metric": ACC_KEY,
                "timeout_s": timeout_s,
                "kill_grace_s": 1,
            },
        },
        "profile": str(QWEN_PROFILE),
        "seed_configs": seed_configs,
        "budget": {"trials": trials},
        "pruning": {"enabled": pruning, "kind": "asha", "rungs": [5, 10, 15], "reduction_factor": 2},
        "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0, "max_concurrent": max_concurrent},
        "sampler": {"kind": "tpe", "seed": 0, "n_startup_trials": 3},
        "trial_seed": 3,
    }
    if storage is not None:
        spec["storage"] = storage
    return spec


def write_study(path: Path, spec: dict[str, Any]) -> Path:
    """Write a study dict as YAML; return the path."""
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --------------------------------------------------------------------------- the CLI as a process
def clean_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell would give the CLI: no NOISESWEEP_* from the test run."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NOISESWEEP_", "RAY_ADDRESS"))}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def run_cli(args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `noisesweep ARGS` to completion, capturing its output."""
    return subprocess.run([NOISESWEEP, *args], env=env or clean_env(), cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


class Driver:
    """`noisesweep run ...` in its own session (process group), output captured to files."""

    def __init__(self, args: list[str], *, env: dict[str, str], log_dir: Path, tag: str,
                 cwd: Path | None = None) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.out_path = log_dir / f"{tag}.stdout"
        self.err_path = log_dir / f"{tag}.stderr"
        self._out = open(self.out_path, "w")
        self._err = open(self.err_path, "w")
        self.proc = subprocess.Popen([NOISESWEEP, *args], env=env, cwd=cwd, stdout=self._out,
                                     stderr=self._err, start_new_session=True)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"driver did not finish in {timeout} s; stderr tail:\n{self.stderr()[-3000:]}") from None
        finally:
            self._out.close()
            self._err.close()

    def kill(self) -> None:
        """SIGKILL the whole process group (the driver, its Ray workers' parents, trainers)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass

    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")


def session_pids(sid: int) -> list[int]:
    """Live processes whose session id is `sid` (a killed driver's leftovers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields after ')': state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.append(int(entry.name))
    return pids


def driver_tracebacks(text: str) -> list[str]:
    """Traceback lines the driver itself printed.

    Lines prefixed by a Ray worker, e.g. ``(noisesweep_trial pid=123)``, are the worker's own
    shutdown noise forwarded by Ray (an "Exception ignored" when Tune SIGTERMs a finished trial's
    actor), not the driver's; they are excluded.
    """
    import re

    worker = re.compile(r"^(\x1b\[[0-9;]*m)?\((noisesweep_trial|ImplicitFunc|raylet|pid=)")
    return [line for line in text.splitlines() if "Traceback" in line and not worker.match(line)]


def wait_for(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.5, what: str = "") -> None:
    """Poll until predicate() is true; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


# --------------------------------------------------------------------------- the study record
def load_trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """All trials of study `name` (empty when the study or its tables do not exist yet)."""
    try:
        storage = optuna.storages.RDBStorage(url, skip_table_creation=True)
    except Exception:  # noqa: BLE001 - tables not created yet
        return []
    try:
        study = optuna.load_study(study_name=name, storage=storage)
        return study.get_trials(deepcopy=False)
    except KeyError:
        return []
    finally:
        storage.engine.dispose()


def count_state(trials: list[optuna.trial.FrozenTrial], state: TrialState) -> int:
    return sum(1 for t in trials if t.state == state)


def finished(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """Trials that count as done work: COMPLETE, PRUNED, or FAIL for a reason of their own."""
    return [t for t in trials if counts(t)]  # sweep.budget's rule (a surplus trial never ran)


def requeued_fails(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """FAIL trials whose config was not at fault (driver died, node lost, outage): re-queued."""
    return [t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("fail_reason") in NOT_COUNTED_REASONS]


def assert_sound_study(trials: list[optuna.trial.FrozenTrial], *, budget: int, seed_names: Iterable[str]) -> None:
    """The invariants every fault test checks on the final study record.

    - exactly `budget` finished trials, none RUNNING or WAITING;
    - trial numbers unique and contiguous from 0;
    - each seed config ran at most once among counted trials (a trial failed for a reason that
      is not the config's, sweep.budget.NOT_COUNTED_REASONS, is re-queued once, so a seed may
      appear once more on such a FAIL trial);
    - every seed config ran (the budget is larger than the seed list).
    """
    numbers = sorted(t.number for t in trials)
    assert numbers == list(range(len(trials))), f"trial numbers not unique/contiguous: {numbers}"
    assert count_state(trials, TrialState.RUNNING) == 0, "trials left RUNNING"
    assert count_state(trials, TrialState.WAITING) == 0, "enqueued trials never ran"
    done = finished(trials)
    assert len(done) == budget, f"{len(done)} finished trials, expected {budget}: {[(t.number, t.state.name) for t in trials]}"
    per_seed: dict[str, int] = {}
    for t in done:
        name = t.user_attrs.get("seed_config")
        if name:
            per_seed[name] = per_seed.get(name, 0) + 1
    dup = {k: v for k, v in per_seed.items() if v > 1}
    assert not dup, f"seed configs run more than once: {dup}"
    assert set(per_seed) == set(seed_names), f"seed configs run: {sorted(per_seed)}, expected {sorted(seed_names)}"
    # a driver-death (node-lost, outage) trial is re-queued exactly once
    died = requeued_fails(trials)
    requeued = [t.user_attrs.get("requeued_trials") for t in trials if "requeued_trials" in t.user_attrs]
    assert sorted(requeued) == sorted(t.number for t in died), (requeued, [t.number for t in died])


def sqlite_dump(db_path: Path) -> str:
    """Every row of a sqlite database as SQL text: equal dumps = nothing was written."""
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return "\n".join(con.iterdump())
    finally:
        con.close()


def seed_names_of(study_path: Path) -> list[str]:
    """Names of the seed configs a study file enqueues (through the product's own loader)."""
    from sweep.space import SearchSpace
    from sweep.study_loader import load_study

    spec = load_study(study_path)
    space = SearchSpace.from_spec(spec, spec.srdd_profile)
    return [name for name, _ in space.seed_configs()]


def grep_tree(roots: Iterable[Path], needle: str) -> list[str]:
    """Files under `roots` whose bytes contain `needle` (checked as raw bytes, any encoding)."""
    hits = []
    raw = needle.encode()
    for root in roots:
        root = Path(root)
        if root.is_file():
            files = [root]
        elif root.is_dir():
            files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
        else:
            continue
        for path in files:
            try:
                if raw in path.read_bytes():
                    hits.append(str(path))
            except OSError:
                continue
    return hits


# --------------------------------------------------------------------------- in-process objectives
def fake_verl_trial(values: dict[str, Any], report: Callable, *, mode: str = "normal", timeout_s: float = 60,
                    kill_after_s: float | None = None, workdir: str | None = None) -> TrialResult:
    """One trial of fake_verl through the real command objective (optionally SIGKILLed)."""
    from objective.command import CommandSpec, run_command_trial

    pid_file = Path(workdir or "/tmp") / f"fake-verl-{os.getpid()}-{time.monotonic_ns()}.pid"
    spec = CommandSpec(
        command=[PYTHON, str(FAKE_VERL)],
        param_map={"sigma_start": "trainer.noise_injection.sigma_start",
                   "sigma_end": "trainer.noise_injection.sigma_end"},
        extra_overrides=["trainer.noise_injection.enabled=true", "trainer.test_freq=5",
                         "trainer.total_training_steps=20", "+fake.step_sleep=0.03",
                         f"+fake.mode={mode}", f"+fake.pid_file={pid_file}"],
        metric=ACC_KEY,
        kill_grace_s=1,
    )
    killer = None
    if kill_after_s is not None:
        def kill_it() -> None:
            deadline = time.monotonic() + 30
            while not pid_file.exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(kill_after_s)
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass
        killer = threading.Thread(target=kill_it, daemon=True)
        killer.start()
    try:
        return run_command_trial(spec, values, report, timeout_s=timeout_s)
    finally:
        if killer is not None:
            killer.join(timeout=5)
        pid_file.unlink(missing_ok=True)


def jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


# --------------------------------------------------------------------------- a study without Ray
def make_contract_study(url: str, study_path: Path, *, states: Iterable[str]) -> optuna.Study:
    """A study as `noisesweep run` records it, built through the product's own space (no Ray).

    Each trial is asked through SearchSpace.define (so params, distributions and the derived
    sigma_end/multipliers are the product's), gets the contract's user_attrs and intermediate
    values at the real steps, and ends in the given state ("complete", "pruned", "fail").
    """
    import math as _math

    from sweep.space import SearchSpace
    from sweep.study_loader import load_study

    spec = load_study(study_path)
    profile = spec.srdd_profile
    space = SearchSpace.from_spec(spec, profile)
    study = optuna.create_study(study_name=spec.name, storage=url, direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=5))
    study.set_user_attr("noisesweep_spec", spec.to_record())
    study.set_user_attr("srdd_profile", json.loads(profile.to_json()))
    for i, state in enumerate(states):
        trial = study.ask()
        derived = space.define(trial)["noise_plan"]
        x = _math.log10(trial.params["sigma_start"])
        final = round(0.55 + 0.05 * _math.exp(-((x + 2.0) ** 2)) + 0.001 * i, 6)
        steps = [5, 10, 15, 20] if state != "pruned" else [5, 10]
        for step in steps:
            trial.report(round(0.08 + (final - 0.08) * step / 20, 6), step)
        attrs = {"sigma_end": derived["sigma_end"], "multipliers": list(derived["multipliers"]), "seed": 0,
                 "wall_time_s": 60.0 + i, "compute_hours": (60.0 + i) / 3600, "last_step": steps[-1],
                 "metrics": {ACC_KEY: final}}
        if state == "pruned":
            attrs["fail_reason"] = "pruned at step 10 by ASHA"
        if state == "fail":
            attrs["fail_reason"] = "exit code 1: RuntimeError: CUDA error: an illegal memory access"
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        if state == "complete":
            study.tell(trial, final)
        elif state == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
        else:
            study.tell(trial, state=TrialState.FAIL)
    return study
