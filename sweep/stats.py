"""The one interval every score in noisesweep carries: a Student-t 95 % CI over seeds."""

from __future__ import annotations

import math
import statistics


def mean_ci(values: list[float], level: float = 0.95) -> tuple[float, float | None, float | None]:
    """(mean, low, high) of a Student-t interval; (mean, None, None) for a single value."""
    if not values:
        raise ValueError("mean_ci: no values")
    n = len(values)
    mean = statistics.fmean(values)
    if n < 2:
        return mean, None, None
    from scipy.stats import t

    sd = statistics.stdev(values)
    half = float(t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean, mean - half, mean + half
