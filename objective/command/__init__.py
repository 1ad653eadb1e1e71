"""The user's own trainer (the team's verl fork, or any script) as a sweep objective.

One module a job:

- `spec`: `CommandSpec` (what to run, which values go to which Hydra keys) and the argv;
- `verl_fork`: the fork's Hydra vocabulary (its keys, and how a value is written for Hydra),
  shared with ``noisesweep export --format verl|hydra``;
- `process_group`: the trial's process group, killed whatever happens, under `supervisor.py`;
- `applied`: the fork's ``[AQN]`` lines checked against the trial's NoisePlan;
- `trial`: `run_command_trial`, the read loop that turns the command's output into a TrialResult.

docs/verl-fork.md says what the fork reads where and what the project sets.
"""

from objective.command.process_group import group_alive, kill_all_groups, kill_group
from objective.command.spec import DEFAULT_METRIC, WORKDIR_PLACEHOLDER, CommandSpec, JsonlSource, build_overrides, command_argv
from objective.command.trial import run_command_trial
from objective.command.verl_fork import FORK_PARAM_MAP, NOISE_KEYS, fork_overrides, hydra_value, multipliers_dict, noise_block

__all__ = [
    "DEFAULT_METRIC",
    "FORK_PARAM_MAP",
    "NOISE_KEYS",
    "WORKDIR_PLACEHOLDER",
    "CommandSpec",
    "JsonlSource",
    "build_overrides",
    "command_argv",
    "fork_overrides",
    "group_alive",
    "hydra_value",
    "kill_all_groups",
    "kill_group",
    "multipliers_dict",
    "noise_block",
    "run_command_trial",
]
