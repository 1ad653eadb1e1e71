"""The read loop of a command trial: run the command, stream its output, end as a TrialResult.

Each trial:

1. builds its Hydra overrides (`objective.command.spec.build_overrides`);
2. starts the command under the supervisor in its own process group
   (`objective.command.process_group.child_group`), with ``PYTHONUNBUFFERED=1`` so a Python
   trainer's prints arrive as they happen, not at exit;
3. streams its output line by line (copied to a per-trial log file when one is given), parses
   verl's metric lines (`objective.verl_log`) from the console or from verl's JSONL file
   logger, and calls ``report(step, metrics)`` for every step whose metrics hold the objective;
4. checks every line against the trial's noise plan (`objective.command.applied`: the fork's
   ``[AQN]`` lines), stopping the trial at the first contradiction;
5. ends as a result, never as an exception of the sweep: ``complete`` (exit 0, the metric
   seen, the noise verified), ``pruned`` (report raised ``StopTrial``), ``failed`` (timeout,
   non-zero exit, NaN metric, metric never seen, report raised something else, noise not
   applied as asked, or per-layer multipliers the fork as it is cannot apply: then nothing is
   started), and always kills whatever is left of the process group: SIGTERM, then SIGKILL
   after ``kill_grace_s``.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import re
import shlex
import signal
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from objective.command.applied import AppliedNoiseCheck
from objective.command.process_group import child_group, install_shutdown_hooks, kill_group
from objective.command.spec import WORKDIR_PLACEHOLDER, CommandSpec, JsonlSource, build_overrides, command_argv
from objective.command.verl_fork import UnreachableNoise, multipliers_dict, plan_from_values
from objective.result import ReportFn, StopTrial, TrialResult
from objective.verl_log import JsonlFollower, Metrics, parse_console_line, strip_decorations
from quant.noise_plan import NoisePlan

# Lines that say why a run died: Python exceptions, and Hydra's override errors (whose last
# line is the unhelpful "Set the environment variable HYDRA_FULL_ERROR=1 ...").
_ERROR_LINE_RE = re.compile(
    r"^(?:(?:[A-Za-z_][\w.]*)?(?:Error|Exception|Interrupt|Exit)\b|Could not (?:override|append|delete|load)\b)"
)
_READ_POLL_S = 0.05
_LINGER_AFTER_EXIT_S = 2.0  # output grace once the main process exited but pipes stay open


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


def _sent_multipliers(spec: CommandSpec, values: Mapping[str, Any], plan: NoisePlan | None) -> list[float] | None:
    """The per-layer multipliers the trainer was given (None: none were sent)."""
    if plan is not None:
        return None if plan.multipliers is None else list(plan.multipliers)
    if spec.multipliers_key and values.get("multipliers") is not None:
        return list(multipliers_dict(values["multipliers"]).values())
    return None


def _resolve_env(spec: CommandSpec, workdir: str, jsonl_path: str | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in spec.env.items():
        env[key] = value.replace(WORKDIR_PLACEHOLDER, workdir)
    if jsonl_path is not None and "VERL_FILE_LOGGER_PATH" not in spec.env:
        env["VERL_FILE_LOGGER_PATH"] = jsonl_path
    return env


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
        plan = plan_from_values(values) if spec.noise_keys else None
        try:
            overrides = build_overrides(spec, values, workdir=workdir)
        except UnreachableNoise as exc:  # this trial's noise, not the spec: a failed trial, nothing started
            refused = {"noise_keys": spec.noise_keys, "verified": False, "not_applied": str(exc)}
            return TrialResult(status="failed", reason=str(exc), applied=refused, wall_time_s=time.monotonic() - started)
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
            "multipliers": _sent_multipliers(spec, values, plan),
            "log_source": jsonl_path or "stdout",
        }
        if spec.noise_keys:
            applied["noise_keys"] = spec.noise_keys
        mode = spec.verify_mode
        checker = AppliedNoiseCheck(plan, mode=mode) if plan is not None and mode != "off" else None
        install_shutdown_hooks()
        tracker = _Tracker(spec.metric, report)
        tail: deque[tuple[str, str]] = deque(maxlen=40)
        lines_read = 0
        outcome: _Outcome | None = None

        def keep(name: str, line: str) -> str | None:
            """Count, tail and log one output line; the applied-noise checker's verdict on it."""
            nonlocal lines_read
            lines_read += 1
            tail.append((name, line))
            if log_fh is not None:
                log_fh.write(line + "\n")
            return checker.feed(line) if checker is not None else None

        def take_jsonl(final: bool = False) -> None:
            assert follower is not None
            for step, metrics in follower.flush() if final else follower.poll():
                tracker.offer(step, metrics)

        with child_group(argv, cwd=cwd, env=env, grace_s=spec.kill_grace_s) as proc:
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
                        not_applied = keep(name, line)
                        if not_applied is not None and mode == "strict":
                            raise _Outcome("failed", not_applied)
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
                keep(name, line)  # after the group is gone a late verdict no longer changes the outcome
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
    if checker is not None:
        verdict, not_applied = checker.finish()
        applied.update(verdict)
        if status == "complete" and not_applied is not None:
            status, reason = "failed", not_applied
    return TrialResult(
        status=status,  # type: ignore[arg-type]
        value=tracker.value,
        step=tracker.step,
        history=tracker.history,
        reason=reason,
        applied=applied,
        wall_time_s=time.monotonic() - started,
    )
