"""The command objective against a fake verl script: overrides, streaming, kills, failures."""

from __future__ import annotations

import dataclasses
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
    FORK_PARAM_MAP,
    CommandSpec,
    build_overrides,
    group_alive,
    hydra_value,
    multipliers_dict,
    noise_block,
    run_command_trial,
)
from objective.command.verl_fork import flatten_block, fork_overrides, fork_sigma_at, plan_from_values
from objective.result import StopTrial
from quant.noise_plan import NoisePlan

TESTS = Path(__file__).resolve().parent
FAKE = TESTS / "fake_verl.py"
sys.path.insert(0, str(TESTS))
import fake_verl  # noqa: E402

ACC = fake_verl.ACC_KEY
NOISE = "trainer.noise_injection"
LSC = f"{NOISE}.layer_sigma_config"
# Seed multipliers of the configuration guide, with the low zone switched off (0.0 must arrive).
MULTS = [0.83, 0.89, 0.93, 0.93, 0.93, 0.98, 0.99, 1.01, 1.00, 1.02, 1.06, 1.10, 1.12, 1.11,
         1.15, 1.17, 1.15, 1.12, 1.09, 1.07, 1.02, 0.99, 0.96, 0.94, 0.91, 0.90, 0.0, 0.0]
PLAN = NoisePlan(sigma_start=0.01, sigma_end=1e-4, num_stages=10, multipliers=tuple(MULTS), zones="high+medium", alpha=1.0)
VALUES = {**PLAN.to_dict(), "seed": 7}
PATCHED = "+fake.patched=true"  # the stand-in with the two-line layer_sigma_config fix


def make_spec(*fake: str, **kw) -> CommandSpec:
    """The fork's vocabulary on the patched stand-in (pass extra `+fake.*` switches as args)."""
    fields = dict(
        command=[sys.executable, str(FAKE)],
        noise_keys="verl-fork-patched",
        extra_overrides=[PATCHED, *fake],
        kill_grace_s=1.0,
    )
    fields.update(kw)
    return CommandSpec(**fields)


def generic_spec(*extra: str, **kw) -> CommandSpec:
    """A user's own key mapping (no fork vocabulary, no [AQN] check)."""
    fields = dict(command=[sys.executable, str(FAKE)], param_map=dict(FORK_PARAM_MAP),
                  extra_overrides=[f"{NOISE}.enabled=true", *extra], kill_grace_s=1.0)
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


def expected_acc(step: int, spec: CommandSpec | None = None, values=VALUES) -> float:
    """What the stand-in reports for these overrides: its accuracy follows the noise it applied."""
    cfg = fake_verl.parse_overrides(build_overrides(spec or make_spec(), values))
    return fake_verl.accuracy_at(step, 20, fake_verl.fork_of(cfg).effect())


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
        make_spec(f"{NOISE}.sigma_start=0.1")  # the fork vocabulary writes it
    with pytest.raises(ValueError, match="set twice"):
        make_spec(param_map={"sigma_start": f"{NOISE}.sigma_start"})
    with pytest.raises(ValueError, match="not key=value"):
        make_spec(f"{NOISE}.sigma_start")
    with pytest.raises(ValueError, match="extra"):
        CommandSpec(command=["x"], bogus=1)
    with pytest.raises(ValueError, match="command is empty"):
        CommandSpec(command=" ")
    with pytest.raises(ValueError, match="verify_applied: strict needs noise_keys"):
        CommandSpec(command=["x"], verify_applied="strict")
    with pytest.raises(ValueError, match="noise_keys"):
        CommandSpec(command=["x"], noise_keys="verl")
    assert make_spec().verify_mode == "strict" and generic_spec().verify_mode == "off"
    with pytest.raises(ValueError, match="no value 'seed'"):
        build_overrides(make_spec(param_map={"seed": "data.seed"}), {"sigma_start": 0.1, "multipliers": None})
    with pytest.raises(ValueError, match="needs the trial's noise plan"):
        build_overrides(make_spec(), {"seed": 1})
    # multipliers None (uniform noise): a generic multipliers key is left to the trainer's default
    spec = generic_spec(extra_overrides=[], multipliers_key="++a.mults")
    assert build_overrides(spec, {**VALUES, "multipliers": None}) == [
        f"{NOISE}.sigma_start=0.01", f"{NOISE}.sigma_end=0.0001", f"{NOISE}.num_stages=10"]
    with pytest.raises(FileNotFoundError, match="cwd"):
        run_command_trial(make_spec(cwd="/nonexistent/dir"), VALUES)
    for bad, needle in (({"command": []}, "command: Value error, command is empty"),
                        ({"command": ["x"], "timeout_s": -1, "bogus": 1}, "(+1 more)")):
        with pytest.raises(ValueError) as info:  # a plain dict spec: one line, not pydantic's block
            run_command_trial(bad, VALUES)
        assert needle in str(info.value) and "\n" not in str(info.value)


