"""objective: the quantized RL trainer (and the user's own command) as a sweep trial.

This package knows nothing of the sweep; the sweep calls `run_trial(config, report)`.
"""

from __future__ import annotations

from typing import Any

from objective.result import ReportFn, StopTrial, TrialResult

__all__ = ["ReportFn", "StopTrial", "TrialResult", "run_trial"]


def run_trial(config: Any, report: ReportFn | None = None) -> TrialResult:
    """Run one trial of the built-in trainer; see objective.trainer.run_trial."""
    from objective.trainer import run_trial as _run_trial

    return _run_trial(config, report)
