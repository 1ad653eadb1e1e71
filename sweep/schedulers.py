"""Tune schedulers on the validation steps: ASHA or a median rule that never prunes a finished trial.

Why not Tune's own as they are: Tune places ASHA's rungs at grace * rf^k and stops a trial once
time_attr >= max_t, i.e. at the final-step report, before the objective's final result arrives;
that would turn a finished trial into a 'pruned' one. Here the rungs sit at the validation steps
and the final step always continues. Both reach into ASHA's own state (`_brackets`, `_rungs`,
`_trial_info`, `_num_stopped`; ray/tune/schedulers/async_hyperband.py): Tune offers no hook.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sweep import bridge


@dataclass
class PruningPlan:
    """Scheduler settings: rungs are validation steps; `final_step` is never pruned."""

    enabled: bool = True
    kind: str = "asha"  # asha | median
    rungs: list[int] = field(default_factory=lambda: [5, 10, 15])
    grace_step: int | None = None  # None: the first rung
    reduction_factor: float = 2.0
    final_step: int = 20
    # ASHA cuts a trial only when this many others already reached its rung: RL accuracy is
    # noisy, and with one other result the cut is a coin flip on a single run.
    min_samples: int = 3

    def milestones(self) -> list[int]:
        """Rungs ASHA may cut at: validation steps from the grace step, before the final one."""
        grace = self.grace_step or min(self.rungs, default=self.final_step)
        return sorted({r for r in self.rungs if grace <= r < self.final_step})


class _FinalStepASHA:
    """Factory for an ASHA that never stops a trial at/after its final step.

    Tune's ASHA stops a trial once time_attr >= max_t, i.e. at the step-20 report, before the
    objective's final result arrives; that would turn a finished trial into a 'pruned' one.
    """

    @staticmethod
    def build(pruning: PruningPlan, direction: str, protect: Callable[[str], bool] | None = None) -> Any:
        from ray.tune.schedulers import ASHAScheduler, TrialScheduler

        class FinalStepASHA(ASHAScheduler):
            def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
                step = result.get(bridge.STEP_KEY, 0)
                if result.get(bridge.FINAL_KEY) or step >= pruning.final_step:
                    return TrialScheduler.CONTINUE
                if protect is not None and protect(trial.trial_id):
                    return TrialScheduler.CONTINUE
                action = super().on_trial_result(tune_controller, trial, result)
                if action == TrialScheduler.STOP:
                    bracket = self._trial_info.get(trial.trial_id)
                    rung = next((rec for m, rec in bracket._rungs if step >= m), {}) if bracket else {}
                    others = sum(1 for tid in rung if tid != trial.trial_id)
                    if others < pruning.min_samples:
                        self._num_stopped -= 1
                        return TrialScheduler.CONTINUE
                return action

        milestones = pruning.milestones()
        scheduler = FinalStepASHA(
            time_attr=bridge.STEP_KEY,
            metric=bridge.OBJECTIVE_KEY,
            mode="max" if direction == "maximize" else "min",
            max_t=pruning.final_step,
            grace_period=min(milestones, default=1),
            reduction_factor=pruning.reduction_factor,
        )
        # Tune places rungs at grace * rf^k; ours sit at the validation steps instead.
        for bracket in scheduler._brackets:
            bracket._rungs = [(m, {}) for m in sorted(milestones, reverse=True)]
        return scheduler


def build_scheduler(
    pruning: PruningPlan, direction: str, *, protect: Callable[[str], bool] | None = None
) -> tuple[Any, str]:
    """ASHA or a median rule on the validation steps; FIFO when pruning is off.

    `protect(trial_id)` names trials no rule may stop: the racing incumbent's replicates (a
    noisy rung value must not cut the evidence the answer rests on).
    """
    from ray.tune.schedulers import FIFOScheduler, MedianStoppingRule, TrialScheduler

    if not pruning.enabled:
        return FIFOScheduler(), "nothing"
    if pruning.kind == "asha":
        return _FinalStepASHA.build(pruning, direction, protect), "ASHA"
    if pruning.kind == "median":

        class FinalStepMedian(MedianStoppingRule):
            def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
                if result.get(bridge.FINAL_KEY) or result.get(bridge.STEP_KEY, 0) >= pruning.final_step:
                    return TrialScheduler.CONTINUE
                if protect is not None and protect(trial.trial_id):
                    return TrialScheduler.CONTINUE
                return super().on_trial_result(tune_controller, trial, result)

        return (
            FinalStepMedian(
                time_attr=bridge.STEP_KEY,
                metric=bridge.OBJECTIVE_KEY,
                mode="max" if direction == "maximize" else "min",
                grace_period=min(pruning.milestones(), default=pruning.final_step),
                min_samples_required=max(pruning.min_samples, 1),
            ),
            "median rule",
        )
    raise ValueError(f"pruning.kind must be asha or median, got {pruning.kind!r}")