def test_plan_becomes_the_keys_the_fork_reads() -> None:
    """Schedule, zones as layer patterns, site, and the multipliers dict under layer_sigma_config."""
    block = noise_block(PLAN)
    assert block["enabled"] is True and (block["sigma_start"], block["sigma_end"], block["num_stages"]) == (0.01, 1e-4, 10)
    assert block["target_modules"] == [f"layers.{i}." for i in range(26)]  # 26, 27 are off: not targeted
    assert block["layer_types"] == ["rmsnorm"] and block["exclude_patterns"] == ["lm_head", "embed_tokens"]
    assert block["layer_sigma_config"] == {"enabled": True, "default_multiplier": 0.0,
                                           "layer_multipliers": dict(enumerate(MULTS))}
    keys = list(flatten_block(block))
    assert keys[:6] == [f"{NOISE}.{k}" for k in ("enabled", "sigma_start", "sigma_end", "num_stages",
                                                  "target_modules", "exclude_patterns")]  # declared: plain
    assert keys[6:] == [f"++{NOISE}.layer_types", f"++{LSC}.enabled", f"++{LSC}.default_multiplier",
                        f"++{LSC}.layer_multipliers"]  # not in ppo_trainer.yaml: force-added
    uniform = NoisePlan(sigma_start=0.05, sigma_end=5e-4, num_stages=10, multipliers=(0.0,) * 10 + (1.0,) * 10 + (0.0,) * 8)
    assert "layer_sigma_config" not in noise_block(uniform)  # uniform on the zone: patterns alone do it
    assert noise_block(uniform)["target_modules"] == [f"layers.{i}." for i in range(10, 20)]
    assert noise_block(dataclasses.replace(uniform, multipliers=None))["target_modules"] == ["layers."]
    assert noise_block(dataclasses.replace(uniform, sigma_start=0.0, sigma_end=0.0)) == {"enabled": False}
    assert noise_block(dataclasses.replace(PLAN, site="linear"))["layer_types"] == ["linear"]
    # the fork as it is cannot take per-layer multipliers: the trial fails before anything starts
    with pytest.raises(ValueError, match="per-layer multipliers requested but the fork as it is cannot apply them"):
        fork_overrides(PLAN, "verl-fork")
    assert fork_overrides(uniform, "verl-fork") == fork_overrides(uniform, "verl-fork-patched")
    assert plan_from_values(VALUES) == PLAN and plan_from_values({"seed": 1}) is None


def test_fork_sigma_follows_the_forks_own_arithmetic() -> None:
    """get_sigma_by_step's float interval edges, over the trainer's T (29), not QeRL's integer formula."""
    for plan in (PLAN, NoisePlan(sigma_start=0.05, sigma_end=5e-4, num_stages=6), NoisePlan(sigma_start=0.1, sigma_end=0.1, num_stages=3)):
        trend = fake_verl.get_sigma_schedule(plan.sigma_start, plan.sigma_end, plan.num_stages)
        for total in (29, 20):
            for step in range(total + 3):
                assert fork_sigma_at(plan, step, total) == fake_verl.get_sigma_by_step(step, total, trend)
    six = NoisePlan(sigma_start=0.05, sigma_end=5e-4, num_stages=6)
    assert fork_sigma_at(six, 10, 20)[1] != six.sigma_at(10, 20)  # 10 // (20 / 6) == 2, 10 * 6 // 20 == 3


