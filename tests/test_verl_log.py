"""verl metric parsing: console lines as Ray/verl really print them, and the JSONL file logger."""

from __future__ import annotations

import json
import math

import pytest

from objective.verl_log import (
    AqnApplied,
    AqnEnabled,
    AqnInjection,
    JsonlFollower,
    parse_aqn_line,
    parse_console_line,
    parse_jsonl_line,
    parse_value,
)

ACC = "val-core/openai/gsm8k/acc/mean@1"


@pytest.mark.parametrize(
    ("line", "step", "expected"),
    [
        # numpy >= 2 repr inside a coloured Ray prefix (what E13h's log looked like)
        (
            f"\x1b[36m(TaskRunner pid=27860)\x1b[0m step:20 - {ACC}:np.float64(0.5641) - "
            "val-aux/openai/gsm8k/reward/mean@1:np.float64(0.5641) - critic/score/mean:np.float64(0.4189)",
            20,
            {ACC: 0.5641, "val-aux/openai/gsm8k/reward/mean@1": 0.5641, "critic/score/mean": 0.4189},
        ),
        # newer verl formats with .3f; plain prefix, no colour
        ("(TaskRunner pid=12) step:0 - " + ACC + ":0.077 - timing_s/testing:41.250", 0, {ACC: 0.077, "timing_s/testing": 41.25}),
        # bare verl line without Ray, ints and scientific notation
        ("step:5 - training/global_step:5 - actor/lr:1e-05 - response_length/mean:231", 5,
         {"training/global_step": 5.0, "actor/lr": 1e-05, "response_length/mean": 231.0}),
        # nested prefixes with ip, Ray's dedup suffix and a colour code in the middle
        ("(main_task pid=3) (WorkerDict pid=9, ip=10.0.0.2) step:15 - \x1b[1m" + ACC + ":np.float32(0.61)\x1b[0m"
         " [repeated 2x across cluster]", 15, {ACC: 0.61}),
        # tqdm redraw on the same physical line
        ("Training Progress:  69%|######9   | 20/29 [59:01<26:33]\r(TaskRunner pid=1) step:20 - " + ACC + ":0.5", 20, {ACC: 0.5}),
        # non-numeric values are skipped, nan/inf kept
        ("step:10 - flag:True - name:abc - t:tensor(0.5) - a:nan - b:-inf - c:np.float64(nan)", 10,
         {"a": math.nan, "b": -math.inf, "c": math.nan}),
        ("step:3", 3, {}),
    ],
)
def test_console_lines(line: str, step: int, expected: dict[str, float]) -> None:
    parsed = parse_console_line(line)
    assert parsed is not None
    got_step, metrics = parsed
    assert got_step == step
    assert set(metrics) == set(expected)
    for key, value in expected.items():
        if math.isnan(value):
            assert math.isnan(metrics[key])
        else:
            assert metrics[key] == value


@pytest.mark.parametrize(
    "line",
    [
        "",
        "(TaskRunner pid=1) Training Progress:  17%|#7        | 5/29",
        "(WorkerDict pid=5) [rank0]: global step:5 - loss:0.3",  # 'step:' not at the start
        "INFO 01-15 03:31:00 [llm_engine.py:431] init engine (profile, create kv cache) took 9.2 s",
        "steps:20 - x:1",
        "step:abc - x:1",
        "Traceback (most recent call last):",
        "step:20- x:1",  # malformed separator
    ],
)
def test_console_garbage_is_ignored(line: str) -> None:
    assert parse_console_line(line) is None


def test_parse_value_variants() -> None:
    assert parse_value("np.float64(0.5641)") == 0.5641
    assert parse_value(" 7 ") == 7.0
    assert parse_value("np.int64(12)") == 12.0
    assert parse_value("numpy.float32(1.5e-3)") == 0.0015
    assert math.isinf(parse_value("inf"))
    assert parse_value("True") is None
    assert parse_value("0x10") is None
    assert parse_value("[1, 2]") is None


def test_jsonl_lines() -> None:
    line = json.dumps({"step": 20, "data": {ACC: 0.5641, "note": "x", "flag": True, "n": 3, "s": "0.5"}})
    assert parse_jsonl_line(line) == (20, {ACC: 0.5641, "n": 3.0, "s": 0.5})
    step, data = parse_jsonl_line('{"step": 5, "data": {"a": NaN, "b": Infinity}}')
    assert step == 5 and math.isnan(data["a"]) and data["b"] == math.inf
    for bad in ['{"step": 5, "data": {"a": 0.1', "hello", '{"step": "5", "data": {}}', '{"data": {}}',
                '{"step": 1.5, "data": {}}', '{"step": 1, "data": [1]}', "[1, 2]"]:
        assert parse_jsonl_line(bad) is None


def test_jsonl_follower_tails_a_growing_file(tmp_path) -> None:
    path = tmp_path / "sub" / "metrics.jsonl"
    follower = JsonlFollower(path)
    assert follower.poll() == []  # file does not exist yet
    path.parent.mkdir()
    with open(path, "w") as fh:
        fh.write(json.dumps({"step": 0, "data": {ACC: 0.1}}) + "\n")
        fh.write("garbage line\n")
        fh.write('{"step": 5, "data": {"' + ACC + '": 0.')  # partial line, writer mid-flush
        fh.flush()
        assert follower.poll() == [(0, {ACC: 0.1})]
        assert follower.poll() == []  # nothing re-read
        fh.write('25}}\n{"step": 10, "data": {}}\n')
        fh.flush()
        assert follower.poll() == [(5, {ACC: 0.25}), (10, {})]
        fh.write('{"step": 15, "data": {"x": 1}}')  # last line without newline
        fh.flush()
    assert follower.poll() == []
    assert follower.flush() == [(15, {"x": 1.0})]


