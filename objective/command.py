"""The user's own trainer (a verl-based script) as a sweep objective.

A study can point at the command the team already runs, e.g. ``bash scripts/e13i.sh`` (a script
that forwards ``"$@"`` to ``python3 -m verl.trainer.main_dapo``) and map the trial's values onto
the fork's Hydra keys. Each trial then:

1. builds Hydra ``key=value`` overrides from the trial's values (``build_overrides``): floats in
   full precision (``1e-05``), ints, ``true``/``false``, ``null``, lists ``[a,b]``, and the
   fork's per-layer multipliers as the dict it reads, ``{0:0.83,1:0.89,...}``, one entry per
   decoder layer, zeros included (the fork's ``layer_multipliers.get(layer, 1.0)`` would turn a
   missing layer into full noise). Every value is written so Hydra's override grammar reads
   back the same value and type (checked against hydra-core 1.3.8).
2. starts the command in its own process group (``start_new_session=True``), with
   ``PYTHONUNBUFFERED=1`` so a Python trainer's prints arrive as they happen, not at exit.
3. streams its output line by line (copied to a per-trial log file when one is given), parses
   verl's metric lines (``objective.verl_log``) from the console or from verl's JSONL file
   logger, and calls ``report(step, metrics)`` for every step whose metrics hold the objective.
4. ends the trial as a result, never as an exception of the sweep: ``complete`` (exit 0 and the
   metric seen), ``pruned`` (report raised ``StopTrial``), ``failed`` (timeout, non-zero exit,
   NaN metric, metric never seen, report raised something else), and always kills whatever is
   left of the process group: SIGTERM, then SIGKILL after ``kill_grace_s``.

Shutdown safety (why several layers): a trial must not leave an 8-GPU verl job running after
the sweep is gone.

- ``with``-scope: the child group is killed in a ``finally`` path, so an exception in the
  calling thread (``KeyboardInterrupt`` from Ctrl-C included) kills it before propagating.
- SIGTERM: when called from the main thread, a handler is installed once (only if SIGTERM
  still has its default action) that kills every live child group and then re-delivers the
  signal with the default action, so the process still dies "by SIGTERM". A handler the
  application installed itself is left alone (not replaced, not wrapped): when it exits the
  process, the exit hooks below clear the groups.
- interpreter exit: live groups are killed from threading's pre-join exit hook (so a trial
  running in a non-daemon thread cannot block exit forever), with ``atexit`` as a fallback.
- parent killed with SIGKILL (e.g. Ray killing the trial actor): the command runs under a
  small supervisor (the group leader, ``_SUPERVISOR``) that the kernel signals when the thread
  that started it dies (Linux ``PR_SET_PDEATHSIG``); it then clears the group the same way.
  It also clears leftovers of the group as soon as the command exits normally.
  Processes that left the group themselves (``setsid``, a Ray cluster started with
  ``ray start``) cannot be reached; Ray workers started by the trainer's own ``ray.init``
  fate-share with it.
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, Iterator, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from objective.result import ReportFn, StopTrial, TrialResult
from objective.verl_log import JsonlFollower, Metrics, parse_console_line, strip_decorations

DEFAULT_METRIC = "val-core/openai/gsm8k/acc/mean@1"
# The team's fork (seeds: configuration guide, E13 plan): the schedule keys and the multipliers
# dict. Note the fork also needs trainer.noise_injection.enabled=true and, for the multipliers
# to be used at all, ++trainer.noise_injection.use_variable_sigma=true (extra_overrides).
FORK_PARAM_MAP: dict[str, str] = {
    "sigma_start": "trainer.noise_injection.sigma_start",
    "sigma_end": "trainer.noise_injection.sigma_end",
    "num_stages": "trainer.noise_injection.num_stages",
}
# "++" (force-add): the fork's ppo_trainer.yaml may declare `layer_multipliers: {}` or not at all;
# a plain override fails in both cases under Hydra's struct mode ("Could not override ... Key '0'
# is not in struct"), "++" works in both (checked with hydra-core 1.3.8). Hydra merges the dict
# into the default, so every layer is written, zeros included.
FORK_MULTIPLIERS_KEY = "++trainer.noise_injection.layer_multipliers"
WORKDIR_PLACEHOLDER = "{workdir}"

# A Hydra override key: optional +/++ (add / force-add), dotted path of names.
_KEY_RE = re.compile(r"^(?:\+{1,2})?[A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]+)*$")
_PLAIN_STR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_HYDRA_KEYWORDS = {"true", "false", "null", "nan", "inf"}
# Lines that say why a run died: Python exceptions, and Hydra's override errors (whose last
# line is the unhelpful "Set the environment variable HYDRA_FULL_ERROR=1 ...").
_ERROR_LINE_RE = re.compile(
    r"^(?:(?:[A-Za-z_][\w.]*)?(?:Error|Exception|Interrupt|Exit)\b|Could not (?:override|append|delete|load)\b)"
)
_READ_POLL_S = 0.05
_LINGER_AFTER_EXIT_S = 2.0  # output grace once the main process exited but pipes stay open


# --------------------------------------------------------------------------- spec


class JsonlSource(BaseModel):
    """Read metrics from verl's file logger (``trainer.logger=[console,file]``) at this path."""

    model_config = ConfigDict(extra="forbid")
    jsonl: str = Field(min_length=1)


