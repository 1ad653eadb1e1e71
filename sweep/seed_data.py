"""The team's five hand-made MXFP4 W4A4 noise configs, as plain data (sweep.study validates them).

Why plain data: the schema (sweep.study) builds SeedConfig objects from these, so this module
imports nothing of the project and the schema stays free of circles.

All use QeRL's 10-stage schedule and the E12/E13 sigma 0.05 -> 0.0005 unless noted. The team's
E13i-high/-low raised/lowered sigma for layers 10-19 only while the other layers kept 0.05 ->
0.0005; one shared schedule cannot hold two sigmas, so they become worst-zone-only runs at
0.08 -> 0.001 / 0.03 -> 0.0003, which keeps H2's comparison (more vs less noise in the worst
zone, against E13i-targeted at 0.05) intact. `zones: worst` is the profile's highest-error zone
(layers 10-19 on Qwen2.5-1.5B).
"""

from __future__ import annotations

from typing import Any

SEED_CONFIG_DATA: tuple[dict[str, Any], ...] = (
    {
        "name": "E13i-baseline", "sigma_start": 0.05, "sigma_end": 0.0005, "num_stages": 10, "zones": "all",
        "alpha": 0.0, "source": "team experiment E13i: global RIN, all layers, uniform sigma",
    },
    {
        "name": "E13i-targeted", "sigma_start": 0.05, "sigma_end": 0.0005, "num_stages": 10, "zones": "worst",
        "alpha": 0.0, "source": "team experiment E13i: target layers 10-19 (the worst SRDD zone)",
    },
    {
        "name": "E13i-high", "sigma_start": 0.08, "sigma_end": 0.001, "num_stages": 10, "zones": "worst",
        "alpha": 0.0, "source": "team experiment E13i-high: layers 10-19 at 0.08 -> 0.001 (H2a, escape)",
    },
    {
        "name": "E13i-low", "sigma_start": 0.03, "sigma_end": 0.0003, "num_stages": 10, "zones": "worst",
        "alpha": 0.0, "source": "team experiment E13i-low: layers 10-19 at 0.03 -> 0.0003 (H2b, sufficient error)",
    },
    {
        "name": "E13j-variable", "sigma_start": 0.05, "sigma_end": 0.0005, "num_stages": 10, "zones": "all",
        "alpha": 1.0, "source": "team experiment E13j-variable (RIN-variable): multiplier = error / mean error",
    },
)
