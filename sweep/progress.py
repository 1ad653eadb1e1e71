"""Live progress on stderr: one line per trial event and a periodic summary.

Ray's own status table is switched off (verbose=0); this is what the user watches.
"""

from __future__ import annotations

import math
import sys
import time
from typing import IO, Any

from ray.tune import Callback


def _fmt_s(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    """Counts and best-so-far, fed by the bridge after each `tell`."""

    def __init__(
        self,
        *,
        total_trials: int | None,
        direction: str = "maximize",
        stream: IO[str] | None = None,
        summary_every_s: float = 30.0,
    ) -> None:
        self.total_trials = total_trials
        self.direction = direction
        self.stream = stream if stream is not None else sys.stderr
        self.summary_every_s = summary_every_s
        self.start = time.monotonic()
        self._last_summary = self.start
        self.done = self.pruned = self.failed = self.running = 0
        self.requeued = 0  # FAILs that say nothing about the config (a lost node): re-run, not counted
        self.best: tuple[float, int] | None = None
        self._durations: list[float] = []

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def started(self, number: int, params: dict[str, Any]) -> None:
        self.running += 1
        shown = ", ".join(f"{k}={_short(v)}" for k, v in params.items())
        self._print(f"[sweep] trial {number} started: {shown}")

    def finished(
        self, number: int, state: str, value: float | None, step: int | None,
        wall_s: float, reason: str | None = None, *, counted: bool = True,
    ) -> None:
        self.running = max(self.running - 1, 0)
        self._durations.append(wall_s)
        if not counted:
            self.requeued += 1
        elif state == "COMPLETE":
            self.done += 1
            if value is not None and math.isfinite(value):
                better = self.best is None or (
                    value > self.best[0] if self.direction == "maximize" else value < self.best[0]
                )
                if better:
                    self.best = (value, number)
        elif state == "PRUNED":
            self.pruned += 1
        else:
            self.failed += 1
        val = "-" if value is None else f"{value:.4f}"
        why = f" ({reason}{'' if counted else '; re-queued, not counted'})" if reason else ""
        self._print(
            f"[sweep] trial {number} {state.lower()} value={val} step={step} "
            f"in {_fmt_s(wall_s)}{why}"
        )
        self.summary()

    def summary_line(self) -> str:
        elapsed = time.monotonic() - self.start
        finished = self.done + self.pruned + self.failed
        remaining = None
        if self.total_trials is not None and self._durations:
            left = max(self.total_trials - finished, 0)
            per = elapsed / max(finished, 1)
            remaining = left * per
        best = "-" if self.best is None else f"{self.best[0]:.4f} (trial {self.best[1]})"
        total = f"/{self.total_trials}" if self.total_trials is not None else ""
        return (
            f"[sweep] {finished}{total} finished: {self.done} done, {self.pruned} pruned, "
            f"{self.failed} failed{f' (+{self.requeued} re-queued)' if self.requeued else ''}, "
            f"{self.running} running | best {best} | "
            f"elapsed {_fmt_s(elapsed)}, remaining ~{_fmt_s(remaining)}"
        )

    def summary(self) -> None:
        self._last_summary = time.monotonic()
        self._print(self.summary_line())

    def tick(self) -> None:
        """Called often; prints the summary when `summary_every_s` has passed."""
        if time.monotonic() - self._last_summary >= self.summary_every_s:
            self.summary()

    def note(self, line: str) -> None:
        self._print(f"[sweep] {line}")


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class ProgressCallback(Callback):
    """Gives `Progress` a heartbeat from Tune's event loop (periodic summary)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        if self.progress is not None:
            self.progress.tick()

    def __getstate__(self) -> dict[str, Any]:
        """Tune pickles callbacks into its experiment state; a console stream can't be."""
        return {"progress": None}
