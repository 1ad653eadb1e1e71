"""CommandSpec: how to run the user's trainer for one trial, and the argv it becomes.

A study can point at the command the team already runs, e.g. ``bash studies/verl/e13-trial.sh``
(a script that forwards ``"$@"`` to ``python3 -m recipe.dapo.main_dapo``), and map the trial's
values onto the fork's Hydra keys (`objective.command.verl_fork`). `build_overrides` turns a
trial's values into ``key=value`` arguments; `command_argv` appends them to the command.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from objective.command.verl_fork import NoiseKeys, fork_keys, fork_overrides, hydra_value, multipliers_dict, plan_from_values

DEFAULT_METRIC = "val-core/openai/gsm8k/acc/mean@1"
WORKDIR_PLACEHOLDER = "{workdir}"

# A Hydra override key: optional +/++ (add / force-add), dotted path of names.
_KEY_RE = re.compile(r"^(?:\+{1,2})?[A-Za-z_][A-Za-z0-9_\-]*(?:\.[A-Za-z0-9_\-]+)*$")


class JsonlSource(BaseModel):
    """Read metrics from verl's file logger (``trainer.logger=[console,file]``) at this path."""

    model_config = ConfigDict(extra="forbid")
    jsonl: str = Field(min_length=1)


class CommandSpec(BaseModel):
    """How to run the user's trainer for one trial; see the module docstring.

    ``noise_keys`` writes the trial's NoisePlan in the team's fork's keys
    (`objective.command.verl_fork`): ``verl-fork`` for the fork as it is (schedule, zones,
    site; a plan with per-layer multipliers fails before it starts), ``verl-fork-patched`` for
    a fork with the layer_sigma_config fix of docs/verl-fork.md (multipliers too).
    ``verify_applied`` compares what the trainer's ``[AQN]`` lines say it applied with the plan
    (`objective.command.applied`): ``strict`` (the default with ``noise_keys``) fails a trial
    on any contradiction or when it prints nothing; ``warn`` accepts a trainer that prints
    nothing (``applied.verified`` is then false); ``off`` (the default without) checks nothing.
    ``param_map`` maps any other trial value (``seed``, ``alpha``, ...; or the schedule, for a
    trainer with other keys) to one Hydra key or a list of keys that all get the value.
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
    noise_keys: NoiseKeys | None = None
    verify_applied: Literal["strict", "warn", "off"] | None = None

    @property
    def verify_mode(self) -> Literal["strict", "warn", "off"]:
        """`verify_applied`, its default resolved: strict with the fork's keys, off without."""
        if self.verify_applied is not None:
            return self.verify_applied
        return "strict" if self.noise_keys else "off"

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
    def _verify_needs_keys(self) -> CommandSpec:
        if self.verify_applied in ("strict", "warn") and self.noise_keys is None:
            raise ValueError(
                f"verify_applied: {self.verify_applied} needs noise_keys (the check compares the [AQN] lines "
                "with the keys the fork was given)"
            )
        return self

    @model_validator(mode="after")
    def _no_duplicate_keys(self) -> CommandSpec:
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
        for key in fork_keys(self.noise_keys):
            yield f"noise_keys ({self.noise_keys})", key


def _check_key(key: str, where: str) -> None:
    if not _KEY_RE.match(key):
        raise ValueError(f"{where}: {key!r} is not a Hydra key (expected e.g. trainer.noise_injection.sigma_start)")


def build_overrides(spec: CommandSpec, values: Mapping[str, Any], *, workdir: str | None = None) -> list[str]:
    """The Hydra overrides for one trial: extra_overrides, param_map values, multipliers, the fork's noise keys.

    Raises ValueError when a mapped value is missing from ``values`` or cannot be written, and
    `UnreachableNoise` (a ValueError) when the fork as it is cannot apply the trial's plan.
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
    if spec.noise_keys is not None:
        plan = plan_from_values(values)
        if plan is None:
            raise ValueError(f"noise_keys: {spec.noise_keys} needs the trial's noise plan (sigma_start, sigma_end, num_stages, ...)")
        overrides.extend(fork_overrides(plan, spec.noise_keys))
    return overrides


def command_argv(spec: CommandSpec, overrides: list[str]) -> list[str]:
    """The argv to run: a list command gets the overrides appended as separate arguments; a
    shell string gets them appended shell-quoted and runs under /bin/sh (the group leader)."""
    if isinstance(spec.command, str):
        return ["/bin/sh", "-c", " ".join([spec.command, *map(shlex.quote, overrides)])]
    return [*spec.command, *overrides]
