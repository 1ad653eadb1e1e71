"""The SRDD profile and its file: a versioned, strict-JSON record, written atomically, read strictly.

Why one module for both directions: the writer and the parser must agree on every key; a
profile that was saved must load, and a shipped file must re-save byte for byte.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from quant.errors import ProfileError
from quant.format_names import KNOWN_FORMATS
from quant.srdd.metrics import METRIC_KEYS, SITES, LayerMetrics, SiteMetrics
from quant.srdd.zones import Zone

SCHEMA = "noisesweep.srdd"
VERSION = 1


@dataclass
class SrddProfile:
    """Per-layer quantization error of one model under one format, with zones and provenance."""

    model: str
    format: str
    num_layers: int
    layers: list[LayerMetrics]
    zones: list[Zone]
    source: dict[str, Any] = field(default_factory=dict)

    def errors(self, site: str = "output") -> list[float]:
        """Relative error per layer at `site` (the multipliers' input); ProfileError if missing."""
        out = []
        for lm in self.layers:
            sm = lm.site(site)
            if sm is None or sm.rel_error is None:
                raise ProfileError(f"SRDD profile of {self.model}: layer {lm.index} has no {site} relative error")
            out.append(float(sm.rel_error))
        return out

    def zone_of(self, layer: int) -> str | None:
        """Name of the zone holding `layer`, or None."""
        for z in self.zones:
            if layer in z.layers:
                return z.name
        return None

    def zone_names(self) -> list[str]:
        """Zone names in file order (what a study's `zones` parameter combines)."""
        return [z.name for z in self.zones]

    def to_dict(self) -> dict[str, Any]:
        """The versioned file structure (metrics of unmeasured sites left out)."""
        layers = []
        for lm in self.layers:
            entry: dict[str, Any] = {"index": lm.index}
            for site in SITES:
                sm = lm.site(site)
                if sm is not None:
                    entry[site] = _clean(sm.to_dict())
            if lm.projections:
                entry["projections"] = {
                    site: {name: _clean(sm.to_dict()) for name, sm in per.items()}
                    for site, per in lm.projections.items()
                }
            if lm.provenance:
                entry["provenance"] = dict(lm.provenance)
            layers.append(entry)
        return {
            "schema": SCHEMA,
            "version": VERSION,
            "model": self.model,
            "format": self.format,
            "num_layers": self.num_layers,
            "layers": layers,
            "zones": [{"name": z.name, "layers": list(z.layers)} for z in self.zones],
            "source": self.source,
        }

    def to_json(self) -> str:
        """The file's text (strict JSON: no NaN/Infinity)."""
        return json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"

    @classmethod
    def from_json(cls, text: str, *, origin: str = "SRDD profile") -> SrddProfile:
        """Parse and validate profile JSON text (e.g. a study's stored copy)."""
        return _parse(text, origin)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write atomically: a temp file in the same folder, then rename over the target."""
        path = Path(path)
        text = self.to_json()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a profile is shared like any file
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def _umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _clean(d: Mapping[str, float | None]) -> dict[str, float | None]:
    """Non-finite floats become None so the file stays strict JSON."""
    return {k: (None if v is None or not math.isfinite(v) else float(v)) for k, v in d.items()}


def load_profile(path: str | os.PathLike[str]) -> SrddProfile:
    """Read and validate a profile file; any problem is a one-line ProfileError naming the file."""
    p = Path(path)
    if not p.exists():
        raise ProfileError(f"SRDD profile {p}: file not found")
    if not p.is_file():
        raise ProfileError(f"SRDD profile {p}: not a file")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ProfileError(f"SRDD profile {p}: cannot read ({type(exc).__name__})") from None
    return _parse(text, f"SRDD profile {p}")


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} (metrics must be finite numbers or null)")


def _parse(text: str, origin: str) -> SrddProfile:
    def bad(msg: str) -> ProfileError:
        return ProfileError(f"{origin}: {msg}")

    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise bad(f"invalid JSON at line {exc.lineno} column {exc.colno} ({exc.msg})") from None
    except ValueError as exc:
        raise bad(str(exc)) from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise bad(f"not an SRDD profile (expected \"schema\": \"{SCHEMA}\")")
    version = data.get("version")
    if version != VERSION:
        raise bad(f"unsupported version {version!r} (this noisesweep reads version {VERSION})")
    for key in ("model", "format", "num_layers", "layers", "zones"):
        if key not in data:
            raise bad(f"missing key {key!r}")
    model, fmt, n = data["model"], data["format"], data["num_layers"]
    if not isinstance(model, str) or not model:
        raise bad("'model' must be a non-empty string")
    if fmt not in KNOWN_FORMATS:
        raise bad(f"unknown format {fmt!r}; known formats: {', '.join(KNOWN_FORMATS)}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise bad(f"'num_layers' must be a positive integer, got {n!r}")
    raw_layers = data["layers"]
    if not isinstance(raw_layers, list):
        raise bad("'layers' must be a list")
    if len(raw_layers) != n:
        raise bad(f"{len(raw_layers)} layer entries but num_layers is {n}")
    layers = [_parse_layer(entry, i, bad) for i, entry in enumerate(raw_layers)]
    raw_zones = data["zones"]
    if not isinstance(raw_zones, list):
        raise bad("'zones' must be a list")
    zones: list[Zone] = []
    seen: dict[int, str] = {}
    for zi, z in enumerate(raw_zones):
        if not isinstance(z, dict) or not isinstance(z.get("name"), str) or not isinstance(z.get("layers"), list):
            raise bad(f"zones[{zi}] must be an object with 'name' (string) and 'layers' (list)")
        name = z["name"]
        if not name or "+" in name or name == "all":
            raise bad(f"zones[{zi}]: invalid zone name {name!r}")
        if name in [q.name for q in zones]:
            raise bad(f"zones[{zi}]: duplicate zone name {name!r}")
        for layer in z["layers"]:
            if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < n:
                raise bad(f"zone {name!r} references layer {layer!r}, outside 0..{n - 1}")
            if layer in seen:
                raise bad(f"layer {layer} is in zones {seen[layer]!r} and {name!r}")
            seen[layer] = name
        zones.append(Zone(name=name, layers=sorted(z["layers"])))
    source = data.get("source", {})
    if not isinstance(source, dict):
        raise bad("'source' must be an object")
    return SrddProfile(model=model, format=fmt, num_layers=n, layers=layers, zones=zones, source=source)


def _parse_site(raw: object, where: str, bad: Callable[[str], ProfileError]) -> SiteMetrics:
    if not isinstance(raw, dict):
        raise bad(f"{where} must be an object")
    vals: dict[str, float | None] = {}
    for key in METRIC_KEYS:
        v = raw.get(key)
        if v is None:
            vals[key] = None
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise bad(f"{where}.{key} must be a finite number, got {v!r}")
        if key != "sqnr_db" and v < 0:
            raise bad(f"{where}.{key} must be >= 0, got {v!r}")
        if key in ("deadzone", "saturation") and v > 1:
            raise bad(f"{where}.{key} is a fraction and must be <= 1, got {v!r}")
        vals[key] = float(v)
    return SiteMetrics(**vals)


def _parse_layer(entry: object, i: int, bad: Callable[[str], ProfileError]) -> LayerMetrics:
    where = f"layers[{i}]"
    if not isinstance(entry, dict):
        raise bad(f"{where} must be an object")
    if entry.get("index") != i:
        raise bad(f"{where}.index must be {i}, got {entry.get('index')!r}")
    if "output" not in entry:
        raise bad(f"{where}: missing key 'output'")
    out = _parse_site(entry["output"], f"{where}.output", bad)
    if out.rel_error is None:
        raise bad(f"{where}.output.rel_error is missing")
    sites = {s: _parse_site(entry[s], f"{where}.{s}", bad) if entry.get(s) is not None else None for s in SITES[1:]}
    projections: dict[str, dict[str, SiteMetrics]] = {}
    raw_proj = entry.get("projections", {})
    if not isinstance(raw_proj, dict):
        raise bad(f"{where}.projections must be an object")
    for site, per in raw_proj.items():
        if site not in SITES or not isinstance(per, dict):
            raise bad(f"{where}.projections: unknown site {site!r}")
        projections[site] = {k: _parse_site(v, f"{where}.projections.{site}.{k}", bad) for k, v in per.items()}
    prov = entry.get("provenance", {})
    if not isinstance(prov, dict) or not all(isinstance(v, str) for v in prov.values()):
        raise bad(f"{where}.provenance must map names to strings")
    return LayerMetrics(index=i, output=out, projections=projections, provenance=dict(prov), **sites)


def validate_for_model(profile: SrddProfile, num_layers: int, *, fmt: str | None = None) -> None:
    """Refuse a profile made for another depth (or format): its multipliers would be misaligned."""
    if profile.num_layers != num_layers:
        raise ProfileError(
            f"SRDD profile of {profile.model} has {profile.num_layers} layers, but the model has {num_layers}"
        )
    if fmt is not None and profile.format != fmt:
        raise ProfileError(f"SRDD profile of {profile.model} was measured for {profile.format}, not {fmt}")
