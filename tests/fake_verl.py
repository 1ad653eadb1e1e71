#!/usr/bin/env python3
"""A fake verl trainer for testing the command objective without GPUs, Ray or verl.

Run like the team's scripts run verl: ``python fake_verl.py key=value +key=value ...``. It reads
the overrides with its own small reader of Hydra's override grammar (independent of
objective/command/verl_fork.py, so a formatting mistake there shows up as a mismatch here), records its
argv as JSON, and prints what verl 0.4-0.5 under Ray prints: Ray/vLLM start-up noise on stderr,
tqdm redraws with carriage returns, coloured ``(TaskRunner pid=N)`` prefixes,
``step:N - key:np.float64(x)`` metric lines for every training step, validation metrics at
step 0 and every ``trainer.test_freq`` steps, and (``trainer.logger=[console,file]``) JSONL
records to ``$VERL_FILE_LOGGER_PATH``.

The step-20 accuracy is a deterministic function of the noise overrides (a peak near
sigma_start = 0.01, a small bonus when the fork's variable multipliers are on), so a test can
check that the right value came back.

Test switches (all ``+fake.*``): ``mode`` = normal | crash | exit | hang | nanmetric | nometric;
``argv_file`` (write argv JSON there); ``pid_file``; ``step_sleep`` (seconds per step, default 0.002);
``child_pid_file`` (spawn a sleeping grandchild, write its pid); ``ignore_term`` (ignore
SIGTERM, so only SIGKILL stops it); ``value_format`` = np | 3f; ``exit_code``; ``crash_step``;
``hang_step``.
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


# The keys of the fork's ppo_trainer.yaml this fake knows (the configuration guide's "current code
# support": no use_variable_sigma, no layer_multipliers). Like Hydra in struct mode, a plain
# `key=value` for any other key is an error; `+key` / `++key` add it.
KNOWN_KEYS = {
    "trainer.noise_injection.enabled", "trainer.noise_injection.sigma_start",
    "trainer.noise_injection.sigma_end", "trainer.noise_injection.num_stages",
    "trainer.noise_injection.target_modules", "trainer.noise_injection.exclude_patterns",
    "trainer.total_training_steps", "trainer.test_freq", "trainer.val_before_train",
    "trainer.logger", "data.seed", "actor_rollout_ref.rollout.seed",
}


def parse_overrides(argv: list[str], *, strict: bool = False) -> dict[str, Any]:
    """{dotted key: value} from ``key=value`` / ``+key=value`` / ``++key=value`` arguments."""
    out: dict[str, Any] = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise SystemExit(f"Error: could not parse override {arg!r} (expected key=value)")
        if strict and not key.startswith("+") and key not in KNOWN_KEYS:
            print(f"Could not override '{key}'.\nTo append to your config use +{arg}\n"
                  f"Key '{key.rsplit('.', 1)[-1]}' is not in struct\n    full_key: {key}\n    object_type=dict\n\n"
                  "Set the environment variable HYDRA_FULL_ERROR=1 for a complete stack trace.", file=sys.stderr)
            raise SystemExit(1)
        key = key.lstrip("+")
        if key in out:
            raise SystemExit(f"Error: multiple values for {key}")
        out[key] = parse_value(value)
    return out


# --------------------------------------------------------------------------- the fake run

ACC_KEY = "val-core/openai/gsm8k/acc/mean@1"
REWARD_KEY = "val-aux/openai/gsm8k/reward/mean@1"
PREFIX = "\x1b[36m(TaskRunner pid={pid})\x1b[0m "


def final_accuracy(cfg: dict[str, Any]) -> float:
    """The step-20 accuracy this fake reports for a configuration (E13h's 0.5641 without noise)."""
    base = 0.5641
    if not cfg.get("trainer.noise_injection.enabled", False):
        return base
    sigma = float(cfg.get("trainer.noise_injection.sigma_start", 0.05))
    if sigma <= 0:
        return base
    acc = base + 0.045 * math.exp(-((math.log10(sigma) + 2.0) ** 2) / 0.3)
    mults = cfg.get("trainer.noise_injection.layer_multipliers")
    if cfg.get("trainer.noise_injection.use_variable_sigma") and isinstance(mults, dict) and mults:
        acc += 0.004 * max(mults.values())
    return acc


def accuracy_at(step: int, total: int, cfg: dict[str, Any]) -> float:
    start, end = 0.0766, final_accuracy(cfg)
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
    jsonl = open(os.environ["VERL_FILE_LOGGER_PATH"], "a") if "file" in loggers else None

    if cfg.get("fake.child_pid_file"):
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
        with open(cfg["fake.child_pid_file"], "w") as fh:
            fh.write(str(child.pid))

    err = sys.stderr
    print("2026-01-15 03:30:20,118\tINFO worker.py:1888 -- Started a local Ray instance.", file=err, flush=True)
    print(f"{PREFIX.format(pid=pid)}{{'actor_rollout_ref': {{'model': {{'path': 'Qwen/Qwen2.5-1.5B-Instruct'}}}}}}", flush=True)
    print(f"\x1b[36m(WorkerDict pid={pid + 1})\x1b[0m INFO 01-15 03:31:00 [llm_engine.py:431] init engine took 9.2 s"
          " [repeated 7x across cluster]", flush=True)
    print(f"{PREFIX.format(pid=pid)}182 HW error hooks registered for MXFP4 W4A4", flush=True)

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
        if mode == "nometric":
            return {}
        acc = accuracy_at(step, total, cfg)
        if mode == "nanmetric" and step >= 10:
            acc = float("nan")
        return {ACC_KEY: acc, REWARD_KEY: acc}

    if cfg.get("trainer.val_before_train", True):
        emit(0, validation(0))
    for step in range(1, total + 1):
        time.sleep(step_sleep)
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
    print(f"{PREFIX.format(pid=pid)}Final validation metrics: {{'{ACC_KEY}': {accuracy_at(total, total, cfg)}}}", flush=True)
    if jsonl is not None:
        jsonl.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
