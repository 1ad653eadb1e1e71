"""Parse verl's metric output: console lines and the JSONL file logger.

verl's console logger prints one line per training step, ``step:N - key:value - key:value``.
Seen through Ray the line may carry a worker prefix such as ``(TaskRunner pid=123) `` (coloured
with ANSI codes, possibly several nested prefixes), a dedup suffix
``[repeated 2x across cluster]``, and it may share a physical line with a tqdm progress bar
separated by ``\\r``. Depending on the verl and numpy versions a value reads ``0.564`` (``.3f``),
``0.5641``, ``np.float64(0.5641)``, ``12`` or ``nan``. Only numeric values are kept: a metric
the sweep cannot compare is no metric.

The file logger (``trainer.logger=[console,file]``, path from ``VERL_FILE_LOGGER_PATH``) writes
``{"step": N, "data": {...}}`` per line with full precision; ``JsonlFollower`` tails that file
while the trainer is still writing it.

The team's fork also says what noise it applied (`parse_aqn_line`), from the rollout workers
(Ray prefix ``(WorkerDict pid=...)``), rank 0 only, at every weight sync
(verl/utils/noise_injection.py ``generate_expert_gaussian_noise``):

- ``[AQN] Noise injection (Dense) - Step: 6/29, Sigma ID: 1, Sigma: 0.028117, LayerTypes:
  ['rmsnorm'], Target: ['layers.10.', ...], SRDD-guided=28 layers`` (always, sigma 0 included;
  ``SRDD-guided=N`` only when ``layer_sigma_config.enabled``, N = entries of its dict;
  ``Target: ALL`` when no target pattern reached it);
- ``[AQN] Applied noise to 20 rmsnorm layers (skipped 37 excluded layers) (SRDD-guided)``
  (only when sigma > 0; the counts are modules, not decoder layers);
- and, once per rollout worker (verl/workers/rollout/vllm_rollout/vllm_rollout.py
  ``vLLMAsyncRollout.__init__``), ``[AQN] Noise injection enabled: 9 stages, total_steps=29,
  targets=[...]``.
"""

from __future__ import annotations

import ast
import json
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path

Metrics = dict[str, float]

_HEAD_BYTES = 64

_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07")
# Ray worker prefix: "(TaskRunner pid=123)", "(WorkerDict pid=9, ip=10.0.0.1)", "(pid=7)".
_RAY_PREFIX_RE = re.compile(r"^\s*\((?:[^()]*\s)?pid=\d+[^()]*\)\s*")
_RAY_REPEAT_RE = re.compile(r"\s*\[repeated \d+x across cluster\]\s*$")
_STEP_RE = re.compile(r"^step:\s*(\d+)\s*(?:$| - )")
# numpy scalar reprs (numpy >= 2): np.float64(0.5), np.int64(3), numpy.float32(nan).
_NP_WRAP_RE = re.compile(r"^(?:np|numpy)\.(?:float|int|uint)\d*\((.*)\)$")
_NUMBER_RE = re.compile(
    r"^[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|nan|inf|infinity)$", re.IGNORECASE
)


def strip_decorations(line: str) -> str:
    """Remove ANSI colours, Ray worker prefixes and Ray's dedup suffix from one console line."""
    text = _ANSI_RE.sub("", line).rstrip("\r\n")
    while True:
        stripped = _RAY_PREFIX_RE.sub("", text, count=1)
        if stripped == text:
            break
        text = stripped
    return _RAY_REPEAT_RE.sub("", text).strip()


def parse_value(text: str) -> float | None:
    """Read one printed metric value as a float; None when it is not a number (e.g. True, a tensor)."""
    text = text.strip()
    match = _NP_WRAP_RE.match(text)
    if match:
        text = match.group(1).strip()
    if not _NUMBER_RE.match(text):
        return None
    try:
        return float(text)
    except ValueError:
        return None


