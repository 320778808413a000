"""Sweeps behind the seed's figures: the (b, omega) phase diagram (Fig. 2), error vs omega with the optimal
omega (Fig. 4) and error vs alpha = N/M with the double-descent peak and the ridge reference (Fig. 5).

Phase diagrams solve a whole row of widths as one vectorised batch; 1D sweeps continue along the curve with
warm starts. Rows/curves run in parallel with joblib. Points whose saddle point does not converge are kept as
NaN with converged=False (never as numbers).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from joblib import Parallel, delayed
from scipy.optimize import minimize_scalar

from wquant.errors import ConvergenceError, ParameterError
from wquant.theory._validation import check_alpha, check_bits, check_width
from wquant.theory.quantizers import DEFAULT_GAMMA, QuantizerKind, make_levels
from wquant.theory.rs import RSResult, batch_for, errors_from_overlaps, solve_batch, solve_rs
from wquant.theory.setting import RegressionSetting
from wquant.theory.zero_temperature import interpolation_threshold, ridge_generalization_error


def _bits_list(bits: Sequence[int]) -> np.ndarray:
    return np.array([check_bits(b) for b in bits], dtype=int)


def _widths_list(widths: Sequence[float]) -> np.ndarray:
    arr = np.array([check_width(w) for w in widths], dtype=float)
    if arr.size == 0:
        raise ParameterError("widths=[] is invalid: widths must hold at least one value > 0")
    return arr


@dataclass(frozen=True)
class PhaseDiagram:
    """AT eigenvalue and errors on a bits x widths grid. RS where converged and at_value < 1."""

    setting: RegressionSetting
    kind: str
    gamma: float
    bits: np.ndarray
    widths: np.ndarray
    at_value: np.ndarray
    gen_error: np.ndarray
    converged: np.ndarray

    @property
    def rs(self) -> np.ndarray:
        return self.converged & (self.at_value < 1.0)

    def boundary(self) -> np.ndarray:
        """omega_AT(b): first width where AT crosses 1 (log-linear interpolation); NaN if none, 0 if no RS."""
        out = np.full(self.bits.size, np.nan)
        for i in range(self.bits.size):  # one entry per bit depth
            at = self.at_value[i]
            above = np.flatnonzero(~(at < 1.0))
            if above.size == 0:
                continue
            j = above[0]
            if j == 0:
                out[i] = 0.0
                continue
            a0, a1 = math.log(at[j - 1]), math.log(at[j]) if np.isfinite(at[j]) else math.inf
            frac = 1.0 if not math.isfinite(a1) else (0.0 - a0) / (a1 - a0)
            out[i] = self.widths[j - 1] + frac * (self.widths[j] - self.widths[j - 1])
        return out

    def rs_fraction(self) -> float:
        return float(self.rs.mean())


def _phase_row(
    setting: RegressionSetting, kind: QuantizerKind, gamma: float, bits: int, widths: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    levels = [make_levels(kind, bits, w, gamma) for w in widths]
    if setting.zero_temperature:
        at, gen, ok = np.full(widths.size, np.nan), np.full(widths.size, np.nan), np.zeros(widths.size, bool)
        for j, lv in enumerate(levels):  # one zero-temperature solve per width
            try:
                r = solve_rs(setting, lv)
            except ConvergenceError:
                continue
            at[j], gen[j], ok[j] = r.at_value, r.gen_error, True
        return at, gen, ok
    sol = solve_batch(batch_for([setting] * widths.size, levels))
    gen = np.array([errors_from_overlaps(setting, m, q, V)[1] for m, q, V in zip(sol.m, sol.q, sol.V, strict=True)])
    ok = sol.ok  # converged, resolved and sane: anything else is a grey "no RS solution" cell, never a number
    return np.where(ok, sol.at_value, np.nan), np.where(ok, gen, np.nan), ok


def phase_diagram(
    setting: RegressionSetting,
    bits: Sequence[int],
    widths: Sequence[float],
    kind: QuantizerKind = "uniform",
    gamma: float = DEFAULT_GAMMA,
    n_jobs: int = 1,
) -> PhaseDiagram:
    """RS / RSB map over (b, omega) at `setting` (Fig. 2). One vectorised batch per bit depth."""
    b_arr, w_arr = _bits_list(bits), _widths_list(widths)
    # split rows into chunks so that an expensive row (few bits, wide grid) is shared among workers
    chunks = np.array_split(np.arange(w_arr.size), max(1, min(4, w_arr.size // 8)))
    parts = Parallel(n_jobs=n_jobs)(
        delayed(_phase_row)(setting, kind, gamma, int(b), w_arr[c]) for b in b_arr for c in chunks
    )
    at, gen, ok = (
        np.stack([np.concatenate(x[i * len(chunks) : (i + 1) * len(chunks)]) for i in range(b_arr.size)])
        for x in zip(*parts, strict=True)
    )
    return PhaseDiagram(setting, kind, gamma, b_arr, w_arr, at, gen, ok)


def _continue_along(
    settings: Sequence[RegressionSetting], levels: Sequence, estimator: str
) -> tuple[np.ndarray, np.ndarray, list[RSResult | None]]:
    """Solve a 1D path of points, each warm-started from the last converged one."""
    err, at, results = np.full(len(settings), np.nan), np.full(len(settings), np.nan), []
    prev: RSResult | None = None
    for j, (st, lv) in enumerate(zip(settings, levels, strict=True)):  # continuation is sequential by design
        try:
            r = solve_rs(st, lv, initial=prev)
        except ConvergenceError:
            try:
                r = solve_rs(st, lv)
            except ConvergenceError:
                results.append(None)
                prev = None
                continue
        err[j] = r.gen_error if estimator == "sample" else r.gen_error_mean
        at[j] = r.at_value
        results.append(r)
        prev = r
    return err, at, results


def _check_estimator(estimator: str) -> str:
    if estimator not in ("sample", "mean"):
        raise ParameterError(f"estimator={estimator!r} is invalid: estimator must be one of mean, sample")
    return estimator


@dataclass(frozen=True)
class WidthSweep:
    """Generalization error vs omega per bit depth (Fig. 4), with the optimum refined off the grid."""

    setting: RegressionSetting
    kind: str
    gamma: float
    estimator: str
    bits: np.ndarray
    widths: np.ndarray
    gen_error: np.ndarray  # (bits, widths)
    at_value: np.ndarray
    best_width: np.ndarray  # (bits,)
    best_error: np.ndarray
    best_at: np.ndarray

    @property
    def best_is_rs(self) -> np.ndarray:
        return self.best_at < 1.0


def _width_row(
    setting: RegressionSetting,
    kind: QuantizerKind,
    gamma: float,
    bits: int,
    widths: np.ndarray,
    estimator: str,
) -> tuple[np.ndarray, np.ndarray, float, float, float]:
    levels = [make_levels(kind, bits, w, gamma) for w in widths]
    err, at, _ = _continue_along([setting] * widths.size, levels, estimator)
    if np.all(np.isnan(err)):
        return err, at, math.nan, math.nan, math.nan
    j = int(np.nanargmin(err))
    lo, hi = widths[max(j - 1, 0)], widths[min(j + 1, widths.size - 1)]

    def objective(w: float) -> float:
        try:
            r = solve_rs(setting, make_levels(kind, bits, w, gamma))
        except ConvergenceError:
            return math.inf
        return r.gen_error if estimator == "sample" else r.gen_error_mean

    best_w, best_e = float(widths[j]), float(err[j])
    if hi > lo:
        opt = minimize_scalar(objective, bounds=(lo, hi), method="bounded", options={"xatol": 1e-4 * hi})
        if opt.fun <= best_e:
            best_w, best_e = float(opt.x), float(opt.fun)
    best_at = solve_rs(setting, make_levels(kind, bits, best_w, gamma)).at_value
    return err, at, best_w, best_e, float(best_at)


def error_vs_width(
    setting: RegressionSetting,
    bits: Sequence[int],
    widths: Sequence[float],
    kind: QuantizerKind = "uniform",
    gamma: float = DEFAULT_GAMMA,
    estimator: str = "sample",
    n_jobs: int = 1,
) -> WidthSweep:
    """E_g(omega) for each b, and the omega minimising it (Fig. 4). estimator: "sample" (a Gibbs sample, i.e.
    a quantized network) or "mean" (the Gibbs mean, AMP's output); they coincide at beta = inf."""
    b_arr, w_arr = _bits_list(bits), np.sort(_widths_list(widths))
    est = _check_estimator(estimator)
    rows = Parallel(n_jobs=n_jobs)(delayed(_width_row)(setting, kind, gamma, int(b), w_arr, est) for b in b_arr)
    err, at, bw, be, ba = zip(*rows, strict=True)
    return WidthSweep(
        setting,
        kind,
        gamma,
        est,
        b_arr,
        w_arr,
        np.stack(err),
        np.stack(at),
        np.array(bw),
        np.array(be),
        np.array(ba),
    )


def optimal_width(
    setting: RegressionSetting,
    bits: int,
    kind: QuantizerKind = "uniform",
    gamma: float = DEFAULT_GAMMA,
    estimator: str = "sample",
) -> float:
    """omega minimising the RS generalization error at `setting` (coarse grid, then bounded refinement)."""
    grid = np.linspace(0.1, 1.0 + 1.2 * bits, 24)
    return float(error_vs_width(setting, [bits], grid, kind, gamma, estimator).best_width[0])


@dataclass(frozen=True)
class AlphaSweep:
    """Generalization error vs alpha = N/M per bit depth (Fig. 5), with ridge (b -> inf) as reference."""

    setting: RegressionSetting
    kind: str
    gamma: float
    estimator: str
    bits: np.ndarray
    widths: np.ndarray  # one width per bit depth
    alphas: np.ndarray  # N/M
    gen_error: np.ndarray  # (bits, alphas)
    at_value: np.ndarray
    ridge_error: np.ndarray  # (alphas,)
    interpolation_alpha: np.ndarray  # 1 / alpha_c(M/N) per bit depth: the quantized interpolation threshold

    def peak_alpha(self) -> tuple[np.ndarray, float]:
        """alpha of the double-descent bump per curve and for ridge (parabola-refined local maximum)."""
        return (
            np.array([_peak(self.alphas, row) for row in self.gen_error]),
            _peak(self.alphas, self.ridge_error),
        )


def _peak(x: np.ndarray, y: np.ndarray) -> float:
    """Position of the highest interior local maximum (the double-descent bump), parabola-refined; NaN if the
    curve has none on the grid (E_g also grows without bound as alpha -> inf, which is not the peak)."""
    ok = np.isfinite(y)
    inner = np.flatnonzero(ok[1:-1] & ok[:-2] & ok[2:] & (y[1:-1] >= y[:-2]) & (y[1:-1] > y[2:])) + 1
    if inner.size == 0:
        return math.nan
    j = int(inner[np.argmax(y[inner])])
    x0, x1, x2 = x[j - 1 : j + 2]
    y0, y1, y2 = y[j - 1 : j + 2]
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2**2 * (y0 - y1) + x1**2 * (y2 - y0) + x0**2 * (y1 - y2)) / denom
    return float(np.clip(-b / (2 * a), x0, x2)) if a < 0 else float(x1)