class CommandSpec(BaseModel):
    """How to run the user's trainer for one trial; see the module docstring.

    ``param_map`` maps a trial value name (``sigma_start``, ``sigma_end``, ``num_stages``,
    ``seed``, ``alpha``, ...) to one Hydra key or a list of keys that all get the value.
    ``{workdir}`` in ``extra_overrides``, ``env`` values and the JSONL path is replaced by the
    trial's own directory. With a JSONL source, ``VERL_FILE_LOGGER_PATH`` is set to that path
    unless ``env`` sets it.
    """

    model_config = ConfigDict(extra="forbid")

    command: list[str] | str
    cwd: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    param_map: dict[str, str | list[str]] = Field(default_factory=dict)
    multipliers_key: str | None = None
    extra_overrides: list[str] = Field(default_factory=list)
    metric: str = Field(default=DEFAULT_METRIC, min_length=1)
    log_source: Literal["stdout"] | JsonlSource = "stdout"
    timeout_s: float | None = Field(default=None, gt=0)
    kill_grace_s: float = Field(default=10.0, ge=0)

    @field_validator("command")
    @classmethod
    def _command_not_empty(cls, value: list[str] | str) -> list[str] | str:
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("command is empty")
        elif not value or not value[0].strip():
            raise ValueError("command is empty")
        return value

    @field_validator("param_map")
    @classmethod
    def _param_keys(cls, value: dict[str, str | list[str]]) -> dict[str, str | list[str]]:
        for name, keys in value.items():
            key_list = [keys] if isinstance(keys, str) else keys
            if not key_list:
                raise ValueError(f"param_map.{name}: no Hydra key given")
            for key in key_list:
                _check_key(key, f"param_map.{name}")
        return value

    @field_validator("multipliers_key")
    @classmethod
    def _multipliers_key(cls, value: str | None) -> str | None:
        if value is not None:
            _check_key(value, "multipliers_key")
        return value

    @field_validator("extra_overrides")
    @classmethod
    def _extra(cls, value: list[str]) -> list[str]:
        for item in value:
            key, sep, _ = item.partition("=")
            if not sep:
                raise ValueError(f"extra_overrides: {item!r} is not key=value")
            _check_key(key.strip(), "extra_overrides")
        return value

    @model_validator(mode="after")
    def _no_duplicate_keys(self) -> "CommandSpec":
        seen: dict[str, str] = {}
        for source, key in self._all_keys():
            bare = key.lstrip("+")
            if bare in seen:
                raise ValueError(f"Hydra key {bare!r} is set twice ({seen[bare]} and {source})")
            seen[bare] = source
        return self

    def _all_keys(self) -> Iterator[tuple[str, str]]:
        for item in self.extra_overrides:
            yield "extra_overrides", item.partition("=")[0].strip()
        for name, keys in self.param_map.items():
            for key in [keys] if isinstance(keys, str) else keys:
                yield f"param_map.{name}", key
        if self.multipliers_key:
            yield "multipliers_key", self.multipliers_key


