"""The base every study-file section (and the trainer-config document) validates with.

Kept apart from the schema and from the error rendering so both can use it without importing
each other: `StrictModel` forbids unknown keys and inf/NaN; `NestedError` carries an error found
deeper in the data by a validator, so `sweep.validation_errors` can still name the key path.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class StrictModel(BaseModel):
    """Base of every study-file section: unknown keys and inf/NaN numbers are errors."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class NestedError(ValueError):
    """A validator's error deeper in the data: `loc` below the field, then a ValidationError or text."""

    def __init__(self, loc: tuple[Any, ...], error: ValidationError | str) -> None:
        super().__init__(str(error).splitlines()[0])
        self.loc = loc
        self.error = error


def fmt_value(v: Any) -> str:
    """A value as an error message quotes it: short, floats in %g."""
    if isinstance(v, float):
        return f"{v:g}"
    text = repr(v) if isinstance(v, str) else json.dumps(v, default=str) if isinstance(v, (list, dict)) else str(v)
    return text if len(text) <= 60 else text[:57] + "..."
