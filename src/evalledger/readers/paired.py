"""The statistics of a paired comparison: McNemar's exact test and the paired bootstrap interval.

Pure functions over numbers, no run directories: :mod:`evalledger.readers.compare` pairs the
samples of two runs and calls these.
"""

from __future__ import annotations

import math
from typing import Any

#: The confidence level of every interval a comparison reports.
CONFIDENCE = 0.95

# Up to this many discordant pairs the binomial tail is summed in exact integers (correctly
# rounded once at the end); beyond it, in floats from lgamma (relative error ~1e-9, and the
# integers would cost seconds).
_EXACT_UP_TO = 20_000


def _binomial_half_tail_exact(n: int, m: int) -> float:
    """P(X <= m) for X ~ Bin(n, 1/2), summed in integers."""
    term = total = 1
    for k in range(1, m + 1):
        term = term * (n - k + 1) // k
        total += term
    return total / (1 << n)  # int / int is correctly rounded, however large


def _binomial_half_tail_float(n: int, m: int) -> float:
    """P(X <= m) for X ~ Bin(n, 1/2), m <= n/2: the terms from k = m down, each smaller than
    the one before, until they no longer change the sum."""
    log_top = math.lgamma(n + 1) - math.lgamma(m + 1) - math.lgamma(n - m + 1) - n * math.log(2)
    term = total = 1.0  # relative to the k = m term
    for k in range(m, 0, -1):
        term *= k / (n - k + 1)
        total += term
        if term < 1e-17 * total:
            break
    return math.exp(log_top + math.log(total))


def mcnemar_exact_p(b: int, c: int) -> float:
    """McNemar's exact test, two-sided: ``min(1, 2·P(X <= min(b, c)))`` with X ~ Bin(b + c, 1/2).

    ``b`` and ``c`` are the discordant pairs (A right and B wrong, A wrong and B right); the
    concordant pairs carry no information about which is better. 1.0 when ``b + c == 0``.
    """
    if b < 0 or c < 0:
        raise ValueError(f"discordant counts cannot be negative: b={b}, c={c}")
    n, m = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = _binomial_half_tail_exact(n, m) if n <= _EXACT_UP_TO else _binomial_half_tail_float(n, m)
    return min(1.0, 2.0 * tail)


def paired_bootstrap_ci(differences: Any, *, seed: int, resamples: int,
                        confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The percentile bootstrap interval of the mean of per-sample ``differences``.

    Each resample draws as many samples as there are, with replacement, and takes the mean of
    their differences; the interval is the ``(1 − confidence)/2`` and ``(1 + confidence)/2``
    quantiles of those means (numpy's default, linear interpolation). The draw is made as a
    multinomial count of how often each distinct difference is picked, which is the same
    distribution as drawing sample indices and costs the same for ten samples or ten million.
    The same ``differences``, ``seed`` and ``resamples`` always give the same interval.
    """
    import numpy as np  # slow to import: only when a comparison is computed

    d = np.asarray(differences, dtype=float)
    if d.size == 0:
        raise ValueError("a bootstrap needs at least one sample")
    values, counts = np.unique(d, return_counts=True)
    if len(values) == 1:  # every resample has the same mean
        return float(values[0]), float(values[0])
    rng = np.random.default_rng(seed)
    picks = rng.multinomial(d.size, counts / d.size, size=resamples)
    means = picks @ values / d.size
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


__all__ = ["CONFIDENCE", "mcnemar_exact_p", "paired_bootstrap_ci"]