def _check_key(key: str, where: str) -> None:
    if not _KEY_RE.match(key):
        raise ValueError(f"{where}: {key!r} is not a Hydra key (expected e.g. trainer.noise_injection.sigma_start)")


# --------------------------------------------------------------------------- overrides


def _quote(text: str) -> str:
    """Single-quote a string for Hydra: escape quotes and the backslashes right before them."""
    out = []
    run = 0
    for ch in text:
        if ch == "\\":
            run += 1
            continue
        if run:
            out.append("\\" * (run * 2 if ch == "'" else run))
            run = 0
        out.append("\\'" if ch == "'" else ch)
    if run:
        out.append("\\" * (run * 2))
    return "'" + "".join(out) + "'"


def _plain(value: Any) -> Any:
    """numpy scalars/arrays and tuples to plain Python values."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if hasattr(value, "item") and not isinstance(value, (str, bytes, list, dict, tuple)):
        return value.item()
    return value


def hydra_value(value: Any) -> str:
    """Write a Python value so Hydra's override grammar parses it back to the same value and type.

    Strings that could read as something else (``true``, ``1e3``, paths, spaces) are quoted.
    Dict keys must be ints or plain names (Hydra's grammar takes nothing else).
    """
    value = _plain(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        if _PLAIN_STR_RE.match(value) and value.lower() not in _HYDRA_KEYWORDS:
            return value
        return _quote(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            key = _plain(key)
            if isinstance(key, bool) or not (
                isinstance(key, int) or (isinstance(key, str) and _PLAIN_STR_RE.match(key) and key.lower() not in _HYDRA_KEYWORDS)
            ):
                raise ValueError(f"dict key {key!r} cannot be written as a Hydra dict key (use ints or plain names)")
            items.append(f"{key}:{hydra_value(item)}")
        return "{" + ",".join(items) + "}"
    raise ValueError(f"cannot write {type(value).__name__} value {value!r} as a Hydra override")


def multipliers_dict(multipliers: Any) -> dict[int, float]:
    """The fork's ``layer_multipliers`` dict ({layer: multiplier}) from a per-layer list or a dict."""
    multipliers = _plain(multipliers)
    if isinstance(multipliers, Mapping):
        items = [(_plain(k), _plain(v)) for k, v in multipliers.items()]
    elif isinstance(multipliers, (list, tuple)):
        items = list(enumerate(multipliers))
    else:
        raise ValueError(f"multipliers: expected a list (one per layer) or a dict, got {type(multipliers).__name__}")
    out: dict[int, float] = {}
    for layer, mult in items:
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise ValueError(f"multipliers: layer index {layer!r} is not a non-negative int")
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not math.isfinite(mult) or mult < 0:
            raise ValueError(f"multipliers: layer {layer} has invalid multiplier {mult!r} (finite, >= 0)")
        out[layer] = float(mult)
    return dict(sorted(out.items()))


def build_overrides(spec: CommandSpec, values: Mapping[str, Any], *, workdir: str | None = None) -> list[str]:
    """The Hydra overrides for one trial: extra_overrides, then param_map values, then multipliers.

    Raises ValueError when a mapped value is missing from ``values`` or cannot be written.
    """
    overrides = []
    for item in spec.extra_overrides:
        overrides.append(item.replace(WORKDIR_PLACEHOLDER, workdir) if workdir else item)
    for name, keys in spec.param_map.items():
        if name not in values:
            raise ValueError(f"param_map maps {name!r} but the trial has no value {name!r} (has: {', '.join(sorted(values))})")
        text = hydra_value(values[name])
        for key in [keys] if isinstance(keys, str) else keys:
            overrides.append(f"{key}={text}")
    if spec.multipliers_key:
        if "multipliers" not in values:
            raise ValueError(f"multipliers_key is {spec.multipliers_key!r} but the trial has no 'multipliers' value")
        if values["multipliers"] is not None:  # None: uniform noise, leave the fork's default
            overrides.append(f"{spec.multipliers_key}={hydra_value(multipliers_dict(values['multipliers']))}")
    return overrides


# --------------------------------------------------------------------------- process groups

_REGISTRY_LOCK = threading.RLock()  # re-entrant: the SIGTERM handler runs on the main thread
_LIVE_GROUPS: dict[int, float] = {}  # pgid -> kill grace seconds
_HANDLERS_INSTALLED = False
_SIGNAL_INSTALLED = False
_EXIT_GRACE_CAP_S = 5.0


def _group_members(pgid: int) -> list[int] | None:
    """Live (non-zombie) pids in a process group, from /proc; None where /proc is unavailable."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    members = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                data = fh.read()
        except OSError:
            continue
        fields = data[data.rfind(b")") + 2:].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            members.append(int(entry))
    return members


def group_alive(pgid: int) -> bool:
    """Whether any process of the group is still running (zombies awaiting reaping count as dead)."""
    members = _group_members(pgid)
    if members is not None:
        return bool(members)
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def kill_group(pgid: int, grace_s: float, proc: subprocess.Popen | None = None) -> None:
    """SIGTERM the whole group, SIGKILL what is left after ``grace_s``; reap ``proc`` if given."""

    def reap() -> None:
        if proc is not None:
            proc.poll()

    reap()
    if not group_alive(pgid):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        reap()
        if not group_alive(pgid):
            return
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        reap()
        if not group_alive(pgid):
            return
        time.sleep(0.02)


def kill_all_groups(grace_cap_s: float = _EXIT_GRACE_CAP_S) -> None:
    """Kill every child group still registered (sweep shutdown)."""
    with _REGISTRY_LOCK:
        groups = dict(_LIVE_GROUPS)
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + min(max(groups.values(), default=0.0), grace_cap_s)
    while time.monotonic() < deadline and any(group_alive(p) for p in groups):
        time.sleep(0.02)
    for pgid in groups:
        if group_alive(pgid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
    with _REGISTRY_LOCK:
        for pgid in groups:
            _LIVE_GROUPS.pop(pgid, None)


def _on_sigterm(signum: int, frame: Any) -> None:
    """Kill the child groups, then die of the signal as the default action would."""
    kill_all_groups()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_shutdown_hooks() -> None:
    """Once per process: exit hooks, and a SIGTERM handler if SIGTERM has its default action."""
    global _HANDLERS_INSTALLED, _SIGNAL_INSTALLED
    with _REGISTRY_LOCK:
        if not _HANDLERS_INSTALLED:
            _HANDLERS_INSTALLED = True
            register = getattr(threading, "_register_atexit", None)  # runs before threads are joined
            if register is not None:
                with contextlib.suppress(RuntimeError):
                    register(kill_all_groups)
            atexit.register(kill_all_groups)
        if _SIGNAL_INSTALLED or threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        _SIGNAL_INSTALLED = True
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGTERM, _on_sigterm)


# The group leader of every trial: a tiny Python supervisor between us and the user's command.
# It asks Linux to SIGTERM it when the thread that started it dies (PR_SET_PDEATHSIG, set in the
# supervisor itself rather than in a preexec_fn, which is unsafe in threaded callers such as Ray
# workers), and whenever it stops, by a signal or because the command exited, it clears the rest
# of its group: SIGTERM, then SIGKILL after the grace period. So even a sweep process killed
# with SIGKILL takes the trainer and everything the trainer started with it.
# argv: parent_pid grace_s command...; exit status mirrors the command's.
_SUPERVISOR = r"""# noisesweep trial supervisor (objective/command.py)
import ctypes, os, signal, subprocess, sys, time
parent, grace, argv = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3:]
me = os.getpid()
stop = []
signal.signal(signal.SIGTERM, lambda s, f: stop.append(s))
signal.signal(signal.SIGHUP, lambda s, f: stop.append(s))
try:
    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)
