"""Strict JSON for what commands print or export (best --json, export --format json, trial)."""

from __future__ import annotations

import math
from typing import Any


def jsonable(v: Any) -> Any:
    """Strict JSON: non-finite floats become null, tuples lists, numpy scalars Python ones,
    unknown objects strings (shared by best --json, export --format json and trial)."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if hasattr(v, "item"):
        return jsonable(v.item())
    return str(v)
