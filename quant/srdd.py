"""SRDD profiles: per-decoder-layer quantization error of a model, its zones, and the JSON file.

Why: the sweep's search space (which layers get noise, and how much) is seeded from how badly
each layer suffers under the 4-bit format. The user's team measured only the decoder-layer
outputs; this scan measures three sites per layer:

- ``output``: the decoder layer's output activations (what the team's tool measured),
- ``linear_input``: the inputs of the layer's linear layers (what W4A4 actually quantizes),
- ``weight``: the layer's linear weights (what W4A16 and W4A4 quantize).

Per site: relative error ||x - q(x)|| / ||x||, deadzone ratio (share of non-zero values that
quantize to 0), saturation ratio (share of values whose magnitude exceeds the block's largest
representable value, 6 x the effective block scale, so they are clipped), and SQNR in dB
(10 log10 of signal power over error power, i.e. -20 log10 of the relative error). All sums run
over every token of every batch, so the metrics are token-weighted, not averages of averages.
The scan runs the *unquantized* model (clean activations): it measures what quantizing each
site would cost, not the compounding error of a quantized forward pass.

Ratios are stored as fractions (0.4265), shown as percent by `format_table`.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from quant.errors import ProfileError
from quant.formats import (
    BLOCK_SIZES,
    E2M1_MAX,
    KNOWN_FORMATS,
    blocks_of,
    e8m0_value,
    fake_quantize,
    mx_scale_exponent,
    nv_block_factors,
)
from quant.model import find_decoder_layers

SCHEMA = "noisesweep.srdd"
VERSION = 1
SITES = ("output", "linear_input", "weight")
METRIC_KEYS = ("rel_error", "deadzone", "saturation", "sqnr_db")
DEFAULT_NUM_SEGMENTS = 5
TIER_NAMES = {1: ("medium",), 2: ("low", "high"), 3: ("low", "medium", "high")}
_LORA_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")


# --------------------------------------------------------------------------- block scales
def block_max(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """Largest magnitude each element's block can represent (6 x effective scale), shape of x.

    Uses the scale rules of quant.formats itself (MXFP4: `mx_scale_exponent`/`e8m0_value`;
    NVFP4: `nv_block_factors`, no lower clamp), so the saturation count cannot drift from what
    `fake_quantize` does. An all-zero block, or an NVFP4 block whose scale rounds to 0, gives 0;
    a non-finite block (NVFP4: a non-finite tensor) gives NaN.
    """
    if fmt not in KNOWN_FORMATS:
        raise ValueError(f"unknown quantization format {fmt!r}; known formats: {', '.join(KNOWN_FORMATS)}")
    n = x.shape[-1]
    xb = blocks_of(x.float(), BLOCK_SIZES[fmt])
    amax = xb.abs().amax(dim=-1, keepdim=True)
    if fmt == "mxfp4":
        bmax = torch.where(amax > 0, e8m0_value(mx_scale_exponent(amax)) * E2M1_MAX, 0.0)
    else:
        tensor_amax = amax.amax() if amax.numel() else amax.new_zeros(())
        bmax = nv_block_factors(amax, tensor_amax)[1] * E2M1_MAX
    bmax = torch.where(torch.isfinite(amax), bmax, float("nan"))
    return bmax.expand_as(xb).reshape(*xb.shape[:-2], -1)[..., :n]


# --------------------------------------------------------------------------- metrics
@dataclass
class SiteMetrics:
    """Quantization metrics of one site of one layer; None = not measured."""

    rel_error: float | None = None
    deadzone: float | None = None
    saturation: float | None = None
    sqnr_db: float | None = None

    def to_dict(self) -> dict[str, float | None]:
        """The four metrics by name (None where not measured)."""
        return {k: getattr(self, k) for k in METRIC_KEYS}


class MetricAccumulator:
    """Running sums over many tensors, so the metrics are over all values seen (float64 sums)."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.signal = 0.0
        self.noise = 0.0
        self.nonzero = 0
        self.dead = 0
        self.saturated = 0
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        """Add the values of x (blocks along its last axis, as the format quantizes them)."""
        if x.numel() == 0:
            return
        xf = x.detach().float()
        q = fake_quantize(xf, self.fmt)
        d = (xf - q).double()
        self.signal += float(xf.double().square().sum())
        self.noise += float(d.square().sum())
        nz = xf != 0
        self.nonzero += int(nz.sum())
        self.dead += int((nz & (q == 0)).sum())
        bmax = block_max(xf, self.fmt)
        self.saturated += int(((bmax > 0) & (xf.abs() > bmax)).sum())
        self.count += xf.numel()

    def merge(self, other: MetricAccumulator) -> None:
        """Add another accumulator's sums (a layer's aggregate over its projections)."""
        for k in ("signal", "noise", "nonzero", "dead", "saturated", "count"):
            setattr(self, k, getattr(self, k) + getattr(other, k))

    def result(self) -> SiteMetrics:
        """Metrics so far; an all-zero signal has error 0 and no SQNR (it would be infinite)."""
        if self.count == 0:
            return SiteMetrics()
        rel = math.sqrt(self.noise / self.signal) if self.signal > 0 else 0.0
        sqnr = 10.0 * math.log10(self.signal / self.noise) if self.noise > 0 and self.signal > 0 else None
        return SiteMetrics(
            rel_error=rel,
            deadzone=self.dead / self.nonzero if self.nonzero else 0.0,
            saturation=self.saturated / self.count,
            sqnr_db=sqnr,
        )