except Exception:
    pass
if os.getppid() != parent:
    stop.append(signal.SIGTERM)

def others():
    try:
        entries = os.listdir("/proc")
    except OSError:
        return None
    out = []
    for e in entries:
        if e.isdigit() and int(e) != me:
            try:
                with open("/proc/%s/stat" % e, "rb") as fh:
                    f = fh.read().rsplit(b")", 1)[1].split()
            except (OSError, IndexError):
                continue
            if len(f) > 2 and int(f[2]) == me and f[0] != b"Z":
                out.append(int(e))
    return out

def clear_group(grace):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(me, signal.SIGTERM)
    except OSError:
        pass
    end = time.monotonic() + grace
    while time.monotonic() < end:
        if child is not None:
            child.poll()
        left = others()
        if left is not None and not left:
            return
        time.sleep(0.02)
    left = others()
    if left is None:
        os.killpg(me, signal.SIGKILL)
    for pid in left or []:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass

child = None
if not stop:
    try:
        child = subprocess.Popen(argv)
    except OSError as exc:
        sys.stderr.write("noisesweep: cannot start %r: %s\n" % (argv[0], exc))
        sys.exit(127)
rc = None
while not stop and rc is None:
    try:
        rc = child.wait(timeout=0.1)
    except subprocess.TimeoutExpired:
        pass