TRICKY = {"note": "it's a \\path\\ with 'quotes', commas, {braces} and spaces\\",
          "flag": False, "nothing": None, "layers": [10, 11, 19], "lr": 1e-5, "name": "true"}


@pytest.mark.parametrize("shell", [False, True])
def test_overrides_arrive_exactly(tmp_path: Path, shell: bool) -> None:
    """Every value, the 28-layer multipliers dict included, reads back identical in the trainer."""
    argv_file = tmp_path / "argv.json"
    values = {**VALUES, "sigma_end": 1 / 3 * 1e-4, **TRICKY}
    param_map = {"seed": ["data.seed", "actor_rollout_ref.actor.fsdp_config.seed"],
                 **{name: f"+fake.{name}" for name in TRICKY}}
    command = f"{sys.executable} {FAKE}" if shell else [sys.executable, str(FAKE)]
    spec = make_spec(f"+fake.argv_file={argv_file}", command=command, param_map=param_map)
    result = run_command_trial(spec, values)
    assert result.status == "complete", result.reason
    got = fake_verl.parse_overrides(json.loads(argv_file.read_text()))
    for name in ("sigma_start", "sigma_end", "num_stages"):
        assert got[f"{NOISE}.{name}"] == values[name] and type(got[f"{NOISE}.{name}"]) is type(values[name])
    assert got["data.seed"] == got["actor_rollout_ref.actor.fsdp_config.seed"] == 7
    for name, value in TRICKY.items():
        assert got[f"fake.{name}"] == value and type(got[f"fake.{name}"]) is type(value)
    mults = got[f"{LSC}.layer_multipliers"]
    assert list(mults) == list(range(28)) and all(type(k) is int for k in mults)
    assert list(mults.values()) == MULTS  # exact floats, zeros of switched-off layers included
    assert got[f"{NOISE}.target_modules"] == [f"layers.{i}." for i in range(26)]
    assert result.applied["multipliers"] == MULTS and result.applied["verified"] is True
    assert result.value == expected_acc(20, spec, values)


def test_overrides_agree_with_hydra() -> None:
    """Where hydra-core is installed, its own parser reads our overrides back unchanged."""
    parser_mod = pytest.importorskip("hydra.core.override_parser.overrides_parser")
    parser = parser_mod.OverridesParser.create()
    values = {**VALUES, **TRICKY}
    spec = make_spec(extra_overrides=[], param_map={n: f"+fake.{n}" for n in TRICKY})
    expected = {k.lstrip("+"): v for k, v in flatten_block(noise_block(PLAN)).items()}
    expected.update({f"fake.{n}": v for n, v in TRICKY.items()})
    overrides = build_overrides(spec, values)
    assert len(overrides) == len(expected)
    for override in overrides:
        parsed = parser.parse_override(override)
        assert parsed.value() == expected[parsed.key_or_group], override


PPO_TRAINER_NOISE = """
trainer:
  total_epochs: 1
  noise_injection:   # verl/trainer/config/ppo_trainer.yaml of the fork, its declared keys
    enabled: false
    sigma_start: 0.05
    sigma_end: 0.0005
    num_stages: 10
    target_modules: []
    exclude_patterns: []
data:
  seed: null
"""


def test_hydra_composes_the_overrides_in_struct_mode(tmp_path: Path) -> None:
    """Hydra itself, on the fork's declared block: plain keys override, the others are force-added."""
    hydra = pytest.importorskip("hydra")
    (tmp_path / "cfg.yaml").write_text(PPO_TRAINER_NOISE)
    overrides = build_overrides(make_spec(extra_overrides=[], param_map={"seed": "data.seed"}), VALUES)
    with hydra.initialize_config_dir(str(tmp_path), version_base=None):
        cfg = hydra.compose("cfg", overrides=overrides)
        with pytest.raises(Exception, match="Could not override"):  # struct mode is on: a typo would fail
            hydra.compose("cfg", overrides=[f"{NOISE}.layer_types=[rmsnorm]"])
    ni = cfg.trainer.noise_injection
    assert list(ni.target_modules) == [f"layers.{i}." for i in range(26)] and list(ni.layer_types) == ["rmsnorm"]
    assert dict(ni.layer_sigma_config.layer_multipliers) == dict(enumerate(MULTS)) and cfg.data.seed == 7


