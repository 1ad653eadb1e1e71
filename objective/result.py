"""What a trial returns to the sweep: failures are results, not crashes of the sweep."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Literal

TrialStatus = Literal["complete", "pruned", "failed"]

# report(step, metrics) is called after every validation; it may raise StopTrial to prune.
ReportFn = Callable[[int, dict[str, float]], None]


class StopTrial(Exception):
    """Raised by a `report` callback to stop a trial early (the sweep pruned it)."""


@dataclass
class TrialResult:
    """The outcome of one trial, whatever happened inside it.

    `value` is the objective metric at the last validation step (None when there was none);
    `reason` explains a pruned or failed trial in one line.
    """

    status: TrialStatus
    value: float | None = None
    step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    reason: str | None = None
    applied: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
