"""Confidence intervals for the numbers we report."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

N_BOOT = 2000
ALPHA = 0.05


def bootstrap_ci(values, stat: Callable[[np.ndarray], float] = np.mean, n_boot: int = N_BOOT,
                 alpha: float = ALPHA, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat`` over ``values`` (deterministic: fixed seed).

    Resamples items with replacement ``n_boot`` times (Efron & Tibshirani, 1993). With fewer
    than two values the interval is the point itself.
    """
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        point = float(stat(values)) if values.size else float("nan")
        return point, point
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, values.size, size=(n_boot, values.size))
    boots = np.array([stat(values[row]) for row in idx]) if stat is not np.mean else values[idx].mean(axis=1)
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)