def _parse_segment(segment: str) -> tuple[int, Metrics] | None:
    text = strip_decorations(segment)
    match = _STEP_RE.match(text)
    if match is None:
        return None
    step = int(match.group(1))
    metrics: Metrics = {}
    for part in text[match.end():].split(" - "):
        key, sep, raw = part.rpartition(":")
        key = key.strip()
        if not sep or not key:
            continue
        value = parse_value(raw)
        if value is not None:
            metrics[key] = value
    return step, metrics


def parse_console_line(line: str) -> tuple[int, Metrics] | None:
    """Parse one verl console metrics line into (step, metrics); None for any other line.

    A physical line may hold several carriage-return separated segments (tqdm redraws its bar
    with ``\\r``); the last segment that is a metrics line wins.
    """
    found = None
    for segment in line.split("\r"):
        parsed = _parse_segment(segment)
        if parsed is not None:
            found = parsed
    return found


def _numeric_items(data: dict) -> Metrics:
    metrics: Metrics = {}
    for key, value in data.items():
        if isinstance(value, bool):
            continue
        if isinstance(value, (int, float)):
            metrics[str(key)] = float(value)
        elif isinstance(value, str):
            parsed = parse_value(value)
            if parsed is not None:
                metrics[str(key)] = parsed
    return metrics


def parse_jsonl_line(line: str) -> tuple[int, Metrics] | None:
    """Parse one line of verl's file logger, ``{"step": N, "data": {...}}``; None for anything else.

    Python's json module reads the ``NaN``/``Infinity`` tokens verl's json.dumps writes.
    """
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    if not isinstance(record, dict) or not isinstance(record.get("data"), dict):
        return None
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, (int, float)):
        return None
    if isinstance(step, float) and (not math.isfinite(step) or step != int(step)):
        return None
    return int(step), _numeric_items(record["data"])


class JsonlFollower:
    """Tail a JSONL file that another process is still writing.

    The file may not exist yet; each ``poll()`` returns only records completed since the last
    call (a line without its newline waits for the rest). If the file is truncated or replaced
    (new inode, or its first bytes changed: filesystems reuse inodes) reading restarts at its
    beginning. ``start_at_end=True`` skips what is already
    there, so a leftover file from an earlier run is not mistaken for this run's metrics.
    """

    def __init__(self, path: str | os.PathLike[str], *, start_at_end: bool = False) -> None:
        self.path = Path(path)
        self._offset = 0
        self._inode: int | None = None
        self._buffer = b""
        self._head = b""  # first bytes already consumed, to notice a rewritten file
        if start_at_end:
            try:
                st = self.path.stat()
            except FileNotFoundError:
                pass
            else:
                self._offset, self._inode = st.st_size, st.st_ino
                with open(self.path, "rb") as fh:
                    self._head = fh.read(min(self._offset, _HEAD_BYTES))

    def _read_new(self) -> bytes:
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            return b""
        with fh:
            st = os.fstat(fh.fileno())
            head = fh.read(len(self._head)) if self._head else b""
            if (
                (self._inode is not None and st.st_ino != self._inode)
                or st.st_size < self._offset
                or head != self._head
            ):
                self._offset, self._buffer, self._head = 0, b"", b""
            self._inode = st.st_ino
            fh.seek(self._offset)
            chunk = fh.read()
        if len(self._head) < _HEAD_BYTES:
            self._head = (self._head + chunk)[:_HEAD_BYTES] if self._offset == len(self._head) else self._head
        self._offset += len(chunk)
        return chunk

    def poll_lines(self) -> list[str]:
        """Complete new lines (decoded, without newline) since the last call."""
        data = self._buffer + self._read_new()
        *lines, self._buffer = data.split(b"\n")
        return [raw.decode("utf-8", errors="replace") for raw in lines]

    def poll(self) -> list[tuple[int, Metrics]]:
        """Parsed records completed since the last call; garbage lines are skipped."""
        out = []
        for line in self.poll_lines():
            parsed = parse_jsonl_line(line)
            if parsed is not None:
                out.append(parsed)
        return out

    def flush(self) -> list[tuple[int, Metrics]]:
        """Like poll(), then also parse a final line the writer left without a newline."""
        out = self.poll()
        if self._buffer.strip():
            parsed = parse_jsonl_line(self._buffer.decode("utf-8", errors="replace"))
            self._buffer = b""
            if parsed is not None:
                out.append(parsed)
        return out