# --------------------------------------------------------------------------- applied noise


def drop_args(word: str) -> list[str]:
    """A trainer command whose wrapper script loses every override containing `word`."""
    code = (f"import runpy, sys; sys.argv = [{str(FAKE)!r}] + [a for a in sys.argv[1:] if {word!r} not in a]; "
            f"runpy.run_path({str(FAKE)!r}, run_name='__main__')")
    return [sys.executable, "-c", code]


def test_per_layer_multipliers_verified_on_the_patched_fork() -> None:
    result = run_command_trial(make_spec(), VALUES)
    assert result.status == "complete", result.reason
    applied = result.applied
    assert applied["verified"] is True and applied["srdd_guided"] is True and applied["check"] == "strict"
    assert applied["schedule_total_steps"] == 29  # the fork's T: 1 epoch x 29 batches, not the 20 steps run
    assert applied["noised_layers"] == list(range(26)) and applied["modules_noised"] == 52  # 2 RMSNorms a layer
    sigmas = {s["step"]: s["sigma"] for s in applied["steps"]}
    assert sorted(sigmas) == list(range(21))  # a weight sync for every step 0..20
    assert all(math.isclose(sigmas[s], fork_sigma_at(PLAN, s, 29)[1], abs_tol=6e-7) for s in sigmas)
    assert sigmas[2] == 0.0 and sigmas[20] > 0 and applied["sigma_last"] == sigmas[20]
    assert result.value == expected_acc(20)


def test_unpatched_fork_drops_the_multipliers_and_the_trial_fails_at_once(tmp_path: Path) -> None:
    """The forwarding bug: uniform noise applied; the check stops the run at its first noise line."""
    log = tmp_path / "trial.log"
    spec = make_spec(extra_overrides=["+fake.step_sleep=0.05"])  # no +fake.patched: the fork as it is
    result = run_command_trial(spec, VALUES, log_path=log)
    assert result.status == "failed"
    assert result.reason == "per-layer multipliers requested but the trainer applied uniform noise"
    assert result.applied["verified"] is False and result.applied["not_applied"] == result.reason
    assert result.step is None and "step:5 -" not in log.read_text()  # killed before its first validation
    assert not group_alive(result.applied["pid"])


def test_the_fork_as_it_is_runs_zones_and_refuses_multipliers_before_starting() -> None:
    uniform = NoisePlan(sigma_start=0.05, sigma_end=5e-4, num_stages=10,
                        multipliers=(0.0,) * 10 + (1.0,) * 10 + (0.0,) * 8, zones="high")
    as_is = make_spec(noise_keys="verl-fork", extra_overrides=[])
    zones = run_command_trial(as_is, uniform.to_dict())
    assert zones.status == "complete" and zones.applied["verified"] is True, zones.reason
    assert zones.applied["srdd_guided"] is False and zones.applied["modules_noised"] == 20
    started = time.monotonic()
    refused = run_command_trial(as_is, VALUES)
    assert refused.status == "failed" and refused.reason.startswith(
        "per-layer multipliers requested but the fork as it is cannot apply them")
    assert "pid" not in refused.applied and time.monotonic() - started < 1.0