def _alpha_row(
    setting: RegressionSetting,
    kind: QuantizerKind,
    gamma: float,
    bits: int,
    width: float,
    alphas: np.ndarray,
    estimator: str,
) -> tuple[np.ndarray, np.ndarray, float]:
    lv = make_levels(kind, bits, width, gamma)
    settings = [setting.with_(alpha=float(a)) for a in alphas]
    err, at, _ = _continue_along(settings, [lv] * alphas.size, estimator)
    try:
        alpha_c = 1.0 / interpolation_threshold(lv, setting.sigma, setting.rho)
    except ConvergenceError:
        alpha_c = math.nan
    return err, at, alpha_c


def error_vs_alpha(
    setting: RegressionSetting,
    alphas: Sequence[float],
    bits: Sequence[int],
    widths: Sequence[float],
    kind: QuantizerKind = "uniform",
    gamma: float = DEFAULT_GAMMA,
    estimator: str = "sample",
    n_jobs: int = 1,
) -> AlphaSweep:
    """E_g(alpha) for each (b, omega) pair, alpha = N/M ascending (Fig. 5). Ridge at the same lam and sigma
    is the b -> inf reference (its Gibbs mean at any beta)."""
    b_arr = _bits_list(bits)
    w_arr = _widths_list(widths)
    if w_arr.size != b_arr.size:
        raise ParameterError(f"widths={list(w_arr)} is invalid: widths must give one width per bit depth")
    a_arr = np.sort(np.array([check_alpha(a) for a in alphas], dtype=float))
    est = _check_estimator(estimator)
    rows = Parallel(n_jobs=n_jobs)(
        delayed(_alpha_row)(setting, kind, gamma, int(b), float(w), a_arr, est)
        for b, w in zip(b_arr, w_arr, strict=True)
    )
    err, at, ac = zip(*rows, strict=True)
    ridge = np.full(a_arr.size, np.nan)
    for j, a in enumerate(a_arr):  # closed form per alpha
        try:
            ridge[j] = ridge_generalization_error(setting.with_(alpha=float(a), beta=math.inf))
        except ConvergenceError:
            pass
    return AlphaSweep(setting, kind, gamma, est, b_arr, w_arr, a_arr, np.stack(err), np.stack(at), ridge, np.array(ac))
