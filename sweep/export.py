"""The export formats: the best config handed on to the fork or to `noisesweep trial`.

`export_text(record, best, fmt)`: verl (the fork's `trainer.noise_injection` block), hydra
(one shell-safe line of overrides), yaml (a study-free trainer config `noisesweep trial`
runs), json (everything). `load_verl_export(path)` reads the verl block back.

The fork's keys come from objective/command/verl_fork.py (`noise_block`, and `build_overrides`
for the hydra line), the code that writes a sweep trial's overrides, so a trial and an export
hand the fork identical keys and values. Floats are written with repr(): they read back bit-exact.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from sweep.best import BestResult
from sweep.best_text import best_json, ci_text
from sweep.errors import UserError
from sweep.export_formats import FORMATS
from sweep.record import StudyRecord
from sweep.strict_json import jsonable

if TYPE_CHECKING:
    from objective.config import TrialConfig

NOISE_PREFIX = "trainer.noise_injection"
EXPORT_NOISE_KEYS = "verl-fork-patched"  # a builtin study's export: every key, multipliers included


def _command_spec(record: StudyRecord) -> Any | None:
    """The study's CommandSpec (a command study), else None."""
    return getattr(getattr(record.spec, "objective", None), "command", None)


def verl_values(best: BestResult) -> dict[str, Any]:
    """The fork's `trainer.noise_injection` mapping for the best config (objective.command.verl_fork.noise_block)."""
    from objective.command import noise_block

    return noise_block(best.plan)


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return json.dumps(v)  # a JSON list is a YAML flow sequence
    return str(v)


def _yaml_mapping(values: dict[str, Any], indent: int) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    for key, v in values.items():
        if key == "layer_multipliers":
            items = [f"{layer}: {m!r}" for layer, m in v.items()]
            chunks = [", ".join(items[i : i + 5]) for i in range(0, len(items), 5)]
            lines.append(f"{pad}layer_multipliers: {{")
            lines.extend(f"{pad}  {c}," for c in chunks)
            lines.append(f"{pad}}}")
        elif isinstance(v, dict):
            lines.append(f"{pad}{key}:")
            lines.extend(_yaml_mapping(v, indent + 2))
        else:
            lines.append(f"{pad}{key}: {_yaml_scalar(v)}")
    return lines


def verl_text(record: StudyRecord, best: BestResult) -> str:
    """The fork's ppo_trainer.yaml `trainer.noise_injection` block, with provenance comments."""
    values = verl_values(best)
    head = [
        f"# noisesweep export: study {record.name}, trial {best.trial.number}"
        + (f" ({best.seed_config})" if best.seed_config else ""),
        f"# single run: {best.value!r}; confirmed: {ci_text(best.confirmation) or 'unconfirmed'}",
        f"# params: {json.dumps(best.params, sort_keys=True)}",
        "# keys as objective/command/verl_fork.py writes a trial's overrides (docs/verl-fork.md)",
    ]
    if "layer_sigma_config" in values:
        head.append("# layer_sigma_config reaches the noise code only in a fork with the two-line fix of "
                    "docs/verl-fork.md; the fork as it is drops it and applies uniform noise")
    if best.plan.site == "linear":
        head.append("# NOTE: the fork's linear noise is additive on the weights; the built-in trainer's is on the outputs")
    lines = head + ["trainer:", "  noise_injection:", *_yaml_mapping(values, 4)]
    return "\n".join(lines) + "\n"