def test_jsonl_follower_restarts_on_truncation_and_skips_stale(tmp_path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 20, "data": {"a": 0.9}}\n' * 3)  # stale file of an earlier run
    follower = JsonlFollower(path, start_at_end=True)
    assert follower.poll() == []
    path.write_text('{"step": 0, "data": {"a": 0.1}}\n')  # truncated and rewritten
    assert follower.poll() == [(0, {"a": 0.1})]
    path.unlink()
    path.write_text('{"step": 0, "data": {"a": 0.2}}\n{"step": 5, "data": {"a": 0.3}}\n')  # replaced
    assert follower.poll() == [(0, {"a": 0.2}), (5, {"a": 0.3})]


# --------------------------------------------------------------------------- the fork's [AQN] lines
# Formats of verl/utils/noise_injection.py generate_expert_gaussian_noise and
# verl/workers/rollout/vllm_rollout/vllm_rollout.py vLLMAsyncRollout.__init__ (zhshgmail/verl, feature/npu-aqn-test).
TARGETS = "['layers.10.', 'layers.11.', 'layers.12.']"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (f"\x1b[36m(WorkerDict pid=2041)\x1b[0m [AQN] Noise injection (Dense) - Step: 6/29, Sigma ID: 1, Sigma: 0.028117, "
         f"LayerTypes: ['rmsnorm'], Target: {TARGETS}, SRDD-guided=28 layers",
         AqnInjection(step=6, total_steps=29, sigma_id=1, sigma=0.028117, layer_types=("rmsnorm",),
                      target=("layers.10.", "layers.11.", "layers.12."), srdd_layers=28)),
        # no target pattern arrived (ALL), not SRDD-guided, prefix with ip
        ("\x1b[36m(WorkerDict pid=9, ip=10.0.0.1)\x1b[0m [AQN] Noise injection (Dense) - Step: 0/29, Sigma ID: 0, Sigma: 0.000000, "
         "LayerTypes: ['rmsnorm'], Target: ALL",
         AqnInjection(step=0, total_steps=29, sigma_id=0, sigma=0.0, layer_types=("rmsnorm",), target=None, srdd_layers=None)),
        # E14a's zone schedule suffix after the SRDD one; two layer types
        ("[AQN] Noise injection (MoE) - Step: 20/58, Sigma ID: 6, Sigma: 0.001000, LayerTypes: ['rmsnorm', 'linear'], "
         "Target: ['post_attention_layernorm'], SRDD-guided=0 layers, Zone=LATE(mid_mult=0.5)",
         AqnInjection(step=20, total_steps=58, sigma_id=6, sigma=0.001, layer_types=("rmsnorm", "linear"),
                      target=("post_attention_layernorm",), srdd_layers=0, zone_phase="LATE")),
        ("\x1b[36m(WorkerDict pid=2041)\x1b[0m [AQN] Applied noise to 20 rmsnorm layers (skipped 37 excluded layers) "
         "(SRDD-guided) [repeated 2x across cluster]",
         AqnApplied(count=20, layer_types=("rmsnorm",), skipped=37, srdd_guided=True)),
        ("(WorkerDict pid=7) [AQN] Applied noise to 104 rmsnorm+linear layers (skipped 9 excluded layers)",
         AqnApplied(count=104, layer_types=("rmsnorm", "linear"), skipped=9, srdd_guided=False)),
        (f"(WorkerDict pid=7) [AQN] Noise injection enabled: 9 stages, total_steps=29, targets={TARGETS}",
         AqnEnabled(stages=9, total_steps=29, targets=("layers.10.", "layers.11.", "layers.12."))),
        ("(WorkerDict pid=7) [AQN] Noise injection enabled: 9 stages, total_steps=1000, targets=AUTO (Dense=ALL, MoE=post_attn)",
         AqnEnabled(stages=9, total_steps=1000, targets=None)),
        # tqdm's carriage return before the line
        ("Training Progress:  20%|##   | 4/20\r(WorkerDict pid=7) [AQN] Applied noise to 2 rmsnorm layers (skipped 0 excluded layers)",
         AqnApplied(count=2, layer_types=("rmsnorm",), skipped=0, srdd_guided=False)),
    ],
)
def test_aqn_lines_parse(line: str, expected: object) -> None:
    assert parse_aqn_line(line) == expected


@pytest.mark.parametrize("line", [
    "[AQN] Applying noise injection: step=6/29, sigma_id=1, sigma=0.028117",  # every rank's echo: not the record
    "[AQN-Fix] Restored 57 layers to clean weights (step 6, LoRA-only sync)",
    "[AQN] Skipping noise injection during validation (QeRL behavior)",
    "[AQN] Noise injection (Dense) - Step: 6/29, Sigma ID: 1, Sigma: tensor(0.02), LayerTypes: ['rmsnorm'], Target: ALL",
    "step:5 - [AQN] Noise injection (Dense)",
    "",
])
def test_other_lines_are_not_aqn_records(line: str) -> None:
    assert parse_aqn_line(line) is None
