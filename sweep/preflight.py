"""Preflight: the paths a trial will open exist, checked before a sweep starts.

Kept out of loading (sweep.study_loader) so a study for another machine (the GPU study's
placeholder model path) can still be loaded, inspected and exported here.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

from objective.config import TrialConfig
from sweep.errors import UserError
from sweep.study import BuiltinObjective, StudySpec


def preflight(spec: StudySpec) -> None:
    """Check the paths a trial will open (model, data, command folder, script).

    UserError naming the key when one is missing.
    """
    source = str(spec.source_path or spec.name)
    obj = spec.objective
    if isinstance(obj, BuiltinObjective):
        try:
            check_trial_paths(obj.config)
        except UserError as exc:
            raise UserError(f"{source}: objective.config.{exc}") from None
    else:
        cwd = getattr(obj.command, "cwd", None)
        if cwd and not Path(cwd).expanduser().is_dir():
            raise UserError(f"{source}: objective.command.cwd: no such folder {cwd}")
        script = missing_script(obj.command.command, cwd)
        if script:
            raise UserError(f"{source}: objective.command.command: no such script {script}")


SCRIPT_SUFFIXES = (".py", ".sh", ".bash")


def missing_script(command: Sequence[str] | str, cwd: str | None) -> str | None:
    """The first script-like argument (`*.py`, `*.sh`) of a command that does not exist, if any.

    Without this a mistyped trainer script would launch Ray and record a failed trial per config.
    Only arguments that look like paths to scripts are checked; everything else (flags, Hydra
    overrides, `python -m module`) passes through untouched.
    """
    args = shlex.split(command) if isinstance(command, str) else list(command)
    base = Path(cwd).expanduser() if cwd else Path.cwd()
    for arg in args:
        if "=" in arg or arg.startswith("-") or not arg.endswith(SCRIPT_SUFFIXES):
            continue
        path = Path(arg).expanduser()
        if not (path if path.is_absolute() else base / path).is_file():
            return arg
    return None


def check_trial_paths(config: TrialConfig) -> None:
    """model.path and the task files of a trainer config exist (UserError `key: problem`)."""
    if config.model.path != "tiny" and not Path(config.model.path).expanduser().is_dir():
        raise UserError(f"model.path: no such model folder {config.model.path} (a local Hugging Face directory)")
    for key in ("train_path", "val_path"):
        value = getattr(config.task, key)
        if value and not Path(value).expanduser().is_file():
            raise UserError(f"task.{key}: no such file {value}")
