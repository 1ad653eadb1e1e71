"""`noisesweep trial STUDY.yaml [--set key=value ...] [--params JSON] [--seed N]`: one trial, no sweep.

Runs the study's objective once, outside Ray and Optuna, and prints the result as JSON on
stdout (progress lines go to stderr as validations arrive). The params default to the
profile-suggested config (the prior's center); `--params '{"sigma_start": 0.01, ...}'` (or
`--params @file.json`) sets any of them (sigma_end may replace sigma_ratio).

`--set` paths that start with a study key (space, budget, objective, ...) change the study;
any other path changes the trainer config the trial runs (`--set noise.sigma_start=0.01
--set steps.total=4`); for a command objective they are passed to the command as extra Hydra
overrides. STUDY.yaml may also be a trainer config written by `noisesweep export --format
yaml` (top-level `noisesweep_trainer_config: 1`), which runs as it is.
Exit code: 0 when the trial completed, 1 when it failed or was pruned.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from sweep.errors import UserError

# Metrics echoed in the progress lines besides the objective metric.
_PROGRESS_KEYS = ("train/reward_mean", "noise/sigma", "time/step_s")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "trial",
        help="run one trial of a study (or an exported trainer config) and print its result as JSON",
        description="\n\n".join(__doc__.split("\n\n")[1:]) if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("study", metavar="STUDY.yaml", help="a study file or a trainer config from `export --format yaml`")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a study or trainer-config key (repeatable), e.g. steps.total=4")
    p.add_argument("--params", metavar="JSON", help="trial params as a JSON object, or @file.json")
    p.add_argument("--seed", type=int, help="trial seed (default: the study's trial_seed)")
    p.set_defaults(func=run)


def _split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(study overrides, trainer-config overrides) by the first path component."""
    from sweep.overrides import parse_override
    from sweep.study import StudySpec

    study, config = [], []
    for o in overrides:
        head = parse_override(o)[0][0]
        (study if head in StudySpec.model_fields else config).append(o)
    return study, config


def _load_params(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    raw = text
    if text.startswith("@"):
        path = Path(text[1:])
        if not path.is_file():
            raise UserError(f"--params: no such file {path}")
        raw = path.read_text(encoding="utf-8")
    try:
        params = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"--params: invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(params, dict):
        raise UserError("--params: expected a JSON object such as {\"sigma_start\": 0.01}")
    return params


def _apply_config_overrides(config: Any, overrides: list[str], source: str) -> Any:
    from pydantic import ValidationError

    from objective.config import TrialConfig
    from sweep.overrides import apply_overrides, override_paths
    from sweep.validation_errors import format_validation_error

    if not overrides:
        return config
    data = apply_overrides(config.model_dump(), overrides)
    try:
        return TrialConfig.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source=f"{source} (trainer config)",
                                                overridden=override_paths(overrides))) from None


class _Progress:
    """report(step, metrics): one stderr line per validation."""

    def __init__(self, metric: str) -> None:
        self.metric = metric
        self.t0 = time.monotonic()

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        parts = []
        if self.metric in metrics:
            parts.append(f"{self.metric}={metrics[self.metric]:.4f}")
        for key in _PROGRESS_KEYS:
            if key in metrics and isinstance(metrics[key], (int, float)):
                parts.append(f"{key}={metrics[key]:.4g}")
        shown = " ".join(parts) or f"{len(metrics)} metrics"
        print(f"noisesweep trial: step {step}: {shown} ({time.monotonic() - self.t0:.1f} s)", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    from sweep.overrides import load_yaml_file
    from sweep.strict_json import jsonable
    from sweep.study import BuiltinObjective, task_metric
    from sweep.study_loader import build_study
    from sweep.trainer_config_doc import is_trainer_config, parse_trainer_config

    source = str(args.study)
    data = load_yaml_file(source)
    study_sets, config_sets = _split_overrides(list(args.overrides or []))
    out: dict[str, Any] = {}

    if is_trainer_config(data):
        if study_sets:
            raise UserError(f"--set {study_sets[0]}: {source} is a trainer config, not a study; set trainer keys")
        if args.params:
            raise UserError("--params needs a study file; a trainer config already holds its noise settings")
        config = parse_trainer_config(data, source=source, overrides=config_sets)
        if args.seed is not None:
            config = config.model_copy(update={"seed": int(args.seed)})
        metric = task_metric(config.task.name)
        out.update(kind="builtin", params=None, seed=config.seed)
        result = _run_builtin(config, metric)
        out["config"] = config.model_dump(mode="json")
    else:
        spec = build_study(data, source=source, study_path=Path(source), overrides=study_sets)
        from sweep.space import SearchSpace

        space = SearchSpace.from_spec(spec)
        params = space.normalize(_load_params(args.params))
        seed = int(args.seed) if args.seed is not None else spec.trial_seed
        metric = spec.metric
        out.update(study=spec.name, params=params, seed=seed)
        if isinstance(spec.objective, BuiltinObjective):
            config = _apply_config_overrides(space.to_trial_config(params, seed=seed), config_sets, source)
            out["kind"] = "builtin"
            result = _run_builtin(config, metric)
            out["config"] = config.model_dump(mode="json")
        else:
            from objective.command import run_command_trial
            from sweep.preflight import preflight

            preflight(spec)  # a missing script or folder is a one-line error, not a failed trial
            cmd = spec.objective.command
            if config_sets:  # extra Hydra overrides for the user's command, passed through as written
                cmd = cmd.model_copy(update={"extra_overrides": [*cmd.extra_overrides, *config_sets]})
            values = space.to_command_values(params, seed=seed)
            out["kind"] = "command"
            print(f"noisesweep trial: running {cmd.command!r} ...", file=sys.stderr, flush=True)
            result = run_command_trial(cmd, values, _Progress(metric))

    out.update(
        metric=metric,
        status=result.status,
        value=result.value,
        step=result.step,
        reason=result.reason,
        wall_time_s=round(float(result.wall_time_s), 3),
        applied=result.applied,
        history=result.history,
    )
    print(json.dumps(jsonable(out), indent=1))
    line = f"noisesweep trial: {result.status}"
    if result.value is not None:
        line += f", {metric}={result.value:.4f} at step {result.step}"
    if result.reason:
        line += f" ({result.reason})"
    print(line + f", {result.wall_time_s:.1f} s", file=sys.stderr, flush=True)
    return 0 if result.status == "complete" else 1


def _run_builtin(config: Any, metric: str) -> Any:
    from sweep.preflight import check_trial_paths

    check_trial_paths(config)  # a wrong path is a one-line error, not a failed trial
    try:
        from objective import run_trial
    except ImportError:  # an editable install made before objective/__init__.py existed maps a namespace
        from objective.trainer import run_trial

    print(
        f"noisesweep trial: {config.model.path} {config.task.name} {config.quant.format} {config.quant.mode}, "
        f"{config.steps.total} steps, noise {'on' if config.noise.enabled else 'off'} "
        f"(sigma {config.noise.sigma_start:g} -> {config.noise.sigma_end:g}, {config.noise.num_stages} stages)",
        file=sys.stderr,
        flush=True,
    )
    return run_trial(config, _Progress(metric))