@pytest.mark.parametrize(("lost", "reason"), [
    ("target_modules", "zones requested (layers 0-25) but the trainer targeted ALL modules (no target pattern arrived)"),
    ("sigma_end", "sigma schedule 0.01 -> 0.0001 over 10 stages requested but the trainer applied sigma {got:g} "
                  "at step 6/29 (expected {want:.6f})"),  # the fork's default sigma_end (0.0005) instead
    ("layer_types", None),  # the fork's default is rmsnorm: losing it changes nothing
])
def test_lost_overrides_are_named(lost: str, reason: str | None) -> None:
    result = run_command_trial(make_spec(command=drop_args(lost)), VALUES)
    if reason is None:
        assert result.status == "complete" and result.applied["verified"] is True, result.reason
    else:
        got = float(f"{fork_sigma_at(dataclasses.replace(PLAN, sigma_end=5e-4), 6, 29)[1]:.6f}")
        want = fork_sigma_at(PLAN, 6, 29)[1]
        assert result.status == "failed" and result.reason == reason.format(got=got, want=want)


def test_check_counts_modules_and_pairs_lines() -> None:
    """The Applied line's counts must fit the noised layers; an announced sigma needs its Applied line."""
    from objective.command.applied import AppliedNoiseCheck

    plan = NoisePlan(sigma_start=0.05, sigma_end=5e-4, num_stages=10, multipliers=(0.0,) * 10 + (1.0,) * 10 + (0.0,) * 8)
    fork = fake_verl.Fork(fake_verl.parse_overrides(fork_overrides(plan)))
    head = fork.apply_noise(6)[0]  # the real announcement at a sigma > 0 step
    ok = AppliedNoiseCheck(plan)
    assert ok.feed(head) is None and ok.feed("[AQN] Applied noise to 20 rmsnorm layers (skipped 37 excluded layers)") is None
    assert ok.finish()[0]["modules_noised"] == 20
    wrong = AppliedNoiseCheck(plan)
    wrong.feed(head)
    assert wrong.feed("[AQN] Applied noise to 57 rmsnorm layers (skipped 0 excluded layers)") == (
        "noise requested on layers 10-19 (10 of 28) but the trainer noised 57 rmsnorm modules (skipped 0)")
    silent = AppliedNoiseCheck(plan)
    silent.feed(head)
    verdict, reason = silent.finish()
    assert verdict["verified"] is False
    assert reason == "the trainer announced sigma 0.028117 at step 6 but printed no 'Applied noise' line for it"
    stages = AppliedNoiseCheck(dataclasses.replace(plan, num_stages=5))
    assert stages.feed(fork.enabled_line()) == "5 noise stages requested but the trainer's rollout got 10 (a sigma_trend of 9 values)"


def test_rollout_level_key_crashes_the_fork_as_it_is() -> None:
    """RolloutConfig has no noise_injection_layer_sigma_config field: Hydra's instantiate raises."""
    spec = make_spec(extra_overrides=["++actor_rollout_ref.rollout.noise_injection_layer_sigma_config={enabled:true}"])
    result = run_command_trial(spec, VALUES)
    assert result.status == "failed" and result.reason == (
        "exit code 1: TypeError(\"RolloutConfig.__init__() got an unexpected keyword argument "
        "'noise_injection_layer_sigma_config'\")")


def test_a_trainer_that_prints_nothing_fails_strict_and_passes_warn() -> None:
    strict = run_command_trial(make_spec("+fake.aqn_lines=false"), VALUES)
    assert strict.status == "failed" and strict.reason.startswith("the trainer printed no [AQN] noise line")
    warn = run_command_trial(make_spec("+fake.aqn_lines=false", verify_applied="warn"), VALUES)
    assert warn.status == "complete" and warn.applied["verified"] is False
    assert warn.applied["warning"] == strict.reason and warn.value == expected_acc(20)
    off = run_command_trial(make_spec("+fake.aqn_lines=false", verify_applied="off"), VALUES)
    assert off.status == "complete" and "verified" not in off.applied


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
    result = run_command_trial(generic_spec(multipliers_key="trainer.noise_injection.layer_multipliers"), VALUES)
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
    # A shell runs background jobs with SIGINT ignored, and an ignored signal survives exec: a
    # suite started with `&` would then test a driver that cannot get Ctrl-C. The default
    # disposition is what a terminal's Ctrl-C reaches.
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(FAKE), str(child_file), str(pid_file)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        child, fake = int(wait_for_file(child_file)), int(wait_for_file(pid_file))
        time.sleep(0.2)
        assert pid_alive(child) and pid_alive(fake)
        driver.send_signal(sig)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == -sig  # died of the signal, as without our handler
    deadline = time.monotonic() + 15
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


