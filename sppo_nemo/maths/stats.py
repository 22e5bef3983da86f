"""Small statistics for evaluation: means with bootstrap intervals."""

from __future__ import annotations

import numpy as np


def mean_interval(values, confidence: float = 0.95, resamples: int = 4000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean and its percentile-bootstrap interval over the units given.

    Units are prompts: each value is one held-out prompt's average outcome, so the interval
    reflects prompt-to-prompt variation. Deterministic for a given seed. One value gives a
    zero-width interval. Hand-worked: [0, 1] → mean 0.5, interval close to [0, 1].
    """
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no values to average")
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(resamples, x.size))
    boots = x[idx].mean(axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.quantile(boots, [alpha, 1 - alpha])
    return mean, float(low), float(high)