if stop:
    clear_group(grace)
    if child is not None:
        child.poll()
    sys.exit(128 + stop[0])
clear_group(min(grace, 2.0))
if rc < 0:
    try:
        signal.signal(-rc, signal.SIG_DFL)
    except (OSError, ValueError):
        pass  # SIGKILL/SIGSTOP cannot be handled: they already act by default
    os.kill(me, -rc)
    time.sleep(1)
sys.exit(rc)
"""


@contextlib.contextmanager
def _child_group(argv: list[str], *, cwd: str | None, env: dict[str, str], grace_s: float) -> Iterator[subprocess.Popen]:
    """Start argv in a new session; whatever happens in the body, kill the group on the way out."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _SUPERVISOR, str(os.getpid()), repr(float(grace_s)), *argv],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    pgid = proc.pid  # leader of its own new session and group
    with _REGISTRY_LOCK:
        _LIVE_GROUPS[pgid] = grace_s
    try:
        yield proc
    finally:
        try:
            kill_group(pgid, grace_s, proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5.0)
        finally:
            with _REGISTRY_LOCK:
                _LIVE_GROUPS.pop(pgid, None)


# --------------------------------------------------------------------------- the trial


class _Outcome(Exception):
    """Ends the read loop early with a status and a reason."""

    def __init__(self, status: str, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class _Tracker:
    """Feeds parsed metric steps to `report` and remembers the objective's history."""

    def __init__(self, metric: str, report: ReportFn | None) -> None:
        self.metric = metric
        self.report = report
        self.history: list[dict[str, Any]] = []
        self.value: float | None = None
        self.step: int | None = None
        self.steps_seen = 0
        self.keys_seen: set[str] = set()

    def offer(self, step: int, metrics: Metrics) -> None:
        self.steps_seen += 1
        self.keys_seen.update(metrics)
        if self.metric not in metrics:
            return
        value = metrics[self.metric]
        if not math.isfinite(value):
            raise _Outcome("failed", f"metric {self.metric} is {value} at step {step}")
        if self.step is not None and step <= self.step:
            return  # repeated line (Ray dedup, both streams): report each step once
        self.history.append({"step": step, "metrics": dict(metrics)})
        self.value, self.step = value, step
        if self.report is None:
            return
        try:
            self.report(step, dict(metrics))
        except StopTrial as exc:
            raise _Outcome("pruned", f"pruned at step {step}" + (f": {exc}" if str(exc) else "")) from None
        except Exception as exc:  # noqa: BLE001 - a failing callback fails the trial, not the sweep
            raise _Outcome("failed", f"report raised {type(exc).__name__}: {exc}") from None


def _reader(pipe: Any, name: str, out: queue.Queue) -> None:
    try:
        for raw in iter(pipe.readline, b""):
            out.put((name, raw.decode("utf-8", errors="replace").rstrip("\r\n")))
    except (OSError, ValueError):
        pass
    finally:
        out.put((name, None))


def _failure_line(tail: deque[tuple[str, str]]) -> str:
    """The most telling last line: an exception line, else the last stderr line, else stdout."""
    lines = [(name, strip_decorations(text)) for name, text in tail]
    lines = [(name, text) for name, text in lines if text]
    for _, text in reversed(lines):
        if _ERROR_LINE_RE.match(text):
            return text[:300]
    for name, text in reversed(lines):
        if name == "stderr":
            return text[:300]
    return lines[-1][1][:300] if lines else "(no output)"


def _exit_reason(returncode: int, tail: deque[tuple[str, str]]) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}: {_failure_line(tail)}"
    return f"exit code {returncode}: {_failure_line(tail)}"