def site_metrics(x: torch.Tensor, fmt: str) -> SiteMetrics:
    """Metrics of quantizing one tensor along its last axis."""
    acc = MetricAccumulator(fmt)
    acc.update(x)
    return acc.result()


@dataclass
class LayerMetrics:
    """One decoder layer: metrics per site, per-projection detail, and where each value came from.

    ``projections`` maps a site (``linear_input``/``weight``) to {projection name: metrics};
    ``provenance`` maps "site.metric" to "measured" or a note on how the value was derived.
    """

    index: int
    output: SiteMetrics
    linear_input: SiteMetrics | None = None
    weight: SiteMetrics | None = None
    projections: dict[str, dict[str, SiteMetrics]] = field(default_factory=dict)
    provenance: dict[str, str] = field(default_factory=dict)

    def site(self, name: str) -> SiteMetrics | None:
        """Metrics of one site (`output`, `linear_input`, `weight`); None where not measured."""
        if name not in SITES:
            raise ValueError(f"unknown SRDD site {name!r}; known sites: {', '.join(SITES)}")
        return getattr(self, name)


@dataclass
class Zone:
    """A named group of decoder layers (several contiguous runs are fine)."""

    name: str
    layers: list[int]


# --------------------------------------------------------------------------- zones
def _optimal_partition(n: int, parts: int, cost: Callable[[int, int], float]) -> list[tuple[int, int]]:
    """Split items 0..n-1 into `parts` non-empty contiguous runs minimizing the summed cost(i, j).

    Why one function: layers into runs and runs into tiers are the same exact DP (O(parts n^2)).
    cost(i, j) prices the half-open run i..j-1. Ties go to the earliest split, so the result is
    deterministic. Returns the half-open (i, j) runs in order.
    """
    inf = float("inf")
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    back = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for p in range(1, parts + 1):
        for j in range(p, n + 1):
            for i in range(p - 1, j):
                c = best[p - 1][i] + cost(i, j)
                if c < best[p][j] - 1e-12:
                    best[p][j] = c
                    back[p][j] = i
    out: list[tuple[int, int]] = []
    j = n
    for p in range(parts, 0, -1):
        i = back[p][j]
        out.append((i, j))
        j = i
    return out[::-1]


