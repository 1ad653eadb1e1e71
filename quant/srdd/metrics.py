"""SRDD per-layer metrics: what one site of one decoder layer loses under the 4-bit format.

Per site: relative error ||x - q(x)|| / ||x||, deadzone ratio (share of non-zero values that
quantize to 0), saturation ratio (share of values whose magnitude exceeds the block's largest
representable value, 6 x the effective block scale, so they are clipped), and SQNR in dB
(10 log10 of signal power over error power, i.e. -20 log10 of the relative error). The sums
run over every value seen, so metrics over many batches are token-weighted, not averages of
averages. Ratios are fractions (0.4265); `quant.srdd.table` shows them as percent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from quant.format_names import check_format
from quant.formats import fake_quantize
from quant.fp4_constants import BLOCK_SIZES, E2M1_MAX
from quant.fp4_kernels import blocks_of, e8m0_value, mx_scale_exponent, nv_block_factors

SITES = ("output", "linear_input", "weight")
METRIC_KEYS = ("rel_error", "deadzone", "saturation", "sqnr_db")


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


def block_max(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """Largest magnitude each element's block can represent (6 x effective scale), shape of x.

    Uses the scale rules of quant.formats itself (MXFP4: `mx_scale_exponent`/`e8m0_value`;
    NVFP4: `nv_block_factors`, no lower clamp), so the saturation count cannot drift from what
    `fake_quantize` does. An all-zero block, or an NVFP4 block whose scale rounds to 0, gives 0;
    a non-finite block (NVFP4: a non-finite tensor) gives NaN.
    """
    check_format(fmt)
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
