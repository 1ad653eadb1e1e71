"""The team's verl fork's Hydra vocabulary: which keys it reads and how a value is written for Hydra.

Shared by the command objective (a trial's overrides) and by ``noisesweep export --format
verl|hydra``, so a sweep trial and an export hand the fork identical keys and values.

Every value is written so Hydra's override grammar reads back the same value and type
(checked against hydra-core 1.3.8): floats with repr() (``1e-05``, bit-exact), ints,
``true``/``false``, ``null``, lists ``[a,b]``, and the fork's per-layer multipliers as the
dict it reads, ``{0:0.83,1:0.89,...}``, one entry per decoder layer, zeros included.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

# The fork's schedule keys (ppo_trainer.yaml: trainer.noise_injection).
FORK_PARAM_MAP: dict[str, str] = {
    "sigma_start": "trainer.noise_injection.sigma_start",
    "sigma_end": "trainer.noise_injection.sigma_end",
    "num_stages": "trainer.noise_injection.num_stages",
}
# "++" (force-add): the fork's ppo_trainer.yaml may declare `layer_multipliers: {}` or not at all;
# a plain override fails in both cases under Hydra's struct mode ("Could not override ... Key '0'
# is not in struct"), "++" works in both (checked with hydra-core 1.3.8). Hydra merges the dict
# into the default, so every layer is written, zeros included.
FORK_MULTIPLIERS_KEY = "++trainer.noise_injection.layer_multipliers"

_PLAIN_STR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_HYDRA_KEYWORDS = {"true", "false", "null", "nan", "inf"}


def _quote(text: str) -> str:
    """Single-quote a string for Hydra: escape quotes and the backslashes right before them."""
    out = []
    run = 0
    for ch in text:
        if ch == "\\":
            run += 1
            continue
        if run:
            out.append("\\" * (run * 2 if ch == "'" else run))
            run = 0
        out.append("\\'" if ch == "'" else ch)
    if run:
        out.append("\\" * (run * 2))
    return "'" + "".join(out) + "'"


def _plain(value: Any) -> Any:
    """numpy scalars/arrays and tuples to plain Python values."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return value.tolist()
    if hasattr(value, "item") and not isinstance(value, (str, bytes, list, dict, tuple)):
        return value.item()
    return value


def hydra_value(value: Any) -> str:
    """Write a Python value so Hydra's override grammar parses it back to the same value and type.

    Strings that could read as something else (``true``, ``1e3``, paths, spaces) are quoted.
    Dict keys must be ints or plain names (Hydra's grammar takes nothing else).
    """
    value = _plain(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        if _PLAIN_STR_RE.match(value) and value.lower() not in _HYDRA_KEYWORDS:
            return value
        return _quote(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            key = _plain(key)
            if isinstance(key, bool) or not (
                isinstance(key, int) or (isinstance(key, str) and _PLAIN_STR_RE.match(key) and key.lower() not in _HYDRA_KEYWORDS)
            ):
                raise ValueError(f"dict key {key!r} cannot be written as a Hydra dict key (use ints or plain names)")
            items.append(f"{key}:{hydra_value(item)}")
        return "{" + ",".join(items) + "}"
    raise ValueError(f"cannot write {type(value).__name__} value {value!r} as a Hydra override")


def multipliers_dict(multipliers: Any) -> dict[int, float]:
    """The fork's ``layer_multipliers`` dict ({layer: multiplier}) from a per-layer list or a dict."""
    multipliers = _plain(multipliers)
    if isinstance(multipliers, Mapping):
        items = [(_plain(k), _plain(v)) for k, v in multipliers.items()]
    elif isinstance(multipliers, (list, tuple)):
        items = list(enumerate(multipliers))
    else:
        raise ValueError(f"multipliers: expected a list (one per layer) or a dict, got {type(multipliers).__name__}")
    out: dict[int, float] = {}
    for layer, mult in items:
        if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
            raise ValueError(f"multipliers: layer index {layer!r} is not a non-negative int")
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) or not math.isfinite(mult) or mult < 0:
            raise ValueError(f"multipliers: layer {layer} has invalid multiplier {mult!r} (finite, >= 0)")
        out[layer] = float(mult)
    return dict(sorted(out.items()))