def segment_layers(errors: Sequence[float], num_segments: int) -> list[tuple[int, int]]:
    """Optimal split of the layers into contiguous runs minimizing within-run squared error.

    Dynamic programming over split points (O(k n^2)); ties go to the earliest split, so the
    result is deterministic. Returns inclusive (start, end) pairs.
    """
    n = len(errors)
    if n == 0:
        raise ValueError("cannot segment an empty error list")
    k = max(1, min(int(num_segments), n))
    cs = [0.0]
    cs2 = [0.0]
    for e in errors:
        cs.append(cs[-1] + float(e))
        cs2.append(cs2[-1] + float(e) ** 2)

    def cost(i: int, j: int) -> float:  # layers i..j-1
        s = cs[j] - cs[i]
        return max(0.0, cs2[j] - cs2[i] - s * s / (j - i))

    return [(i, j - 1) for i, j in _optimal_partition(n, k, cost)]


def tier_segments(
    segments: Sequence[tuple[int, int]], means: Sequence[float], num_tiers: int = 3
) -> list[Zone]:
    """Group runs into tiers (low < medium < high) by their mean error.

    The runs, sorted by mean, are cut into ``num_tiers`` consecutive groups minimizing the
    layer-weighted squared deviation of run means from their group mean (exact DP), so two runs
    of similar error on either side of the network land in one tier.
    """
    if len(segments) != len(means):
        raise ValueError("tier_segments: one mean per segment is needed")
    t = max(1, min(int(num_tiers), len(segments), 3))
    order = sorted(range(len(segments)), key=lambda s: (float(means[s]), segments[s][0]))
    w = [segments[s][1] - segments[s][0] + 1 for s in order]
    m = [float(means[s]) for s in order]
    n = len(order)

    def cost(i: int, j: int) -> float:  # sorted runs i..j-1
        tw = sum(w[i:j])
        mu = sum(w[a] * m[a] for a in range(i, j)) / tw
        return sum(w[a] * (m[a] - mu) ** 2 for a in range(i, j))

    groups = [order[i:j] for i, j in _optimal_partition(n, t, cost)]
    zones = []
    for name, grp in zip(TIER_NAMES[t], groups, strict=True):
        layers = sorted(layer for s in grp for layer in range(segments[s][0], segments[s][1] + 1))
        zones.append(Zone(name=name, layers=layers))
    return zones


def compute_zones(
    errors: Sequence[float],
    *,
    num_segments: int | None = None,
    segments: Sequence[tuple[int, int]] | None = None,
    segment_means: Sequence[float] | None = None,
) -> list[Zone]:
    """Zones of a profile: contiguous runs by error (DP), then up to 3 tiers by run mean.

    ``segments``/``segment_means`` override the DP runs and their means (e.g. the zones a team
    reported by hand, with the means it measured).
    """
    if segments is None:
        segments = segment_layers(errors, num_segments or min(DEFAULT_NUM_SEGMENTS, len(errors)))
    if segment_means is None:
        segment_means = [sum(errors[a : b + 1]) / (b - a + 1) for a, b in segments]
    return tier_segments(segments, segment_means, 3)


def layer_runs(layers: Iterable[int]) -> str:
    """'0-3,26-27' for [0, 1, 2, 3, 26, 27]: how the zones read in tables and logs."""
    idx = sorted(set(layers))
    parts: list[str] = []
    start = prev = None
    for i in idx:
        if start is None:
            start = prev = i
        elif i == prev + 1:
            prev = i
        else:
            parts.append(f"{start}-{prev}" if start != prev else f"{start}")
            start = prev = i
    if start is not None:
        parts.append(f"{start}-{prev}" if start != prev else f"{start}")
    return ",".join(parts)


# --------------------------------------------------------------------------- the profile
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


# --------------------------------------------------------------------------- loading
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


def _parse_site(raw: Any, where: str, bad: Any) -> SiteMetrics:
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


def _parse_layer(entry: Any, i: int, bad: Any) -> LayerMetrics:
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