# --------------------------------------------------------------------------- the fork's [AQN] lines

_AQN_INJECTION_RE = re.compile(
    r"^\[AQN\] Noise injection \((?P<kind>Dense|MoE)\) - Step: (?P<step>\d+)/(?P<total>\d+), "
    r"Sigma ID: (?P<sigma_id>-?\d+), Sigma: (?P<sigma>\S+), LayerTypes: (?P<types>\[[^\]]*\]), "
    r"Target: (?P<target>.*?)(?:, SRDD-guided=(?P<srdd>\d+) layers)?(?:, Zone=(?P<zone>[A-Z]+)\(mid_mult=[^)]*\))?$"
)
_AQN_APPLIED_RE = re.compile(
    r"^\[AQN\] Applied noise to (?P<count>\d+) (?P<types>[\w+]+) layers "
    r"\(skipped (?P<skipped>\d+) excluded layers\)(?P<srdd> \(SRDD-guided\))?$"
)
_AQN_ENABLED_RE = re.compile(
    r"^\[AQN\] Noise injection enabled: (?P<stages>\d+) stages, total_steps=(?P<total>\d+), targets=(?P<targets>.*)$"
)


@dataclass(frozen=True)
class AqnInjection:
    """One ``[AQN] Noise injection (...) - Step: s/T ...`` line: what the noise code was about to apply."""

    step: int
    total_steps: int
    sigma_id: int
    sigma: float
    layer_types: tuple[str, ...]
    target: tuple[str, ...] | None  # None: "ALL" (no target pattern)
    srdd_layers: int | None  # entries of layer_sigma_config's dict; None: not SRDD-guided
    zone_phase: str | None = None


@dataclass(frozen=True)
class AqnApplied:
    """One ``[AQN] Applied noise to N <types> layers (skipped K excluded layers)`` line."""

    count: int
    layer_types: tuple[str, ...]
    skipped: int
    srdd_guided: bool


@dataclass(frozen=True)
class AqnEnabled:
    """A rollout worker's ``[AQN] Noise injection enabled: n stages, total_steps=T, targets=...`` line."""

    stages: int
    total_steps: int
    targets: tuple[str, ...] | None  # None: the noise code's auto default


AqnLine = AqnInjection | AqnApplied | AqnEnabled


def _str_list(text: str) -> tuple[str, ...] | None:
    """A printed Python list of strings (``['rmsnorm']``); None for anything else (``ALL``, ``AUTO ...``)."""
    try:
        value = ast.literal_eval(text.strip())
    except (ValueError, SyntaxError):
        return None
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(value)
    return None


def parse_aqn_line(line: str) -> AqnLine | None:
    """Parse one of the fork's ``[AQN]`` console lines (through Ray prefixes and ANSI codes); None otherwise."""
    text = strip_decorations(line.rsplit("\r", 1)[-1])
    if not text.startswith("[AQN] "):
        return None
    match = _AQN_INJECTION_RE.match(text)
    if match:
        sigma = parse_value(match["sigma"])
        if sigma is None:
            return None
        return AqnInjection(
            step=int(match["step"]),
            total_steps=int(match["total"]),
            sigma_id=int(match["sigma_id"]),
            sigma=sigma,
            layer_types=_str_list(match["types"]) or (),
            target=_str_list(match["target"]),
            srdd_layers=int(match["srdd"]) if match["srdd"] is not None else None,
            zone_phase=match["zone"],
        )
    match = _AQN_APPLIED_RE.match(text)
    if match:
        return AqnApplied(
            count=int(match["count"]),
            layer_types=tuple(match["types"].split("+")),
            skipped=int(match["skipped"]),
            srdd_guided=match["srdd"] is not None,
        )
    match = _AQN_ENABLED_RE.match(text)
    if match:
        return AqnEnabled(stages=int(match["stages"]), total_steps=int(match["total"]), targets=_str_list(match["targets"]))
    return None
