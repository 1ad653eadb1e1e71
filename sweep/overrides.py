"""`--set key=value` overrides on raw YAML data, applied before validation.

Paths are dotted (`space.sigma_start.low=0.01`); a numeric component indexes a list
(`seed_configs.0.alpha=1`). Values are parsed as YAML, so `[rmsnorm, linear]` is a list,
`true` a bool and `1e-5` a float (plain PyYAML would read `1e-5` as a string).
Keys the schema does not know are left for the schema validation to name (an optional section
missing from the file must still be settable); a path through a scalar is an error here.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from sweep.errors import UserError


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads `1e-5` / `5E3` as floats (YAML 1.2 style)."""


_FLOAT_RE = re.compile(
    r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""",
    re.X,
)
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag != "tag:yaml.org,2002:float"]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_RE, list("-+0123456789."))


def yaml_load(text: str) -> Any:
    """Parse YAML text with the project's loader (exponent floats without a dot are floats)."""
    return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass


def load_yaml_file(path: str | Path) -> Any:
    """Read a YAML file; a missing file or a syntax error is a one-line UserError."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{path}: no such file")
    try:
        return yaml_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise UserError(f"{path}: malformed YAML{where}: {problem}") from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split `a.b.c=value` into (["a", "b", "c"], parsed value)."""
    if "=" not in text:
        raise UserError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    parts = key.split(".")
    if not key or any(not p for p in parts):
        raise UserError(f"--set {text!r}: empty key or path component")
    try:
        value = yaml_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not valid YAML (e.g. an unbalanced bracket): keep the plain string
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a deep copy of `data` with each `key=value` override applied in order.

    Missing dict levels are created (an optional section may be absent from the file); walking
    into a scalar or past the end of a list is a UserError naming the path.
    """
    out = copy.deepcopy(data) if data is not None else {}
    if not isinstance(out, dict):
        raise UserError("--set: the document is not a mapping")
    for text in overrides:
        parts, value = parse_override(text)
        node: Any = out
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            here = ".".join(parts[: i + 1])
            if isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            elif isinstance(node, list):
                if not re.fullmatch(r"-?[0-9]+", part):
                    raise UserError(f"--set {text!r}: {here}: a list needs a numeric index")
                idx = int(part)
                if not -len(node) <= idx < len(node):
                    raise UserError(f"--set {text!r}: {here}: index out of range (list has {len(node)} items)")
                if last:
                    node[idx] = value
                else:
                    node = node[idx]
            else:
                parent = ".".join(parts[:i])
                raise UserError(f"--set {text!r}: unknown path: {parent} is a {type(node).__name__}, not a section")
    return out


def override_paths(overrides: Sequence[str]) -> list[str]:
    """The dotted keys of the overrides (used to mark validation errors as coming from --set)."""
    return [".".join(parse_override(o)[0]) for o in overrides]
