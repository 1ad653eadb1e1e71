"""The export formats: the best config handed on to the fork or to `noisesweep trial`.

`export_text(record, best, fmt)`: verl (the fork's `trainer.noise_injection` block), hydra
(one shell-safe line of overrides), yaml (a study-free trainer config `noisesweep trial`
runs), json (everything). `load_verl_export(path)` reads the verl block back.

The fork's per-layer dict is written with `objective.command.multipliers_dict`/`hydra_value`,
the same helpers the command objective uses for its overrides, so a sweep trial and an export
hand the fork identical values. Floats are written with repr(): they read back bit-exact.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import yaml

from sweep.best import BestResult
from sweep.best_text import best_json, ci_text
from sweep.errors import UserError
from sweep.export_formats import FORMATS
from sweep.record import StudyRecord
from sweep.strict_json import jsonable

NOISE_PREFIX = "trainer.noise_injection"


def _site(record: StudyRecord, best: BestResult) -> str:
    if "site" in best.params:
        return str(best.params["site"])
    return record.space.sites[0] if record.space is not None else "rmsnorm"


def verl_values(best: BestResult) -> dict[str, Any]:
    """The fork's `trainer.noise_injection` keys for the best config (multipliers as a dict)."""
    plan = best.plan
    out: dict[str, Any] = {
        "enabled": True,
        "sigma_start": plan.sigma_start,
        "sigma_end": plan.sigma_end,
        "num_stages": plan.num_stages,
    }
    if plan.multipliers is not None:
        out["use_variable_sigma"] = True
        out["layer_multipliers"] = plan.multipliers_dict()
    return out


def _yaml_scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def verl_text(record: StudyRecord, best: BestResult) -> str:
    """The fork's YAML block (seeds: ppo_trainer.yaml's noise_injection), with provenance comments."""
    values = verl_values(best)
    site = _site(record, best)
    head = [
        f"# noisesweep export: study {record.name}, trial {best.trial.number}"
        + (f" ({best.seed_config})" if best.seed_config else ""),
        f"# single run: {best.value!r}; confirmed: {ci_text(best.confirmation) or 'unconfirmed'}",
        f"# params: {json.dumps(best.params, sort_keys=True)}",
    ]
    if site != "rmsnorm":
        head.append(f"# NOTE: this config injected noise at the {site} site; the fork's noise_injection targets RMSNorm")
    lines = head + ["trainer:", "  noise_injection:"]
    for key, v in values.items():
        if key == "layer_multipliers":
            items = [f"{layer}: {m!r}" for layer, m in v.items()]
            chunks = [", ".join(items[i : i + 5]) for i in range(0, len(items), 5)]
            lines.append("    layer_multipliers: {")
            lines.extend(f"      {c}," for c in chunks)
            lines.append("    }")
        else:
            lines.append(f"    {key}: {_yaml_scalar(v)}")
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
    """`key=value` overrides on the fork's keys, keys and values as the command objective writes them.

    Keys the fork's ppo_trainer.yaml may lack (layer_multipliers, use_variable_sigma) get
    Hydra's force-add `++`, like objective.command.FORK_MULTIPLIERS_KEY: a plain override of a
    missing key fails under Hydra's struct mode.
    """
    from objective import command

    multipliers_key = getattr(command, "FORK_MULTIPLIERS_KEY", f"++{NOISE_PREFIX}.layer_multipliers")
    keys = {k.split(".")[-1]: k for k in getattr(command, "FORK_PARAM_MAP", {}).values()}
    keys["layer_multipliers"] = multipliers_key
    keys["use_variable_sigma"] = f"++{NOISE_PREFIX}.use_variable_sigma"
    keys_of: dict[str, list[str]] = {k: [v] for k, v in keys.items()}
    cmd = getattr(getattr(record.spec, "objective", None), "command", None)
    if cmd is not None:  # a command study: the keys its own trials were given
        for name, mapped in (getattr(cmd, "param_map", None) or {}).items():
            if name in keys_of:
                keys_of[name] = [mapped] if isinstance(mapped, str) else list(mapped)
        if getattr(cmd, "multipliers_key", None):
            keys_of["layer_multipliers"] = [cmd.multipliers_key]
    out = []
    for k, v in verl_values(best).items():
        for key in keys_of.get(k, [f"{NOISE_PREFIX}.{k}"]):
            out.append(f"{key}={command.hydra_value(v)}")
    return out


def hydra_text(record: StudyRecord, best: BestResult) -> str:
    """One line, shell-quoted, to append to the user's verl command."""
    return shlex.join(hydra_overrides(record, best)) + "\n"


def trainer_config(record: StudyRecord, best: BestResult) -> Any:
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
    from sweep.study import trainer_config_document

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
    doc["verl"] = {NOISE_PREFIX: {k: ({str(i): m for i, m in v.items()} if isinstance(v, dict) else v)
                                  for k, v in verl_values(best).items()}}
    doc["hydra"] = hydra_overrides(record, best)
    return json.dumps(jsonable(doc), indent=1) + "\n"


def export_text(record: StudyRecord, best: BestResult, fmt: str) -> str:
    """The export in one of FORMATS (UserError for any other)."""
    if fmt not in FORMATS:
        raise UserError(f"--format: unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
    return {"verl": verl_text, "hydra": hydra_text, "yaml": yaml_text, "json": json_text}[fmt](record, best)
