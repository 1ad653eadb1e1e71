"""The SRDD profile as a text table: per-layer metrics and a zone summary (what `noisesweep srdd` prints)."""

from __future__ import annotations

from quant.srdd.metrics import SiteMetrics
from quant.srdd.profile import SrddProfile
from quant.srdd.zones import layer_runs


def _pct(v: float | None, width: int = 6, digits: int = 2) -> str:
    return f"{v * 100:{width}.{digits}f}" if v is not None else f"{'-':>{width}}"


def _db(v: float | None, width: int = 5) -> str:
    return f"{v:{width}.1f}" if v is not None else f"{'-':>{width}}"


def format_table(profile: SrddProfile) -> str:
    """A per-layer table (output and linear_input sites, weight error) and a zone summary."""
    lines = [
        f"SRDD profile: {profile.model}, {profile.format}, {profile.num_layers} layers",
        (
            "                  |------- output (decoder layer) ------|"
            "----- linear_input (what W4A4 quantizes) -----|--- weight ---"
        ),
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
        dzs = [d for d in (profile.layers[i].output.deadzone for i in z.layers) if d is not None]
        me = sum(e for e in errs if e is not None) / max(1, len(errs))
        md = f"{sum(dzs) / len(dzs) * 100:9.2f}" if dzs else f"{'-':>9}"
        lines.append(f"{z.name:<8s} {layer_runs(z.layers):<22s} {me * 100:10.2f}  {md}")
    return "\n".join(lines)
