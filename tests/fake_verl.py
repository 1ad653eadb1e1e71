#!/usr/bin/env python3
"""A stand-in for the team's verl fork (zhshgmail/verl, feature/npu-aqn-test), without GPUs, Ray or verl.

Run like the team's scripts run ``python3 -m recipe.dapo.main_dapo``: ``python fake_verl.py
key=value +key=value ...``. It reads the overrides with its own small reader of Hydra's override
grammar (independent of objective/command/verl_fork.py, so a formatting mistake there shows up
as a mismatch here; like Hydra, the last value of a key wins) and then behaves like the fork as
read in its code:

- config: ``trainer.noise_injection`` holds ppo_trainer.yaml's declared keys (enabled,
  sigma_start 0.05, sigma_end 0.0005, num_stages 10, target_modules [], exclude_patterns []); a
  plain override of any other key under it fails as in Hydra's struct mode, ``++`` adds it.
- trainer (verl/trainer/ppo/ray_trainer.py ``RayPPOTrainer``): sigma_trend from
  ``get_sigma_schedule``, noise T = total_epochs x dataloader length (``+fake.steps_per_epoch``,
  29 as GSM8K with gen_batch_size 256), copied into the rollout config: enabled, sigma_trend,
  total_steps, target_modules, exclude_patterns, layer_types; never layer_sigma_config (the
  forwarding bug) unless ``+fake.patched=true`` (the two-line fix of docs/verl-fork.md: a
  RolloutConfig field and one forwarding line).
- rollout config (verl/workers/config/rollout.py ``RolloutConfig``, built by Hydra
  instantiate): an ``actor_rollout_ref.rollout.noise_injection_*`` key it has no field for makes
  the run die with the TypeError the real one raises.
- rollout (verl/workers/rollout/vllm_rollout/vllm_rollout.py): empty lists become None, the
  noise is applied at every weight sync (validation included: is_validation is never set) with
  the step of the last actor update, by a model of verl/utils/noise_injection.py
  ``generate_expert_gaussian_noise`` over a vLLM Qwen2 module list (``+fake.num_layers``, 28):
  substring target/exclude patterns, RMSNorm/Linear by class name, SRDD-guided per-layer
  multipliers, modules with sigma 0 skipped; rank 0 prints its two ``[AQN]`` lines through a
  ``(WorkerDict pid=N)`` prefix (``+fake.aqn_lines=false``: prints none, like a run where
  torch.distributed is not initialised in the rollout).

Around that it prints what verl 0.4-0.5 under Ray prints: start-up noise on stderr, tqdm redraws
with carriage returns, coloured ``(TaskRunner pid=N)`` prefixes, ``step:N - key:np.float64(x)``
metric lines every training step, validation at step 0 and every ``trainer.test_freq`` steps,
and (``trainer.logger=[console,file]``) JSONL records to ``$VERL_FILE_LOGGER_PATH``. The run
length is ``trainer.total_training_steps`` (20 when not given, as the verl study sets it).

The step-20 accuracy is a deterministic function of the noise the fake *applied* (`Fork.effect`:
a peak near sigma_start = 0.01, a small bonus when SRDD-guided multipliers were applied), so a
test can check that the right value came back.

Test switches (all ``+fake.*``): ``mode`` = normal | crash | exit | hang | nanmetric | nometric;
``argv_file`` (write argv JSON there); ``pid_file``; ``step_sleep`` (seconds per step, default 0.002);
``child_pid_file`` (spawn a sleeping grandchild, write its pid); ``ignore_term`` (ignore
SIGTERM, so only SIGKILL stops it); ``value_format`` = np | 3f; ``exit_code``; ``crash_step``;
``hang_step``; ``patched``; ``aqn_lines``; ``steps_per_epoch``; ``num_layers``.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

# --------------------------------------------------------------------------- override reading

_INT_RE = re.compile(r"^[+-]?(?:0|[1-9](?:_?\d)*)$")
_FLOAT_RE = re.compile(r"^[+-]?(?:(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?|inf|nan)$", re.IGNORECASE)


class _Reader:
    """Recursive-descent reader for the subset of Hydra override values a sweep writes."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_ws(self) -> None:
        while self.peek() in (" ", "\t") and self.peek():
            self.pos += 1

    def element(self) -> Any:
        self.skip_ws()
        ch = self.peek()
        if ch == "[":
            return self.sequence("[", "]")
        if ch == "{":
            return self.mapping()
        if ch in ("'", '"'):
            return self.quoted(ch)
        return self.primitive()

    def sequence(self, open_: str, close: str) -> list[Any]:
        assert self.peek() == open_
        self.pos += 1
        items: list[Any] = []
        self.skip_ws()
        if self.peek() == close:
            self.pos += 1
            return items
        while True:
            items.append(self.element())
            self.skip_ws()
            ch = self.peek()
            self.pos += 1
            if ch == close:
                return items
            if ch != ",":
                raise ValueError(f"expected ',' or {close!r} at {self.pos - 1} in {self.text!r}")

    def mapping(self) -> dict[Any, Any]:
        self.pos += 1
        out: dict[Any, Any] = {}
        self.skip_ws()
        if self.peek() == "}":
            self.pos += 1
            return out
        while True:
            self.skip_ws()
            start = self.pos
            while self.peek() not in (":", ""):
                self.pos += 1
            key = _scalar(self.text[start:self.pos].strip())
            if self.peek() != ":":
                raise ValueError(f"dict entry without ':' in {self.text!r}")
            self.pos += 1
            out[key] = self.element()
            self.skip_ws()
            ch = self.peek()
            self.pos += 1
            if ch == "}":
                return out
            if ch != ",":
                raise ValueError(f"expected ',' or '}}' in {self.text!r}")

    def quoted(self, quote: str) -> str:
        self.pos += 1
        out = []
        while True:
            ch = self.peek()
            if ch == "":
                raise ValueError(f"unterminated quote in {self.text!r}")
            if ch == "\\":
                start = self.pos
                while self.peek() == "\\":
                    self.pos += 1
                run = self.pos - start
                nxt = self.peek()
                if nxt == quote:
                    # 2k backslashes -> k; an odd one escapes the quote
                    out.append("\\" * (run // 2))
                    if run % 2:
                        out.append(quote)
                        self.pos += 1
                    continue
                out.append("\\" * run)
                continue
            self.pos += 1
            if ch == quote:
                return "".join(out)
            out.append(ch)

    def primitive(self) -> Any:
        start = self.pos
        while self.peek() not in (",", "]", "}", ""):
            self.pos += 1
        return _scalar(self.text[start:self.pos].strip())


def _scalar(token: str) -> Any:
    low = token.lower()
    if low == "null":
        return None
    if low in ("true", "false"):
        return low == "true"
    if _INT_RE.match(token):
        return int(token.replace("_", ""))
    if _FLOAT_RE.match(token):
        return float(token)
    return token


def parse_value(text: str) -> Any:
    """Read one override value the way Hydra's grammar does (for the subset the sweep writes)."""
    reader = _Reader(text)
    value = reader.element()
    reader.skip_ws()
    if reader.pos != len(text):
        raise ValueError(f"trailing text in override value {text!r}")
    return value


NOISE = "trainer.noise_injection"
# ppo_trainer.yaml's noise_injection block, as declared (so plain overrides of these work).
YAML_NOISE_DEFAULTS: dict[str, Any] = {
    "enabled": False, "sigma_start": 0.05, "sigma_end": 0.0005, "num_stages": 10,
    "target_modules": [], "exclude_patterns": [],
}
STRUCT_PREFIXES = (f"{NOISE}.",)  # the subtrees this fake checks like Hydra's struct mode


def parse_overrides(argv: list[str], *, strict: bool = False) -> dict[str, Any]:
    """{dotted key: value} from ``key=value`` / ``+key=value`` / ``++key=value`` arguments (last wins)."""
    out: dict[str, Any] = {}
    declared = {f"{NOISE}.{k}" for k in YAML_NOISE_DEFAULTS}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise SystemExit(f"Error: could not parse override {arg!r} (expected key=value)")
        if strict and not key.startswith("+") and key.startswith(STRUCT_PREFIXES) and key not in declared:
            print(f"Could not override '{key}'.\nTo append to your config use +{arg}\n"
                  f"Key '{key.rsplit('.', 1)[-1]}' is not in struct\n    full_key: {key}\n    object_type=dict\n\n"
                  "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.", file=sys.stderr)
            raise SystemExit(1)
        out[key.lstrip("+")] = parse_value(value)
    return out


def subtree(cfg: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The nested mapping under a dotted prefix (``a.b.c=1`` under ``a`` -> {"b": {"c": 1}})."""
    out: dict[str, Any] = {}
    for key, value in cfg.items():
        if not key.startswith(prefix + "."):
            continue
        node = out
        *parents, leaf = key[len(prefix) + 1:].split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


# --------------------------------------------------------------------------- the fork's noise path


def get_sigma_schedule(sigma_start: float, sigma_end: float, num_stages: int) -> list[float]:
    """verl/utils/noise_injection.py get_sigma_schedule (numpy there; same float math)."""
    if num_stages <= 1:
        return []
    return [sigma_start * (sigma_end / sigma_start) ** (i / (num_stages - 2)) for i in range(num_stages - 1)]


def get_sigma_by_step(step: int, total_steps: int, sigma_trend: list[float]) -> tuple[int, float]:
    """verl/utils/noise_injection.py get_sigma_by_step."""
    step = min(step, total_steps)
    interval_id = int(step // (total_steps / (len(sigma_trend) + 1)))
    if interval_id == 0:
        return interval_id, 0
    sigma_id = min(interval_id - 1, len(sigma_trend) - 1)
    return sigma_id, sigma_trend[sigma_id]


def vllm_qwen2_modules(num_layers: int) -> list[tuple[str, str]]:
    """(name, class name) of vLLM's Qwen2ForCausalLM modules that matter to the noise code."""
    mods = [("model.embed_tokens", "VocabParallelEmbedding")]
    for i in range(num_layers):
        p = f"model.layers.{i}"
        mods += [(f"{p}.self_attn.qkv_proj", "QKVParallelLinear"), (f"{p}.self_attn.o_proj", "RowParallelLinear"),
                 (f"{p}.mlp.gate_up_proj", "MergedColumnParallelLinear"), (f"{p}.mlp.down_proj", "RowParallelLinear"),
                 (f"{p}.input_layernorm", "RMSNorm"), (f"{p}.post_attention_layernorm", "RMSNorm")]
    return mods + [("model.norm", "RMSNorm"), ("lm_head", "ParallelLMHead")]


# The RolloutConfig dataclass's noise fields (verl/workers/config/rollout.py); the two-line fix adds the last.
ROLLOUT_NOISE_FIELDS = {
    "noise_injection_enabled", "noise_injection_sigma_trend", "noise_injection_total_steps",
    "noise_injection_target_modules", "noise_injection_exclude_patterns", "noise_injection_layer_types",
    "noise_injection_epoch_aware", "noise_injection_epoch_ranges", "noise_injection_stages_per_epoch",
    "noise_injection_steps_per_epoch",
}
PATCHED_FIELD = "noise_injection_layer_sigma_config"


class RolloutConfigError(Exception):
    """What Hydra's instantiate of RolloutConfig raises for a key the dataclass has no field for."""


@dataclass
class Fork:
    """The fork's trainer -> rollout -> noise code, for one run's overrides (no printing here)."""

    cfg: dict[str, Any]
    patched: bool = False
    num_layers: int = 28
    steps_per_epoch: int = 29
    rollout: dict[str, Any] = field(default_factory=dict)
    applied_sigmas: list[float] = field(default_factory=list)
    srdd_guided: bool = False

    def __post_init__(self) -> None:
        self.noise = {**YAML_NOISE_DEFAULTS, **subtree(self.cfg, NOISE)}
        self.total_epochs = int(self.cfg.get("trainer.total_epochs", 1))
        self.rollout = subtree(self.cfg, "actor_rollout_ref.rollout")
        if self.noise["enabled"]:  # RayPPOTrainer.__init__ / init_workers
            self.rollout.update(
                noise_injection_enabled=True,
                noise_injection_sigma_trend=get_sigma_schedule(
                    self.noise["sigma_start"], self.noise["sigma_end"], self.noise["num_stages"]),
                noise_injection_total_steps=self.total_epochs * self.steps_per_epoch,
                noise_injection_target_modules=self.noise.get("target_modules", ["post_attention_layernorm"]),
                noise_injection_exclude_patterns=self.noise.get("exclude_patterns", ["input_layernorm"]),
                noise_injection_layer_types=self.noise.get("layer_types", []),
            )
            if self.patched:  # the forwarding line of the fix
                self.rollout[PATCHED_FIELD] = self.noise.get("layer_sigma_config")
        fields = ROLLOUT_NOISE_FIELDS | ({PATCHED_FIELD} if self.patched else set())
        unknown = sorted(k for k in self.rollout if k.startswith("noise_injection_") and k not in fields)
        if unknown:
            raise RolloutConfigError(
                "Error in call to target 'verl.workers.config.rollout.RolloutConfig':\n"
                f"TypeError(\"RolloutConfig.__init__() got an unexpected keyword argument '{unknown[0]}'\")")
        # vLLMAsyncRollout.__init__: what the rollout reads from its config
        r = self.rollout
        self.enabled = bool(r.get("noise_injection_enabled", False))
        self.sigma_trend = list(r.get("noise_injection_sigma_trend", []))
        self.total_steps = int(r.get("noise_injection_total_steps", 1000))
        self.target_modules = list(r.get("noise_injection_target_modules", [])) or None
        self.exclude_patterns = list(r.get("noise_injection_exclude_patterns", [])) or None
        self.layer_types = list(r.get("noise_injection_layer_types", [])) or None
        lsc = r.get(PATCHED_FIELD) if self.patched else None
        if isinstance(lsc, dict) and isinstance(lsc.get("layer_multipliers"), dict):
            lsc = {**lsc, "layer_multipliers": {str(k): v for k, v in lsc["layer_multipliers"].items()}}
        self.layer_sigma_config = lsc if isinstance(lsc, dict) else None

    def enabled_line(self) -> str:
        targets = self.target_modules or "AUTO (Dense=ALL, MoE=post_attn)"
        return f"[AQN] Noise injection enabled: {len(self.sigma_trend)} stages, total_steps={self.total_steps}, targets={targets}"

    def apply_noise(self, step: int) -> list[str]:
        """One weight sync: generate_expert_gaussian_noise's effect and its rank-0 lines."""
        if not (self.enabled and self.sigma_trend and self.total_steps > 0):
            return []
        target = self.target_modules if self.target_modules is not None else []  # dense: ALL RMSNorm
        exclude = self.exclude_patterns if self.exclude_patterns is not None else []
        sigma_id, sigma = get_sigma_by_step(step, self.total_steps, self.sigma_trend)
        lsc = self.layer_sigma_config
        use_layer_sigma = lsc is not None and lsc.get("enabled", False)
        default_mult = lsc.get("default_multiplier", 1.0) if use_layer_sigma else 1.0
        mults = lsc.get("layer_multipliers", {}) if use_layer_sigma else {}
        types_desc = self.layer_types if self.layer_types else ["rmsnorm"]
        srdd_desc = f", SRDD-guided={len(mults)} layers" if use_layer_sigma else ""
        lines = [f"[AQN] Noise injection (Dense) - Step: {step}/{self.total_steps}, Sigma ID: {sigma_id}, "
                 f"Sigma: {sigma:.6f}, LayerTypes: {types_desc}, Target: {target if target else 'ALL'}{srdd_desc}"]
        if sigma == 0:
            return lines
        types = self.layer_types or ["rmsnorm"]
        noised = skipped = 0
        for name, cls in vllm_qwen2_modules(self.num_layers):
            is_type = ("rmsnorm" in types and "rmsnorm" in cls.lower()) or ("linear" in types and "Linear" in cls)
            if not is_type:
                continue
            if (exclude and any(p in name for p in exclude)) or (target and not any(p in name for p in target)):
                skipped += 1
                continue
            match = re.search(r"layers\.(\d+)\.", name)
            mult = 1.0
            if use_layer_sigma:
                layer = int(match.group(1)) if match else None
                mult = mults.get(str(layer), mults.get(layer, default_mult)) if layer is not None else default_mult
            if sigma * mult == 0:
                skipped += 1
                continue
            noised += 1
        self.applied_sigmas.append(sigma)
        self.srdd_guided = self.srdd_guided or (use_layer_sigma and bool(mults))
        lines.append(f"[AQN] Applied noise to {noised} {'+'.join(types)} layers (skipped {skipped} excluded layers)"
                     + (" (SRDD-guided)" if use_layer_sigma else ""))
        return lines

    def effect(self) -> dict[str, Any]:
        """What reached the model, for the accuracy model: the schedule's start and SRDD multipliers."""
        lsc = self.layer_sigma_config or {}
        mults = lsc.get("layer_multipliers", {}) if lsc.get("enabled") else {}
        return {"sigma_start": self.sigma_trend[0] if self.enabled and self.sigma_trend else None,
                "srdd_max": max(mults.values()) if mults else None}


def fork_of(cfg: dict[str, Any]) -> Fork:
    """The Fork a run with these overrides builds (the fake's own switches included)."""
    return Fork(cfg, patched=bool(cfg.get("fake.patched", False)), num_layers=int(cfg.get("fake.num_layers", 28)),
                steps_per_epoch=int(cfg.get("fake.steps_per_epoch", 29)))


# --------------------------------------------------------------------------- the fake run

ACC_KEY = "val-core/openai/gsm8k/acc/mean@1"
REWARD_KEY = "val-aux/openai/gsm8k/reward/mean@1"
PREFIX = "\x1b[36m(TaskRunner pid={pid})\x1b[0m "
WORKER = "\x1b[36m(WorkerDict pid={pid})\x1b[0m "


def final_accuracy(effect: dict[str, Any]) -> float:
    """The step-20 accuracy for the noise that reached the model (E13h's 0.5641 without noise)."""
    base = 0.5641
    sigma = effect.get("sigma_start")
    if not sigma or sigma <= 0:
        return base
    acc = base + 0.045 * math.exp(-((math.log10(sigma) + 2.0) ** 2) / 0.3)
    if effect.get("srdd_max"):
        acc += 0.004 * effect["srdd_max"]
    return acc


def accuracy_at(step: int, total: int, effect: dict[str, Any]) -> float:
    start, end = 0.0766, final_accuracy(effect)
    frac = (1 - math.exp(-step / 6)) / (1 - math.exp(-total / 6))
    return round(start + (end - start) * frac, 6)


def _fmt(value: float, style: str) -> str:
    if style == "3f":
        return f"{value:.3f}"
    return f"np.float64({value!r})" if isinstance(value, float) else str(value)


def _metric_line(step: int, metrics: dict[str, Any], style: str) -> str:
    parts = [f"step:{step}"] + [f"{k}:{_fmt(v, style)}" for k, v in metrics.items()]
    return " - ".join(parts)


def main(argv: list[str]) -> int:
    cfg = parse_overrides(argv, strict=True)
    pid = os.getpid()
    if cfg.get("fake.pid_file"):
        with open(cfg["fake.pid_file"], "w") as fh:
            fh.write(str(pid))
    if cfg.get("fake.argv_file"):
        with open(cfg["fake.argv_file"], "w") as fh:
            json.dump(argv, fh)
    mode = cfg.get("fake.mode", "normal")
    if cfg.get("fake.ignore_term"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    step_sleep = float(cfg.get("fake.step_sleep", 0.002))
    style = cfg.get("fake.value_format", "np")
    total = int(cfg.get("trainer.total_training_steps", 20))
    test_freq = int(cfg.get("trainer.test_freq", 5))
    loggers = cfg.get("trainer.logger", ["console"])
    loggers = [loggers] if isinstance(loggers, str) else loggers
    aqn_lines = bool(cfg.get("fake.aqn_lines", True))
    jsonl = open(os.environ["VERL_FILE_LOGGER_PATH"], "a") if "file" in loggers else None

    if cfg.get("fake.child_pid_file"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(cfg["fake.child_pid_file"], "w") as fh:
            fh.write(str(child.pid))

    err = sys.stderr
    print("2026-01-15 03:30:20,118\tINFO worker.py:1888 -- Started a local Ray instance.", file=err, flush=True)
    print(f"{PREFIX.format(pid=pid)}{{'actor_rollout_ref': {{'model': {{'path': 'Qwen/Qwen2.5-1.5B-Instruct'}}}}}}", flush=True)
    try:
        fork = fork_of(cfg)
    except RolloutConfigError as exc:
        print("Error executing job with overrides: [...]", file=err, flush=True)
        print(f"hydra.errors.InstantiationException: {exc}".splitlines()[0], file=err, flush=True)
        print(str(exc).splitlines()[-1], file=err, flush=True)
        return 1
    if fork.enabled:
        print(f"{PREFIX.format(pid=pid)}[RayPPOTrainer] Noise injection initialized: {len(fork.sigma_trend)} stages, "
              f"{fork.total_steps} total steps", flush=True)
        if aqn_lines:
            print(WORKER.format(pid=pid + 1) + fork.enabled_line(), flush=True)
            print(WORKER.format(pid=pid + 2) + fork.enabled_line() + " [repeated 7x across cluster]", flush=True)
    print(f"\x1b[36m(WorkerDict pid={pid + 1})\x1b[0m INFO 01-15 03:31:00 [llm_engine.py:431] init engine took 9.2 s"
          " [repeated 7x across cluster]", flush=True)
    print(f"{PREFIX.format(pid=pid)}182 HW error hooks registered for MXFP4 W4A4", flush=True)

    def weight_sync(current_step: int) -> None:
        """vLLMAsyncRollout.update_weights -> _aqn_apply_noise, at the last actor update's step."""
        lines = fork.apply_noise(current_step)
        if lines and aqn_lines:
            sigma_id, sigma = get_sigma_by_step(current_step, fork.total_steps, fork.sigma_trend)
            print(f"{WORKER.format(pid=pid + 3)}[AQN] Applying noise injection: step={current_step}/{fork.total_steps}, "
                  f"sigma_id={sigma_id}, sigma={sigma:.6f} [repeated 7x across cluster]", flush=True)
            for line in lines:
                print(WORKER.format(pid=pid + 1) + line, flush=True)

    def emit(step: int, metrics: dict[str, Any]) -> None:
        if "console" in loggers:
            print(PREFIX.format(pid=pid) + _metric_line(step, metrics, style), flush=True)
        if jsonl is not None:
            record = json.dumps({"step": step, "data": metrics})
            half = len(record) // 2
            jsonl.write(record[:half])  # a reader may see half a line: it must wait for the rest
            jsonl.flush()
            jsonl.write(record[half:] + "\n")
            jsonl.flush()

    def validation(step: int) -> dict[str, Any]:
        weight_sync(step)  # validation generates with noise: is_validation is never set
        if mode == "nometric":
            return {}
        acc = accuracy_at(step, total, fork.effect())
        if mode == "nanmetric" and step >= 10:
            acc = float("nan")
        return {ACC_KEY: acc, REWARD_KEY: acc}

    if cfg.get("trainer.val_before_train", True):
        emit(0, validation(0))
    for step in range(1, total + 1):
        time.sleep(step_sleep)
        weight_sync(step - 1)  # the rollout of step s runs with the noise of step s - 1
        # tqdm(file=sys.stdout) redraws on the same line as the next metrics line
        print(f"Training Progress: {100 * step // total:3d}%|###       | {step}/{total}\r", end="", flush=True)
        if mode == "crash" and step == int(cfg.get("fake.crash_step", 7)):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if mode == "exit" and step == int(cfg.get("fake.crash_step", 7)):
            print("Error executing job with overrides: [...]", file=err, flush=True)
            print("ValueError: Duplicate device type cpu in backend string", file=err, flush=True)
            return int(cfg.get("fake.exit_code", 3))
        if mode == "hang" and step == int(cfg.get("fake.hang_step", 1)):
            while True:
                time.sleep(1)
        metrics: dict[str, Any] = {
            "training/global_step": step,
            "critic/score/mean": round(0.2 + 0.01 * step, 6),
            "actor/entropy": round(0.5 - 0.005 * step, 6),
            "response_length/mean": 231 + step,
        }
        if step % test_freq == 0 or step == total:
            metrics.update(validation(step))
        emit(step, metrics)
        if step % test_freq == 0:
            print(f"\x1b[36m(WorkerDict pid={pid + 1})\x1b[0m [rank0]: global step:{step} - saved:1", flush=True)
    print(f"{PREFIX.format(pid=pid)}Final validation metrics: {{'{ACC_KEY}': {accuracy_at(total, total, fork.effect())}}}",
          flush=True)
    if jsonl is not None:
        jsonl.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
