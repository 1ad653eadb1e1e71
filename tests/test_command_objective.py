"""The command objective against a fake verl script: overrides, streaming, kills, failures."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from objective.command import (
    FORK_MULTIPLIERS_KEY,
    FORK_PARAM_MAP,
    CommandSpec,
    build_overrides,
    group_alive,
    hydra_value,
    multipliers_dict,
    run_command_trial,
)
from objective.result import StopTrial

TESTS = Path(__file__).resolve().parent
FAKE = TESTS / "fake_verl.py"
sys.path.insert(0, str(TESTS))
import fake_verl  # noqa: E402

ACC = fake_verl.ACC_KEY
# Seed multipliers of the configuration guide, with the low zone switched off (0.0 must arrive).
MULTS = [0.83, 0.89, 0.93, 0.93, 0.93, 0.98, 0.99, 1.01, 1.00, 1.02, 1.06, 1.10, 1.12, 1.11,
         1.15, 1.17, 1.15, 1.12, 1.09, 1.07, 1.02, 0.99, 0.96, 0.94, 0.91, 0.90, 0.0, 0.0]
VALUES = {"sigma_start": 0.01, "sigma_end": 1e-4, "num_stages": 10, "multipliers": MULTS, "seed": 7}


def make_spec(*fake: str, **kw) -> CommandSpec:
    fields = dict(
        command=[sys.executable, str(FAKE)],
        param_map=dict(FORK_PARAM_MAP),
        multipliers_key=FORK_MULTIPLIERS_KEY,
        extra_overrides=["trainer.noise_injection.enabled=true",
                         "++trainer.noise_injection.use_variable_sigma=true", *fake],
        kill_grace_s=1.0,
    )
    fields.update(kw)
    return CommandSpec(**fields)


def pid_alive(pid: int) -> bool:
    """Running (zombies awaiting their reaper count as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != b"Z"


def wait_for_file(path: Path, timeout: float = 10.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.02)
    raise AssertionError(f"{path} never appeared")


def expected_acc(step: int, values=VALUES, extra=None) -> float:
    cfg = {"trainer.noise_injection.enabled": True, "trainer.noise_injection.use_variable_sigma": True,
           "trainer.noise_injection.sigma_start": values["sigma_start"],
           "trainer.noise_injection.layer_multipliers": multipliers_dict(values["multipliers"])}
    cfg.update(extra or {})
    return fake_verl.accuracy_at(step, 20, cfg)


# --------------------------------------------------------------------------- overrides


def test_hydra_value_formats() -> None:
    np = pytest.importorskip("numpy")
    assert hydra_value(1e-05) == "1e-05"
    assert hydra_value(0.1 + 0.2) == "0.30000000000000004"
    assert hydra_value(np.float32(0.5)) == "0.5" and hydra_value(np.int64(3)) == "3"
    assert hydra_value(True) == "true" and hydra_value(None) == "null" and hydra_value(10) == "10"
    assert hydra_value(float("nan")) == "nan" and hydra_value(-math.inf) == "-inf"
    assert hydra_value("console") == "console"
    assert hydra_value("true") == "'true'" and hydra_value("1e3") == "'1e3'"
    assert hydra_value("/data/gsm8k/train.parquet") == "'/data/gsm8k/train.parquet'"
    assert hydra_value(["console", "file"]) == "[console,file]"
    assert hydra_value({0: 0.83, 1: 1.0}) == "{0:0.83,1:1.0}"
    with pytest.raises(ValueError, match="dict key"):
        hydra_value({"a b": 1})
    with pytest.raises(ValueError, match="cannot write"):
        hydra_value(object())


def test_multipliers_dict_validation() -> None:
    assert multipliers_dict([0.5, 0.0]) == {0: 0.5, 1: 0.0}
    assert list(multipliers_dict({2: 1.0, 0: 0.5})) == [0, 2]
    for bad in ([0.5, -1.0], [math.nan], {"x": 1.0}, 3.0):
        with pytest.raises(ValueError, match="multipliers"):
            multipliers_dict(bad)


def test_spec_validation_and_mapping_errors() -> None:
    with pytest.raises(ValueError, match="not a Hydra key"):
        make_spec(param_map={"sigma_start": "trainer noise"})
    with pytest.raises(ValueError, match="set twice"):
        make_spec("trainer.noise_injection.sigma_start=0.1")
    with pytest.raises(ValueError, match="not key=value"):
        make_spec("trainer.noise_injection.sigma_start")
    with pytest.raises(ValueError, match="extra"):
        CommandSpec(command=["x"], bogus=1)
    with pytest.raises(ValueError, match="command is empty"):
        CommandSpec(command=" ")
    with pytest.raises(ValueError, match="no value 'seed'"):
        build_overrides(make_spec(param_map={"seed": "data.seed"}), {"sigma_start": 0.1, "multipliers": None})
    # multipliers None (uniform noise): the key is left to the fork's default
    spec = make_spec(extra_overrides=[])
    assert build_overrides(spec, {**VALUES, "multipliers": None}) == [
        "trainer.noise_injection.sigma_start=0.01", "trainer.noise_injection.sigma_end=0.0001",
        "trainer.noise_injection.num_stages=10"]
    with pytest.raises(FileNotFoundError, match="cwd"):
        run_command_trial(make_spec(cwd="/nonexistent/dir"), VALUES)
    for bad, needle in (({"command": []}, "command: Value error, command is empty"),
                        ({"command": ["x"], "timeout_s": -1, "bogus": 1}, "(+1 more)")):
        with pytest.raises(ValueError) as info:  # a plain dict spec: one line, not pydantic's block
            run_command_trial(bad, VALUES)
        assert needle in str(info.value) and "\n" not in str(info.value)


TRICKY = {"note": "it's a \\path\\ with 'quotes', commas, {braces} and spaces\\",
          "flag": False, "nothing": None, "layers": [10, 11, 19], "lr": 1e-5, "name": "true"}


@pytest.mark.parametrize("shell", [False, True])
def test_overrides_arrive_exactly(tmp_path: Path, shell: bool) -> None:
    """Every value, the 28-layer multipliers dict included, reads back identical in the trainer."""
    argv_file = tmp_path / "argv.json"
    values = {**VALUES, "sigma_end": 1 / 3 * 1e-4, **TRICKY}
    param_map = {**FORK_PARAM_MAP, "seed": ["data.seed", "actor_rollout_ref.rollout.seed"],
                 **{name: f"+fake.{name}" for name in TRICKY}}
    command = f"{sys.executable} {FAKE}" if shell else [sys.executable, str(FAKE)]
    spec = make_spec(f"+fake.argv_file={argv_file}", command=command, param_map=param_map)
    result = run_command_trial(spec, values)
    assert result.status == "complete", result.reason
    got = fake_verl.parse_overrides(json.loads(argv_file.read_text()))
    for name, key in FORK_PARAM_MAP.items():
        assert got[key] == values[name] and type(got[key]) is type(values[name])
    assert got["data.seed"] == got["actor_rollout_ref.rollout.seed"] == 7
    for name, value in TRICKY.items():
        assert got[f"fake.{name}"] == value and type(got[f"fake.{name}"]) is type(value)
    mults = got[FORK_MULTIPLIERS_KEY.lstrip("+")]
    assert list(mults) == list(range(28)) and all(type(k) is int for k in mults)
    assert list(mults.values()) == MULTS  # exact floats, zeros of switched-off layers included
    assert result.applied["multipliers"] == MULTS
    assert result.value == expected_acc(20, values)


def test_overrides_agree_with_hydra() -> None:
    """Where hydra-core is installed, its own parser reads our overrides back unchanged."""
    parser_mod = pytest.importorskip("hydra.core.override_parser.overrides_parser")
    parser = parser_mod.OverridesParser.create()
    values = {**VALUES, **TRICKY}
    spec = make_spec(extra_overrides=[], param_map={**FORK_PARAM_MAP, **{n: f"+fake.{n}" for n in TRICKY}})
    for override in build_overrides(spec, values):
        parsed = parser.parse_override(override)
        key = parsed.key_or_group
        name = next((n for n, k in spec.param_map.items() if k.lstrip("+") == key), None)
        expected = multipliers_dict(MULTS) if key == FORK_MULTIPLIERS_KEY.lstrip("+") else values[name]
        assert parsed.value() == expected, override


# --------------------------------------------------------------------------- streaming


def test_reports_stream_at_validation_steps(tmp_path: Path) -> None:
    seen: list[tuple[int, float, float]] = []
    log = tmp_path / "trial.log"

    def report(step: int, metrics: dict[str, float]) -> None:
        seen.append((step, metrics[ACC], time.monotonic()))

    start = time.monotonic()
    result = run_command_trial(make_spec("+fake.step_sleep=0.04"), VALUES, report, log_path=log)
    end = time.monotonic()
    assert result.status == "complete", result.reason
    assert [s for s, _, _ in seen] == [0, 5, 10, 15, 20]
    assert [v for _, v, _ in seen] == [expected_acc(s) for s in (0, 5, 10, 15, 20)]
    assert seen[0][2] - start < (end - start) - 0.4  # step 0 arrived while training still ran
    assert result.value == expected_acc(20) and result.step == 20
    assert [h["step"] for h in result.history] == [0, 5, 10, 15, 20]
    assert result.history[2]["metrics"]["critic/score/mean"] == pytest.approx(0.3)
    text = log.read_text()
    assert "182 HW error hooks registered" in text and "Started a local Ray instance" in text


def test_jsonl_source_gives_full_precision(tmp_path: Path) -> None:
    """verl's file logger: console prints 3 decimals, the JSONL file keeps every digit."""
    seen = []
    spec = make_spec("trainer.logger=[file]", "+fake.value_format=3f",
                     log_source={"jsonl": "{workdir}/metrics/run.jsonl"})
    result = run_command_trial(spec, VALUES, lambda s, m: seen.append((s, m[ACC])), workdir=tmp_path)
    assert result.status == "complete", result.reason
    assert seen == [(s, expected_acc(s)) for s in (0, 5, 10, 15, 20)]
    assert result.applied["log_source"] == str(tmp_path / "metrics" / "run.jsonl")
    relative = run_command_trial(make_spec("trainer.logger=[file]", cwd=str(tmp_path),
                                           log_source={"jsonl": "rel/m.jsonl"}), VALUES)
    assert relative.value == result.value and (tmp_path / "rel" / "m.jsonl").is_file()
    console = run_command_trial(make_spec("+fake.value_format=3f"), VALUES)
    assert console.value == round(expected_acc(20), 3) != result.value


def test_missing_metric_fails_clearly() -> None:
    result = run_command_trial(make_spec("+fake.mode=nometric"), VALUES)
    assert result.status == "failed" and result.value is None
    assert f"metric {ACC} never appeared in the console output (21 metric steps" in result.reason
    typo = run_command_trial(make_spec(metric="val-core/openai/gsm8k/acc/mean@2"), VALUES)
    assert typo.status == "failed" and "validation keys seen: val-aux/openai/gsm8k/reward/mean@1, " \
        "val-core/openai/gsm8k/acc/mean@1" in typo.reason


def test_nan_metric_fails() -> None:
    seen = []
    result = run_command_trial(make_spec("+fake.mode=nanmetric"), VALUES, lambda s, m: seen.append(s))
    assert result.status == "failed" and result.reason == f"metric {ACC} is nan at step 10"
    assert seen == [0, 5] and result.step == 5 and result.value == expected_acc(5)


def test_crash_and_exit_code_reasons() -> None:
    crash = run_command_trial(make_spec("+fake.mode=crash"), VALUES)
    assert crash.status == "failed"
    assert crash.reason == "exit code 1: RuntimeError: CUDA error: an illegal memory access was encountered"
    assert crash.applied["exit_code"] == 1 and crash.step == 5
    code = run_command_trial(make_spec("+fake.mode=exit", "+fake.exit_code=3"), VALUES)
    assert code.status == "failed"
    assert code.reason == "exit code 3: ValueError: Duplicate device type cpu in backend string"


def test_hydra_struct_error_surfaces() -> None:
    """A plain override of a key the fork's yaml lacks fails like Hydra does, with its message."""
    result = run_command_trial(make_spec(multipliers_key="trainer.noise_injection.layer_multipliers"), VALUES)
    assert result.status == "failed" and result.value is None
    assert result.reason == "exit code 1: Could not override 'trainer.noise_injection.layer_multipliers'."


def test_report_error_fails_trial() -> None:
    def report(step: int, metrics: dict[str, float]) -> None:
        if step == 10:
            raise RuntimeError("storage is gone")

    result = run_command_trial(make_spec(), VALUES, report)
    assert result.status == "failed" and result.reason == "report raised RuntimeError: storage is gone"
    assert not group_alive(result.applied["pid"])


# --------------------------------------------------------------------------- killing


@pytest.mark.parametrize("ignore_term", [False, True])
def test_prune_kills_whole_group(tmp_path: Path, ignore_term: bool) -> None:
    child_file = tmp_path / "child.pid"
    fake = ["+fake.step_sleep=0.05", f"+fake.child_pid_file={child_file}"]
    if ignore_term:
        fake.append("+fake.ignore_term=true")  # also inherited by the grandchild: only SIGKILL works

    def report(step: int, metrics: dict[str, float]) -> None:
        if step == 5:
            assert pid_alive(int(child_file.read_text()))
            raise StopTrial("ASHA rung 1")

    result = run_command_trial(make_spec(*fake), VALUES, report)
    assert result.status == "pruned" and result.reason == "pruned at step 5: ASHA rung 1"
    assert result.step == 5 and result.value == expected_acc(5)
    assert not pid_alive(int(child_file.read_text())) and not pid_alive(result.applied["pid"])
    assert not group_alive(result.applied["pid"])
    if ignore_term:
        assert result.wall_time_s >= 1.0  # waited kill_grace_s before SIGKILL


def test_timeout_kills_group(tmp_path: Path) -> None:
    child_file = tmp_path / "child.pid"
    seen = []
    spec = make_spec("+fake.mode=hang", f"+fake.child_pid_file={child_file}", timeout_s=60)
    result = run_command_trial(spec, VALUES, lambda s, m: seen.append(s), timeout_s=1.5)
    assert result.status == "failed" and result.reason == "timeout after 1.5 s"
    assert seen == [0] and 1.5 <= result.wall_time_s < 4.0
    assert not pid_alive(int(child_file.read_text())) and not group_alive(result.applied["pid"])


def test_leftover_grandchild_killed_after_normal_exit(tmp_path: Path) -> None:
    """The trainer exits 0 but left a child holding its stdout: the trial still ends, child killed."""
    child_file = tmp_path / "child.pid"
    result = run_command_trial(make_spec(f"+fake.child_pid_file={child_file}"), VALUES)
    assert result.status == "complete" and result.value == expected_acc(20)
    assert not pid_alive(int(child_file.read_text()))
    assert result.wall_time_s < 8.0


DRIVER = textwrap.dedent(
    """
    import sys
    from objective.command import CommandSpec, run_command_trial
    spec = CommandSpec(command=[sys.executable, sys.argv[1], "+fake.mode=hang",
                                "+fake.child_pid_file=" + sys.argv[2], "+fake.pid_file=" + sys.argv[3]],
                       kill_grace_s=1.0)
    print(run_command_trial(spec, {}))
    """
)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_sweep_shutdown_kills_trial(tmp_path: Path, sig: signal.Signals) -> None:
    """SIGTERM, Ctrl-C, even SIGKILL of the sweep process takes the trainer and its children along."""
    child_file, pid_file = tmp_path / "child.pid", tmp_path / "fake.pid"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(FAKE), str(child_file), str(pid_file)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        child, fake = int(wait_for_file(child_file)), int(wait_for_file(pid_file))
        time.sleep(0.2)
        assert pid_alive(child) and pid_alive(fake)
        driver.send_signal(sig)
        driver.wait(timeout=10)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == -sig  # died of the signal, as without our handler
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (pid_alive(child) or pid_alive(fake)):
        time.sleep(0.02)
    assert not pid_alive(child) and not pid_alive(fake)


def test_application_sigterm_handler_is_left_in_place() -> None:
    """Only a default SIGTERM action gets our kill-the-groups handler; an app's own stays."""
    code = textwrap.dedent(
        """
        import signal, sys
        from objective.command import run_command_trial
        mine = lambda s, f: None
        signal.signal(signal.SIGTERM, mine)
        result = run_command_trial({"command": [sys.executable, "-c", "print('step:1 - m:0.5')"], "metric": "m"}, {})
        print(result.status, signal.getsignal(signal.SIGTERM) is mine)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["complete", "True"]
    default = subprocess.run(
        [sys.executable, "-c", code.replace("signal.signal(signal.SIGTERM, mine)", "")],
        capture_output=True, text=True, timeout=60,
    )
    assert default.stdout.split() == ["complete", "False"]  # default action: our handler went in
