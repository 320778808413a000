"""Lloyd–Max (1-D k-means) levels, optionally weighted, solved on sorted data with prefix sums.

Sorting once makes every Lloyd iteration O(K log N) instead of O(N): cell edges come from a binary search of
the midpoints and centroids from prefix sums, so iterating to full convergence is cheap even for 2^24 values.
"""

from __future__ import annotations

import numpy as np

from wquant.errors import ConvergenceError, ParameterError


def lloyd_max_levels(
    x: np.ndarray,
    n_levels: int,
    weights: np.ndarray | None = None,
    *,
    max_iter: int = 20_000,
    tol: float = 1e-9,
) -> np.ndarray:
    """Levels minimising Σ w·(x - q(x))² over scalar quantizers with `n_levels` cells (strictly increasing).

    Starts from the weighted quantiles of the data (the quantile grid) and iterates the centroid /
    midpoint conditions until no level moves by more than `tol` times the data range.
    """
    data = np.asarray(x, dtype=np.float64).reshape(-1)
    if data.size == 0:
        raise ParameterError("Lloyd–Max needs at least one value")
    if n_levels < 2:
        raise ParameterError(f"Lloyd–Max needs at least 2 levels, got {n_levels}")
    order = np.argsort(data, kind="stable")
    xs = data[order]
    if weights is None:
        w = np.ones_like(xs)
    else:
        w = np.asarray(weights, dtype=np.float64).reshape(-1)
        if w.shape != data.shape or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ParameterError("Lloyd–Max weights must be finite, non-negative, not all zero, one per value")
        w = w[order]
    cw = np.concatenate([[0.0], np.cumsum(w)])
    cwx = np.concatenate([[0.0], np.cumsum(w * xs)])
    span = float(xs[-1] - xs[0]) or 1.0

    probs = (np.arange(n_levels) + 0.5) / n_levels
    levels = xs[np.clip(np.searchsorted(cw[1:], probs * cw[-1]), 0, xs.size - 1)].astype(np.float64)
    levels = _strictly_increasing(levels, span)
    for _ in range(max_iter):
        edges = np.concatenate([[0], np.searchsorted(xs, (levels[1:] + levels[:-1]) / 2), [xs.size]])
        mass = cw[edges[1:]] - cw[edges[:-1]]
        total = cwx[edges[1:]] - cwx[edges[:-1]]
        new = np.where(mass > 0, total / np.where(mass > 0, mass, 1.0), levels)
        new = _strictly_increasing(np.maximum.accumulate(new), span)
        moved = float(np.max(np.abs(new - levels)))
        levels = new
        if moved <= tol * span:
            return levels
    raise ConvergenceError(f"Lloyd–Max did not converge in {max_iter} iterations (last move {moved:.3g})")


def _strictly_increasing(levels: np.ndarray, span: float) -> np.ndarray:
    """Separate tied levels (empty cells, data with few distinct values) by a negligible amount."""
    gaps = np.diff(levels)
    if np.all(gaps > 0):
        return levels
    eps = 1e-9 * span
    return np.maximum.accumulate(levels) + eps * np.arange(levels.size)
