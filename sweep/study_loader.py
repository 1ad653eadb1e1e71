"""Loading a study file: read, override (`--set`), validate, load and check its SRDD profile.

Each problem is one `sweep.errors.UserError` line naming the file and the key path, e.g.
``studies/x.yaml: space.sigma_start.low: must be > 0 (got -1)``. The schema itself is
sweep.study; the search space (sweep.space) is built once here to prove the zones, seed
configs and the prior's center fit the profile.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from sweep.errors import UserError
from sweep.overrides import apply_overrides, load_yaml_file, override_paths
from sweep.space import SearchSpace
from sweep.study import BuiltinObjective, StudySpec
from sweep.trainer_config_doc import is_trainer_config
from sweep.validation_errors import format_validation_error

if TYPE_CHECKING:
    from quant.srdd import SrddProfile


def resolve_storage(spec: StudySpec, cli_url: str | None = None) -> str:
    """The storage URL to use: --storage flag > $NOISESWEEP_STORAGE > the study file's value.

    One rule for every command: this is `sweep.storage.resolve_url` with the spec's URL.
    """
    from sweep.storage import resolve_url

    return resolve_url(cli_url, spec.storage)


def _model_num_layers(spec: StudySpec) -> int | None:
    """Decoder-layer count of the builtin objective's model, when it can be read locally."""
    obj = spec.objective
    if not isinstance(obj, BuiltinObjective):
        return None
    path = obj.config.model.path
    if path == "tiny":
        try:
            from objective.tiny import TINY_CHECKPOINT_DIR
        except ImportError:
            return None
        cfg = Path(TINY_CHECKPOINT_DIR) / "config.json"
    else:
        cfg = Path(path).expanduser() / "config.json"
    if not cfg.is_file():
        return None
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
        return int(data.get("num_hidden_layers") or data.get("text_config", {}).get("num_hidden_layers"))
    except (ValueError, TypeError, OSError):
        return None


def check_profile(spec: StudySpec, profile: SrddProfile, *, source: str) -> None:
    """The profile must fit the study: zones with layers, known zone names, the model's depth,
    the quant format."""
    hollow = [z.name for z in profile.zones if not z.layers]
    if hollow:
        raise UserError(f"{source}: profile: {spec.profile}: zone {hollow[0]!r} has no layers")
    names = set(profile.zone_names())
    if isinstance(spec.space.zones, list):
        for choice in spec.space.zones:
            missing = [n for n in choice.split("+") if n != "all" and n not in names]
            if missing:
                raise UserError(
                    f"{source}: space.zones: zone {missing[0]!r} is not in the profile "
                    f"(profile zones: {', '.join(sorted(names)) or 'none'})"
                )
    for i, seed in enumerate(spec.seed_config_list()):
        missing = [n for n in seed.zones.split("+") if n not in ("all", "worst") and n not in names]
        if missing:
            raise UserError(
                f"{source}: seed_configs.{i}.zones: zone {missing[0]!r} is not in the profile "
                f"(profile zones: {', '.join(sorted(names)) or 'none'})"
            )
    n_layers = _model_num_layers(spec)
    if n_layers is not None and profile.num_layers != n_layers:
        raise UserError(
            f"{source}: profile: {spec.profile} has {profile.num_layers} layers but the model has {n_layers}"
        )
    obj = spec.objective
    if isinstance(obj, BuiltinObjective) and obj.config.quant.format not in ("none", profile.format):
        raise UserError(
            f"{source}: profile: {spec.profile} was measured for {profile.format}, "
            f"but objective.config.quant.format is {obj.config.quant.format}"
        )


def build_study(
    data: Any, *, source: str, study_path: Path | None = None, overrides: Sequence[str] = ()
) -> StudySpec:
    """Validate raw study data (already YAML-parsed) and load its profile.

    `study_path` is the file the data came from: relative profile paths resolve against its folder.
    """
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of study settings, got {type(data).__name__}")
    if overrides:
        data = apply_overrides(data, overrides)
    try:
        spec = StudySpec.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source=source, overridden=override_paths(overrides))) from None
    if study_path is not None:
        spec._source = Path(study_path).resolve()
    from quant.errors import ProfileError
    from quant.srdd import load_profile

    ppath = spec.profile_path
    if not ppath.is_file():
        raise UserError(f"{source}: profile: no such file {spec.profile} (looked at {ppath})")
    try:
        spec._profile = load_profile(ppath)
    except ProfileError as exc:
        raise UserError(f"{source}: profile: {exc}") from None
    check_profile(spec, spec._profile, source=source)
    try:  # zones choices, seed configs and the prior's center must fit the profile too
        SearchSpace.from_spec(spec, spec._profile).prior_params()
    except UserError as exc:
        raise UserError(f"{source}: {exc}") from None
    return spec


def load_study(path: str | os.PathLike[str], overrides: Sequence[str] = ()) -> StudySpec:
    """Read, override (`--set key=value`), validate a study file and load its SRDD profile."""
    source = str(path)
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{source}: no such study file")
    data = load_yaml_file(p)
    if is_trainer_config(data):
        raise UserError(f"{source}: this is a trainer config (run it with noisesweep trial), not a study file")
    return build_study(data, source=source, study_path=p, overrides=overrides)
