"""The trainer-config document: what `noisesweep export --format yaml` writes and `noisesweep trial` reads.

A mapping whose top-level key `noisesweep_trainer_config: 1` marks it, the TrialConfig
sections beside it and an optional `source:` block (provenance, ignored).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from objective.config import TrialConfig
from sweep.errors import UserError
from sweep.overrides import apply_overrides, override_paths
from sweep.validation_errors import format_validation_error

TRAINER_CONFIG_MARKER = "noisesweep_trainer_config"
TRAINER_CONFIG_VERSION = 1


def is_trainer_config(data: Any) -> bool:
    """True for a document written by `noisesweep export --format yaml`."""
    return isinstance(data, dict) and TRAINER_CONFIG_MARKER in data


def trainer_config_document(config: TrialConfig, source: dict[str, Any] | None = None) -> dict[str, Any]:
    """The export format `noisesweep trial` reads back: marker, optional provenance, the config."""
    doc: dict[str, Any] = {TRAINER_CONFIG_MARKER: TRAINER_CONFIG_VERSION}
    if source:
        doc["source"] = source
    doc.update(config.model_dump(mode="json"))
    return doc


def parse_trainer_config(data: dict[str, Any], *, source: str, overrides: Sequence[str] = ()) -> TrialConfig:
    """Validate a trainer-config document (after `--set` overrides) into a TrialConfig."""
    body = dict(data)
    version = body.pop(TRAINER_CONFIG_MARKER, None)
    if version != TRAINER_CONFIG_VERSION:
        raise UserError(f"{source}: {TRAINER_CONFIG_MARKER}: unsupported version {version!r} (expected 1)")
    body.pop("source", None)
    if overrides:
        body = apply_overrides(body, overrides)
    try:
        return TrialConfig.model_validate(body)
    except ValidationError as err:
        raise UserError(format_validation_error(err, source=source, overridden=override_paths(overrides))) from None