def load_verl_export(path: str | Path) -> dict[str, Any]:
    """Read a verl export back: the `trainer.noise_injection` mapping (layer keys as ints)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such verl export")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ValueError(f"{p}: not valid YAML ({str(exc).splitlines()[0]})") from None
    try:
        block = data["trainer"]["noise_injection"]
    except (TypeError, KeyError):
        raise ValueError(f"{p}: no trainer.noise_injection block") from None
    if not isinstance(block, dict):
        raise ValueError(f"{p}: trainer.noise_injection is not a mapping")
    return dict(block)


def hydra_overrides(record: StudyRecord, best: BestResult) -> list[str]:
    """The noise overrides a trial of this config got, built by the command objective's own code.

    A command study: its own spec's noise keys (`noise_keys`, or its param_map/multipliers_key
    for a trainer of the user's own), seed and other settings left out. Any other study: the
    fork's keys (objective.command.verl_fork, multipliers under layer_sigma_config).
    """
    from objective.command import CommandSpec, build_overrides
    from objective.command.verl_fork import PLAN_VALUE_NAMES, UnreachableNoise

    plan = best.plan
    values: dict[str, Any] = {**plan.to_dict(), "sigma_ratio": plan.sigma_ratio}
    cmd = _command_spec(record)
    if isinstance(cmd, CommandSpec):
        noise_names = {*PLAN_VALUE_NAMES, "sigma_ratio"}
        spec = cmd.model_copy(update={
            "extra_overrides": [],
            "param_map": {k: v for k, v in cmd.param_map.items() if k in noise_names},
        })
    else:
        spec = CommandSpec(command=["verl"], noise_keys=EXPORT_NOISE_KEYS)
    try:
        return build_overrides(spec, values)
    except UnreachableNoise as exc:
        raise UserError(f"trial {best.trial.number}: {exc}") from None


def hydra_text(record: StudyRecord, best: BestResult) -> str:
    """One line, shell-quoted, to append to the user's verl command."""
    return shlex.join(hydra_overrides(record, best)) + "\n"


def trainer_config(record: StudyRecord, best: BestResult) -> TrialConfig:
    """The TrialConfig the best trial ran (recorded multipliers and seed), study-free."""
    from sweep.study import BuiltinObjective

    space = record.require_space("--format yaml")
    if not isinstance(record.spec.objective, BuiltinObjective):
        raise UserError(
            f"study {record.name!r} runs a command objective; --format yaml writes a built-in trainer config "
            "(use --format verl or hydra for the fork)"
        )
    seed = best.seed if best.seed is not None else int(record.spec.trial_seed)
    plan = best.plan
    if plan.multipliers is not None and len(plan.multipliers) != space.num_layers:
        plan = space.plan(best.params)  # recorded for another profile: the study's own
    config = space.to_trial_config(plan, seed=seed)
    return type(config).model_validate(config.model_dump())


def yaml_text(record: StudyRecord, best: BestResult) -> str:
    """The trainer-config document `noisesweep trial` runs again, with a provenance block."""
    from sweep.trainer_config_doc import trainer_config_document

    config = trainer_config(record, best)
    source = {
        "study": record.name,
        "trial": best.trial.number,
        "value": best.value,
        "confirmed_mean": best.confirmation.get("mean") if best.confirmation else None,
        "params": best.params,
    }
    if best.seed_config:
        source["seed_config"] = best.seed_config
    doc = trainer_config_document(config, source=source)
    header = f"# noisesweep export: study {record.name}, trial {best.trial.number}; run it again with `noisesweep trial THIS.yaml`\n"
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=None)


def json_text(record: StudyRecord, best: BestResult) -> str:
    """Everything about the best config plus its verl block and hydra overrides, as strict JSON."""
    doc = best_json(record, best)
    doc["verl"] = {NOISE_PREFIX: jsonable(verl_values(best))}  # layer keys become strings
    doc["hydra"] = hydra_overrides(record, best)
    return json.dumps(jsonable(doc), indent=1) + "\n"


def export_text(record: StudyRecord, best: BestResult, fmt: str) -> str:
    """The export in one of FORMATS (UserError for any other)."""
    if fmt not in FORMATS:
        raise UserError(f"--format: unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    return {"verl": verl_text, "hydra": hydra_text, "yaml": yaml_text, "json": json_text}[fmt](record, best)