# --------------------------------------------------------------------------- scanning
def layer_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    """The base nn.Linear modules of one decoder layer, named without peft's `.base_layer`.

    LoRA adapters (lora_A/lora_B) are skipped; peft's wrapper is not an nn.Linear, so only its
    base_layer is taken and no projection is counted twice.
    """
    out: dict[str, nn.Linear] = {}
    for name, mod in layer.named_modules():
        if not isinstance(mod, nn.Linear):
            continue
        parts = name.split(".")
        if any(p in _LORA_PARTS for p in parts):
            continue
        clean = ".".join(p for p in parts if p != "base_layer")
        out[clean] = mod
    return out


def _as_inputs(batch: Any) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    if isinstance(batch, torch.Tensor):
        ids = batch if batch.dim() == 2 else batch.unsqueeze(0)
        return {"input_ids": ids}, None
    if isinstance(batch, Mapping) and "input_ids" in batch:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask")
        inputs = {"input_ids": ids}
        if mask is not None:
            inputs["attention_mask"] = mask
        return inputs, mask
    raise ValueError("each SRDD batch must be a LongTensor of token ids or a dict with 'input_ids'")


def scan_model(model: nn.Module, batches: Iterable[Any], fmt: str, *, model_name: str) -> SrddProfile:
    """Run `model` (eval, no grad) on `batches` and measure every decoder layer's three sites.

    A batch is a LongTensor (batch, seq) of token ids or a dict with `input_ids` and an optional
    `attention_mask`; padded positions (mask 0) are left out of the metrics.
    """
    if fmt not in KNOWN_FORMATS:
        raise ValueError(f"unknown quantization format {fmt!r}; known formats: {', '.join(KNOWN_FORMATS)}")
    layers = find_decoder_layers(model)
    n = len(layers)
    out_acc = [MetricAccumulator(fmt) for _ in range(n)]
    lin_acc: list[dict[str, MetricAccumulator]] = []
    linears = [layer_linears(layer) for layer in layers]
    state: dict[str, torch.Tensor | None] = {"mask": None}

    def select(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        mask = state["mask"]
        if mask is not None and mask.numel() == flat.shape[0]:
            flat = flat[mask]
        return flat

    handles = []
    for li, layer in enumerate(layers):

        def out_hook(_m: nn.Module, _args: Any, output: Any, li: int = li) -> None:
            hs = output[0] if isinstance(output, (tuple, list)) else output
            out_acc[li].update(select(hs))

        handles.append(layer.register_forward_hook(out_hook))
        accs = {}
        for pname, lin in linears[li].items():
            acc = MetricAccumulator(fmt)
            accs[pname] = acc

            def in_hook(_m: nn.Module, args: Any, acc: MetricAccumulator = acc) -> None:
                if args:
                    acc.update(select(args[0]))

            handles.append(lin.register_forward_pre_hook(in_hook))
        lin_acc.append(accs)

    was_training = model.training
    model.eval()
    batches_seen = 0
    tokens = 0
    try:
        with torch.no_grad():
            for batch in batches:
                inputs, mask = _as_inputs(batch)
                device = next(model.parameters()).device
                inputs = {k: v.to(device) for k, v in inputs.items()}
                state["mask"] = mask.reshape(-1).bool().to(device) if mask is not None else None
                tokens += int(state["mask"].sum()) if state["mask"] is not None else inputs["input_ids"].numel()
                model(**inputs, use_cache=False)
                batches_seen += 1
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    if batches_seen == 0:
        raise ValueError("SRDD scan needs at least one batch of token ids")

    results: list[LayerMetrics] = []
    for li in range(n):
        agg_in = MetricAccumulator(fmt)
        agg_w = MetricAccumulator(fmt)
        per_in: dict[str, SiteMetrics] = {}
        per_w: dict[str, SiteMetrics] = {}
        for pname, lin in linears[li].items():
            agg_in.merge(lin_acc[li][pname])
            per_in[pname] = lin_acc[li][pname].result()
            wacc = MetricAccumulator(fmt)
            wacc.update(lin.weight.detach())
            agg_w.merge(wacc)
            per_w[pname] = wacc.result()
        has_lin = bool(linears[li])
        results.append(
            LayerMetrics(
                index=li,
                output=out_acc[li].result(),
                linear_input=agg_in.result() if has_lin else None,
                weight=agg_w.result() if has_lin else None,
                projections={"linear_input": per_in, "weight": per_w} if has_lin else {},
                provenance={"*": "measured"},
            )
        )
    errors = [lm.output.rel_error or 0.0 for lm in results]
    segments = segment_layers(errors, min(DEFAULT_NUM_SEGMENTS, n))
    zones = compute_zones(errors, segments=segments)
    source = {
        "kind": "scan",
        "tool": "noisesweep srdd (quant.srdd.scan_model)",
        "batches": batches_seen,
        "tokens": tokens,
        "measured": "all sites on the unquantized model; linear_input/weight aggregate every base "
        "nn.Linear of the layer (sums over projections), per-projection values under 'projections'",
        "segments": [list(s) for s in segments],
        "zones": f"DP segmentation of output rel_error into {min(DEFAULT_NUM_SEGMENTS, n)} runs, "
        "runs grouped into low/medium/high by mean error",
    }
    return SrddProfile(model=model_name, format=fmt, num_layers=n, layers=results, zones=zones, source=source)


# --------------------------------------------------------------------------- display
def _pct(v: float | None, width: int = 6, digits: int = 2) -> str:
    return f"{v * 100:{width}.{digits}f}" if v is not None else f"{'-':>{width}}"


def _db(v: float | None, width: int = 5) -> str:
    return f"{v:{width}.1f}" if v is not None else f"{'-':>{width}}"


def format_table(profile: SrddProfile) -> str:
    """A per-layer table (output and linear_input sites, weight error) and a zone summary."""
    lines = [
        f"SRDD profile: {profile.model}, {profile.format}, {profile.num_layers} layers",
        "                  |------- output (decoder layer) ------|"
        "----- linear_input (what W4A4 quantizes) -----|--- weight ---",
        "layer  zone      err %   dz %   sat %  SQNR dB |  err %   dz %   sat %  SQNR dB |  err %",
    ]
    for lm in profile.layers:
        o = lm.output
        li = lm.linear_input or SiteMetrics()
        w = lm.weight or SiteMetrics()
        zone = profile.zone_of(lm.index) or "-"
        lines.append(
            f"{lm.index:5d}  {zone:<8s} {_pct(o.rel_error)} {_pct(o.deadzone)} {_pct(o.saturation)}   {_db(o.sqnr_db)} |"
            f" {_pct(li.rel_error)} {_pct(li.deadzone)} {_pct(li.saturation)}   {_db(li.sqnr_db)} |"
            f" {_pct(w.rel_error)}"
        )
    lines.append("")
    lines.append("zone     layers                 mean err %  mean dz %")
    for z in profile.zones:
        errs = [profile.layers[i].output.rel_error for i in z.layers]
        dzs = [profile.layers[i].output.deadzone for i in z.layers if profile.layers[i].output.deadzone is not None]
        me = sum(e for e in errs if e is not None) / max(1, len(errs))
        md = f"{sum(dzs) / len(dzs) * 100:9.2f}" if dzs else f"{'-':>9}"
        lines.append(f"{z.name:<8s} {layer_runs(z.layers):<22s} {me * 100:10.2f}  {md}")
    return "\n".join(lines)


__all__ = [
    "SCHEMA",
    "SITES",
    "VERSION",
    "LayerMetrics",
    "MetricAccumulator",
    "SiteMetrics",
    "SrddProfile",
    "Zone",
    "block_max",
    "compute_zones",
    "find_decoder_layers",
    "format_table",
    "layer_linears",
    "layer_runs",
    "load_profile",
    "scan_model",
    "segment_layers",
    "site_metrics",
    "tier_segments",
    "validate_for_model",
]
