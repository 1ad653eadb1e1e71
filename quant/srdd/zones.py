"""SRDD zones: contiguous runs of decoder layers with similar error, grouped into tiers.

Why: the sweep's `zones` parameter picks which layers get noise; layers whose quantization
error is alike should be switched on and off together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

DEFAULT_NUM_SEGMENTS = 5
TIER_NAMES = {1: ("medium",), 2: ("low", "high"), 3: ("low", "medium", "high")}


@dataclass
class Zone:
    """A named group of decoder layers (several contiguous runs are fine)."""

    name: str
    layers: list[int]


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
    runs: list[list[int]] = []  # [first, last] of each run
    for i in sorted(set(layers)):
        if runs and i == runs[-1][1] + 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ",".join(f"{a}-{b}" if a != b else f"{a}" for a, b in runs)
