"""SRDD profiles: per-decoder-layer quantization error of a model, its zones, and the JSON file.

Why: the sweep's search space (which layers get noise, and how much) is seeded from how badly
each layer suffers under the 4-bit format. One module per job, each importing only lower ones:

- `quant.srdd.metrics`: the per-site metrics (relative error, deadzone, saturation, SQNR) and
  their token-weighted accumulation;
- `quant.srdd.zones`: contiguous runs of layers by error (exact DP) grouped into low/medium/high;
- `quant.srdd.profile`: `SrddProfile` and its versioned JSON file (save, load, validate);
- `quant.srdd.scan`: `scan_model`, measuring three sites per layer on the unquantized model;
- `quant.srdd.table`: `format_table`, the text the CLI prints.

Everything below is importable from `quant.srdd` (docs/CONTRACTS.md names this package).
"""

from __future__ import annotations

from quant.model import find_decoder_layers
from quant.srdd.metrics import (
    METRIC_KEYS,
    SITES,
    LayerMetrics,
    MetricAccumulator,
    SiteMetrics,
    block_max,
    site_metrics,
)
from quant.srdd.profile import (
    SCHEMA,
    VERSION,
    SrddProfile,
    load_profile,
    validate_for_model,
)
from quant.srdd.scan import SrddBatch, layer_linears, scan_model
from quant.srdd.table import format_table
from quant.srdd.zones import (
    DEFAULT_NUM_SEGMENTS,
    TIER_NAMES,
    Zone,
    compute_zones,
    layer_runs,
    segment_layers,
    tier_segments,
)

__all__ = [
    "DEFAULT_NUM_SEGMENTS",
    "METRIC_KEYS",
    "SCHEMA",
    "SITES",
    "TIER_NAMES",
    "VERSION",
    "LayerMetrics",
    "MetricAccumulator",
    "SiteMetrics",
    "SrddBatch",
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
