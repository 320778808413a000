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
    distortion_tol: float = 1e-10,
) -> np.ndarray:
    """Levels minimising Σ w·(x - q(x))² over scalar quantizers with `n_levels` cells (strictly increasing).

    Starts from the high-resolution optimum (levels at the quantiles of the density^(1/3), estimated by a fine
    histogram; Panter–Dite) and iterates the centroid /
    midpoint conditions until no level moves by more than `tol` times the data range, or one iteration lowers
    the distortion by less than `distortion_tol` of itself: with hundreds of levels on wide-tailed data Lloyd
    creeps (8-bit Laplace levels still moved 1e-7 of the range after 20,000 iterations) long after the
    distortion has settled.
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
    cwx2 = np.concatenate([[0.0], np.cumsum(w * xs * xs)])
    span = float(xs[-1] - xs[0]) or 1.0

    levels = _strictly_increasing(_companded_start(xs, cw, n_levels), span)
    previous = np.inf
    for _ in range(max_iter):
        edges = np.concatenate([[0], np.searchsorted(xs, (levels[1:] + levels[:-1]) / 2), [xs.size]])
        mass = cw[edges[1:]] - cw[edges[:-1]]
        total = cwx[edges[1:]] - cwx[edges[:-1]]
        safe_mass = np.where(mass > 0, mass, 1.0)
        new = np.where(mass > 0, total / safe_mass, levels)
        distortion = float(np.sum(cwx2[edges[1:]] - cwx2[edges[:-1]] - total * total / safe_mass))
        new = _strictly_increasing(np.maximum.accumulate(new), span)
        moved = float(np.max(np.abs(new - levels)))
        levels = new
        if moved <= tol * span or previous - distortion <= distortion_tol * max(distortion, 0.0):
            return levels
        previous = distortion
    raise ConvergenceError(f"Lloyd–Max did not converge in {max_iter} iterations (last move {moved:.3g})")


def _companded_start(xs: np.ndarray, cw: np.ndarray, n_levels: int) -> np.ndarray:
    """Levels at the (k + ½)/K quantiles of p^(1/3): the asymptotically optimal point density.

    p is estimated on equal-mass bins (≥ 32 values each), so sparse tails are not lost to empty histogram
    cells. Starting from the data's own quantiles instead puts too few levels in the tails; with 256 levels on
    Laplace data Lloyd then needed > 20,000 iterations to move them out (and had 3× the distortion at 1,000).
    """
    bins = int(np.clip(xs.size // 32, 1, 4096))
    cuts = np.searchsorted(cw[1:], np.linspace(0.0, cw[-1], bins + 1)[1:-1])
    edges = np.concatenate([[xs[0]], xs[np.clip(cuts, 0, xs.size - 1)], [xs[-1]]])
    mass = np.diff(np.concatenate([[0.0], cw[cuts], [cw[-1]]]))
    companded = np.cbrt(np.maximum(mass, 0.0)) * np.maximum(np.diff(edges), 0.0) ** (2 / 3)
    cdf = np.concatenate([[0.0], np.cumsum(companded)])
    if cdf[-1] <= 0:  # all values equal
        return np.full(n_levels, xs[0], dtype=np.float64)
    return np.interp((np.arange(n_levels) + 0.5) / n_levels * cdf[-1], cdf, edges)


def _strictly_increasing(levels: np.ndarray, span: float) -> np.ndarray:
    """Separate tied levels (empty cells, data with few distinct values) by a negligible amount."""
    gaps = np.diff(levels)
    if np.all(gaps > 0):
        return levels
    eps = 1e-9 * span
    return np.maximum.accumulate(levels) + eps * np.arange(levels.size)
