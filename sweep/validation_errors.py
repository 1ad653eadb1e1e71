"""Pydantic validation errors as one line: `<file>: <key.path>: <message>`.

Shared by study files (sweep.study_loader) and trainer-config documents
(sweep.trainer_config_doc): the user sees the key path they wrote, never pydantic's union tags.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import ValidationError

from sweep.schema_base import NestedError, fmt_value


def _error_line(e: dict[str, Any], prefix: tuple[Any, ...] = ()) -> tuple[str, str, str]:
    """(key path shown, message, full key path) of one pydantic error, descending into nested ones."""
    loc = tuple(prefix) + tuple(e.get("loc", ()))
    if not prefix and len(loc) > 1 and loc[0] == "objective" and loc[1] in ("builtin", "command"):
        loc = loc[:1] + loc[2:]  # the discriminated union's tag is not a key the user wrote
    ctx = e.get("ctx") or {}
    inner = ctx.get("error")
    if isinstance(inner, NestedError):
        if isinstance(inner.error, ValidationError):
            return _error_line(_first(inner.error.errors()), loc + inner.loc)
        path = ".".join(str(p) for p in loc + inner.loc)
        return path, inner.error, path
    if isinstance(inner, ValidationError):
        return _error_line(_first(inner.errors()), loc)
    typ = e.get("type", "")
    got = e.get("input")
    # drop tags pydantic adds for unions: 'str', 'list[...]', 'literal[...]', 'function-after[...]'
    loc = tuple(p for p in loc if not (isinstance(p, str) and ("[" in p or p in ("str", "int", "float", "bool"))))
    path = ".".join(str(p) for p in loc)
    if typ == "extra_forbidden":
        parent = ".".join(str(p) for p in loc[:-1]) or "top level"
        return "", f"unknown key {str(loc[-1])!r} at {parent}", path
    if typ == "missing":
        return path, "missing required key", path
    if typ in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<", "less_than_equal": "<="}[typ]
        bound = next(iter(ctx.values())) if ctx else "?"
        bound = f"{bound:g}" if isinstance(bound, float) else bound
        return path, f"must be {op} {bound} (got {fmt_value(got)})", path
    if typ == "union_tag_invalid":
        kind = path + (".kind" if path else "kind")
        return kind, f"unknown kind {ctx.get('tag')!r} (expected {ctx.get('expected_tags')})", kind
    if typ == "union_tag_not_found":
        kind = path + (".kind" if path else "kind")
        return kind, "missing required key (builtin or command)", kind
    if typ == "literal_error":
        return path, f"must be {ctx.get('expected')} (got {fmt_value(got)})", path
    if typ == "finite_number":
        return path, f"must be a finite number (got {fmt_value(got)})", path
    if typ == "string_pattern_mismatch":
        return path, f"must match {ctx.get('pattern')} (got {fmt_value(got)})", path
    msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")
    if typ.endswith("_type") or typ.endswith("_parsing"):
        msg = f"{msg} (got {fmt_value(got)})"
    return path, msg.splitlines()[0], path


def _first(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """The error to show: an unknown key first (a typo explains the 'missing' error beside it)."""
    return next((e for e in errors if e.get("type") == "extra_forbidden"), errors[0])


def format_validation_error(err: ValidationError, *, source: str, overridden: Sequence[str] = ()) -> str:
    """One line: `<file>: <key.path>: <message>` for the first error (+ how many more)."""
    errors = err.errors()
    path, msg, key = _error_line(_first(errors))
    line = f"{source}: {path}: {msg}" if path else f"{source}: {msg}"
    if key and any(key == o or key.startswith(o + ".") or o.startswith(key + ".") for o in overridden):
        line += " (set by --set)"
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more)"
    return line