def _resolve_env(spec: CommandSpec, workdir: str, jsonl_path: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in spec.env.items():
        env[key] = value.replace(WORKDIR_PLACEHOLDER, workdir)
    if jsonl_path is not None and "VERL_FILE_LOGGER_PATH" not in spec.env:
        env["VERL_FILE_LOGGER_PATH"] = jsonl_path
    return env


def command_argv(spec: CommandSpec, overrides: list[str]) -> list[str]:
    """The argv to run: a list command gets the overrides appended as separate arguments; a
    shell string gets them appended shell-quoted and runs under /bin/sh (the group leader)."""
    if isinstance(spec.command, str):
        return ["/bin/sh", "-c", " ".join([spec.command, *map(shlex.quote, overrides)])]
    return [*spec.command, *overrides]


def run_command_trial(
    spec: CommandSpec | Mapping[str, Any],
    values: Mapping[str, Any],
    report: ReportFn | None = None,
    *,
    timeout_s: float | None = None,
    log_path: str | os.PathLike[str] | None = None,
    workdir: str | os.PathLike[str] | None = None,
) -> TrialResult:
    """Run the user's command for one trial and return how it ended (see the module docstring).

    ``values`` holds the trial's values (``sigma_start``, ``sigma_end``, ``num_stages``,
    ``multipliers`` (per-layer list or None), ``seed``, ...); ``timeout_s`` overrides the
    spec's; ``log_path`` receives a copy of the output; ``workdir`` is the trial's directory
    (``{workdir}``; a temporary one, removed afterwards, when not given).
    Spec problems (an unmapped value, a missing ``cwd``) raise ValueError/FileNotFoundError:
    they would fail every trial the same way.
    """
    if not isinstance(spec, CommandSpec):
        try:
            spec = CommandSpec.model_validate(dict(spec))
        except ValidationError as exc:  # pydantic's text spans several lines: keep the first problem
            err = exc.errors()[0]
            where = ".".join(str(part) for part in err["loc"]) or "spec"
            more = f" (+{exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
            raise ValueError(f"command spec: {where}: {err['msg']}{more}") from None
    started = time.monotonic()
    limit = timeout_s if timeout_s is not None else spec.timeout_s
    if limit is not None and limit <= 0:
        raise ValueError(f"timeout_s must be > 0, got {limit}")
    cwd = spec.cwd
    if cwd is not None and not Path(cwd).is_dir():
        raise FileNotFoundError(f"command cwd {cwd!r} is not a directory")
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix="noisesweep-trial-"))
        workdir = str(workdir)
        overrides = build_overrides(spec, values, workdir=workdir)
        argv = command_argv(spec, overrides)
        jsonl_path = None
        follower = None
        if isinstance(spec.log_source, JsonlSource):
            path = Path(spec.log_source.jsonl.replace(WORKDIR_PLACEHOLDER, workdir))
            if not path.is_absolute():
                path = Path(cwd or os.getcwd()) / path
            path.parent.mkdir(parents=True, exist_ok=True)
            jsonl_path = str(path)
            follower = JsonlFollower(path, start_at_end=True)
        env = _resolve_env(spec, workdir, jsonl_path)
        log_fh = None
        if log_path is not None:
            Path(log_path).parent.mkdir(parents=True, exist_ok=True)
            log_fh = stack.enter_context(open(log_path, "a", encoding="utf-8", buffering=1))
        applied: dict[str, Any] = {
            "command": spec.command if isinstance(spec.command, str) else shlex.join(spec.command),
            "overrides": overrides,
            "multipliers_key": spec.multipliers_key,
            "multipliers": (
                list(multipliers_dict(values["multipliers"]).values())
                if spec.multipliers_key and values.get("multipliers") is not None
                else None
            ),
            "log_source": jsonl_path or "stdout",
        }
        _install_shutdown_hooks()
        tracker = _Tracker(spec.metric, report)
        tail: deque[tuple[str, str]] = deque(maxlen=40)
        lines_read = 0
        outcome: _Outcome | None = None

        def take_jsonl(final: bool = False) -> None:
            assert follower is not None
            for step, metrics in follower.flush() if final else follower.poll():
                tracker.offer(step, metrics)

        with _child_group(argv, cwd=cwd, env=env, grace_s=spec.kill_grace_s) as proc:
            applied["pid"] = proc.pid
            lines: queue.Queue = queue.Queue()
            readers = [
                threading.Thread(target=_reader, args=(proc.stdout, "stdout", lines), daemon=True),
                threading.Thread(target=_reader, args=(proc.stderr, "stderr", lines), daemon=True),
            ]
            for thread in readers:
                thread.start()
            open_streams = len(readers)
            exited_at: float | None = None
            killed_leftovers = False
            try:
                while open_streams:
                    try:
                        name, line = lines.get(timeout=_READ_POLL_S)
                    except queue.Empty:
                        name, line = None, None
                    if name is not None and line is None:
                        open_streams -= 1
                    elif line is not None:
                        lines_read += 1
                        tail.append((name, line))
                        if log_fh is not None:
                            log_fh.write(line + "\n")
                        if follower is None:
                            parsed = parse_console_line(line)
                            if parsed is not None:
                                tracker.offer(*parsed)
                    if follower is not None:
                        take_jsonl()
                    now = time.monotonic()
                    if limit is not None and now - started > limit:
                        raise _Outcome("failed", f"timeout after {limit:g} s")
                    if proc.poll() is not None and open_streams:
                        # The trainer exited but something it started still holds the pipes:
                        # give it a moment to finish writing, kill the group, and stop waiting
                        # for pipes held by a process that left the group.
                        exited_at = exited_at or now
                        if now - exited_at > 2 * _LINGER_AFTER_EXIT_S + spec.kill_grace_s:
                            break
                        if now - exited_at > _LINGER_AFTER_EXIT_S and not killed_leftovers:
                            killed_leftovers = True
                            kill_group(proc.pid, spec.kill_grace_s, proc)
                if follower is not None:
                    take_jsonl(final=True)
            except _Outcome as exc:
                outcome = exc
        # The group is dead here; keep what the readers still had for the log.
        for thread, pipe in zip(readers, (proc.stdout, proc.stderr)):
            thread.join(timeout=1.0)
            # A pipe still held by a process that left the group keeps its reader blocked;
            # closing it under the reader would block us too, so it is left to the daemon thread.
            if not thread.is_alive() and pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        while True:
            try:
                name, line = lines.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                lines_read += 1
                tail.append((name, line))
                if log_fh is not None:
                    log_fh.write(line + "\n")
        returncode = proc.returncode
        applied["exit_code"] = returncode

    if outcome is not None:
        status, reason = outcome.status, outcome.reason
    elif returncode != 0:
        status, reason = "failed", _exit_reason(returncode, tail)
    elif tracker.value is None:
        status = "failed"
        source = f"JSONL file {jsonl_path}" if jsonl_path else "the console output"
        reason = f"metric {spec.metric} never appeared in {source} ({tracker.steps_seen} metric steps, {lines_read} lines read)"
        similar = sorted(k for k in tracker.keys_seen if k.startswith("val"))[:3]
        if similar:
            reason += f"; validation keys seen: {', '.join(similar)}"
    else:
        status, reason = "complete", None
    return TrialResult(
        status=status,  # type: ignore[arg-type]
        value=tracker.value,
        step=tracker.step,
        history=tracker.history,
        reason=reason,
        applied=applied,
        wall_time_s=time.monotonic() - started,
    )