# --------------------------------------------------------------------------- the shipped verl study

REPO = TESTS.parent
STUDY = REPO / "studies" / "verl-command-mxfp4-w4a4.yaml"
PARAMS = '{"sigma_start": 0.05, "sigma_ratio": 0.01, "num_stages": 10, "zones": "all", "alpha": 1.0}'


def _verl_study_on_the_stand_in(tmp_path: Path) -> Path:
    """The shipped study and trial script, in a checkout whose recipe.dapo.main_dapo is the stand-in."""
    import yaml

    checkout = tmp_path / "verl"
    (checkout / "recipe" / "dapo").mkdir(parents=True)
    (checkout / "recipe" / "dapo" / "main_dapo.py").write_text(
        f"import runpy, sys\nsys.argv[0] = {str(FAKE)!r}\nrunpy.run_path({str(FAKE)!r}, run_name='__main__')\n")
    (tmp_path / "priors").mkdir()
    prior = REPO / "studies" / "priors" / "qwen2.5-1.5b-mxfp4.json"
    (tmp_path / "priors" / prior.name).write_bytes(prior.read_bytes())
    data = yaml.safe_load(STUDY.read_text())
    data["objective"]["command"].update(command=["bash", str(REPO / "studies" / "verl" / "e13-trial.sh")],
                                        cwd=str(checkout))
    study = tmp_path / "verl.yaml"
    study.write_text(yaml.safe_dump(data))
    return study


@pytest.mark.parametrize("patched", [True, False])
def test_noisesweep_trial_of_the_verl_study(tmp_path: Path, capsys: pytest.CaptureFixture[str], patched: bool) -> None:
    """e13-trial.sh runs main_dapo in the foreground with E13h's flags and forwards the trial's overrides;
    on the patched stand-in the per-layer multipliers are verified, on the fork as it is the trial fails."""
    from sweep.cli import main

    argv_file = tmp_path / "argv.json"
    sets = ["--set", "+fake.step_sleep=0", "--set", f"+fake.argv_file={argv_file}"]
    if patched:
        sets += ["--set", "+fake.patched=true"]
    code = main(["trial", str(_verl_study_on_the_stand_in(tmp_path)), "--params", PARAMS, *sets])
    result = json.loads(capsys.readouterr().out)
    got = fake_verl.parse_overrides(json.loads(argv_file.read_text()))
    for key, value in {"actor_rollout_ref.model.lora_rank": 32, "actor_rollout_ref.model.lora_alpha": 16,
                       "actor_rollout_ref.actor.optim.lr": 1e-5, "trainer.test_freq": 5, "trainer.total_training_steps": 20,
                       "trainer.total_epochs": 1, "trainer.logger": ["console"], "reward_model.reward_manager": "dapo",
                       "trainer.hw_error_injection.error_type": "mxfp4", "data.seed": 42}.items():
        assert got[key] == value, key
    assert "base_layer" in got["trainer.hw_error_injection.exclude_modules"]  # the 182-hook exclusions
    assert got["trainer.default_local_dir"].endswith("/checkpoints") and "noisesweep-e13-trial" not in got["trainer.default_local_dir"]
    assert len(got[f"{LSC}.layer_multipliers"]) == 28
    if patched:
        assert code == 0 and result["status"] == "complete", result["reason"]
        assert result["step"] == 20 and result["applied"]["verified"] is True and result["applied"]["srdd_guided"] is True
        assert result["applied"]["modules_noised"] == 56 and result["applied"]["schedule_total_steps"] == 29
    else:
        assert code == 1 and result["status"] == "failed"
        assert result["reason"] == "per-layer multipliers requested but the trainer applied uniform noise"
        assert result["applied"]["verified"] is False and result["step"] is None
