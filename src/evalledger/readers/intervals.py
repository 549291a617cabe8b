"""95 % confidence intervals the readers report: Wilson's for a proportion, and the normal one for
a mean over independent units (the samples of a run with repeats)."""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959964  # the standard normal's 97.5th percentile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float] | None:
    """The Wilson score interval for a proportion (95 % by default); None when ``n`` is 0.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0 % and 100 %.
    """
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # Exact ends at 0 % and 100 % (floating point would give 0.9999999…).
    lo = 0.0 if successes == 0 else max(0.0, centre - half)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def mean_interval(values: Sequence[float], z: float = Z95) -> tuple[float | None, float | None,
                                                                    tuple[float, float] | None]:
    """(mean, standard error, interval) of per-unit values in [0, 1]: the mean ± ``z`` standard
    errors, the standard error being the sample standard deviation (``ddof=1``) over √n, the
    interval clipped to [0, 1]. The mean is None without values; the error and interval need two."""
    n = len(values)
    if n == 0:
        return None, None, None
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None, None
    se = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1) / n)
    return mean, se, (max(0.0, mean - z * se), min(1.0, mean + z * se))


__all__ = ["Z95", "mean_interval", "wilson_interval"]
