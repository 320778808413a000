"""Replica-symmetric saddle point at finite inverse temperature, its AT stability and the errors.

Every weight behaves as one discrete variable s in the effective single-site measure
P(s | A, B) ~ exp(l(s) - A s^2/2 + B s), with a Gaussian field B ~ N(0, A^2 rho + qhat) (docs/theory.md,
sections 3.2, 3.3, 4.1). The order parameters are 1D Gaussian averages of the site moments, computed on a
uniform grid that resolves the sech^2 bumps of width ~1/Delta at every threshold (the trapezoid rule on
analytic integrands is spectrally accurate once the spacing is below ~1/Delta), vectorised over the grid
points of a sweep.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wquant.errors import ConvergenceError
from wquant.theory._validation import check_damping, check_positive_int, check_tolerance
from wquant.theory.quantizers import LevelSet, site_log_weights
from wquant.theory.setting import RegressionSetting

Z_MAX = 8.5
"""Half-range of the standard-normal grid (mass outside is ~2e-17)."""
N_MIN, N_MAX = 65, 2**15 + 1
"""Fewest and most nodes of the field grid; the upper cap bounds memory in deep-RSB corners."""


@dataclass(frozen=True)
class RSResult:
    """RS order parameters and derived quantities at one setting.

    m = w0.w/N, Q = self-overlap, q = overlap of two replicas (|<w>|^2/N), V = Q - q, chi = beta V.
    gen_error: fresh-sample error of one Gibbs sample (a quantized network), rho + sigma^2 - 2m + Q.
    gen_error_mean: same for the Gibbs mean <w> (what AMP outputs), rho + sigma^2 - 2m + q.
    at_value: replicon eigenvalue; RS is stable iff at_value < 1 (inf at beta = inf, unique minimiser).
    at_slope: at_value / beta for large beta (only set at beta = inf, regime I).
    """

    setting: RegressionSetting
    levels: LevelSet
    m: float
    q: float
    Q: float
    V: float
    chi: float
    A: float
    qhat: float
    train_error: float
    gen_error: float
    gen_error_mean: float
    at_value: float
    at_slope: float
    regime: str
    iterations: int
    residual: float

    @property
    def rs_stable(self) -> bool:
        return bool(self.at_value < 1.0)


def gaussian_grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard-normal nodes on [-Z_MAX, Z_MAX] with normalised trapezoid weights."""
    z = np.linspace(-Z_MAX, Z_MAX, n)
    w = np.exp(-0.5 * z**2)
    return z, w / w.sum()


def site_moments(
    s: np.ndarray, logw: np.ndarray, A: np.ndarray, B: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of P(s | A, B) ~ exp(l(s) - A s^2/2 + B s), by log-sum-exp.

    s, logw: (..., K) broadcastable against B[..., None]; A broadcastable against B.
    """
    logits = logw - 0.5 * A[..., None] * s**2 + B[..., None] * s
    logits = logits - logits.max(axis=-1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=-1, keepdims=True)
    mean = (p * s).sum(axis=-1)
    var = (p * (s - mean[..., None]) ** 2).sum(axis=-1)
    return mean, var


def _nodes_needed(sigma_b: np.ndarray, max_gap: np.ndarray) -> np.ndarray:
    """Grid size (2^k + 1) so that the spacing in B is below 1/max_gap."""
    want = 2.0 * Z_MAX * sigma_b * max_gap + 1.0
    want = np.clip(np.nan_to_num(want, nan=N_MAX, posinf=N_MAX), N_MIN, N_MAX)
    k = np.ceil(np.log2(want - 1.0))
    return (2.0**k + 1).astype(int)


def field_averages(
    S: np.ndarray, logw: np.ndarray, A: np.ndarray, sigma_b: np.ndarray, with_at: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """E_B[Var], E_B[<s>^2] and (if asked) E_B[Var^2] with B ~ N(0, sigma_b^2), per grid point.

    S, logw: (P, K) levels and log-weights; A, sigma_b: (P,). Points are bucketed by the grid size they
    need so that an easy point never pays for a hard one.
    """
    P = S.shape[0]
    ev, eq, ev2 = np.empty(P), np.empty(P), np.full(P, np.nan)
    need = _nodes_needed(sigma_b, np.diff(S, axis=1).max(axis=1))
    for n in np.unique(need):
        idx = np.flatnonzero(need == n)
        z, w = gaussian_grid(int(n))
        B = sigma_b[idx, None] * z[None, :]
        mean, var = site_moments(
            S[idx, None, :], logw[idx, None, :], np.broadcast_to(A[idx, None], B.shape), B
        )
        ev[idx] = var @ w
        eq[idx] = (mean**2) @ w
        if with_at:
            ev2[idx] = (var**2) @ w
    return ev, eq, ev2


def conjugates(
    V: np.ndarray,
    q: np.ndarray,
    m: np.ndarray,
    load: np.ndarray,
    beta: np.ndarray,
    noise: np.ndarray,
    rho: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Energy-side conjugates A = mhat and qhat of the square loss (theory.md 3.2; 3.5 at beta = inf)."""
    err = rho + noise - 2.0 * m + q
    with np.errstate(divide="ignore", invalid="ignore"):
        finite = np.isfinite(beta)
        bf = np.where(finite, beta, 1.0)
        denom_f = 1.0 + bf * V
        A = np.where(finite, load * bf / denom_f, load / V)
        qhat = np.where(finite, load * bf**2 * err / denom_f**2, load * err / V**2)
    return A, qhat


@dataclass(frozen=True)
class PointBatch:
    """P grid points with a common number K of levels: the unit the vectorised solver works on."""

    S: np.ndarray  # (P, K) levels
    logw: np.ndarray  # (P, K) site log-weights l(s)
    load: np.ndarray  # (P,) M/N
    beta: np.ndarray  # (P,) inverse temperature (inf = interpolation regime II)
    noise: np.ndarray  # (P,) sigma^2
    rho: np.ndarray  # (P,)


@dataclass(frozen=True)
class BatchSolution:
    V: np.ndarray
    q: np.ndarray
    m: np.ndarray
    A: np.ndarray
    qhat: np.ndarray
    at_value: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    residual: np.ndarray


def prior_start(batch: PointBatch) -> np.ndarray:
    """(V, q, m) of the a-priori site measure p0(s) ~ exp(l(s)): a cold start with no information on w0."""
    lw = batch.logw - batch.logw.max(axis=1, keepdims=True)
    p = np.exp(lw)
    p /= p.sum(axis=1, keepdims=True)
    mean = (p * batch.S).sum(axis=1)
    var = (p * (batch.S - mean[:, None]) ** 2).sum(axis=1)
    return np.stack([np.maximum(var, 1e-6), mean**2, np.zeros_like(mean)], axis=1)


def rs_map(batch: PointBatch, state: np.ndarray) -> np.ndarray:
    """One undamped RS / state-evolution step (V, q, m) -> (V', q', m'); m' = rho A V' by Stein's lemma."""
    V, q, m = state[:, 0], state[:, 1], state[:, 2]
    A, qhat = conjugates(V, q, m, batch.load, batch.beta, batch.noise, batch.rho)
    sigma_b = np.sqrt(np.maximum(A**2 * batch.rho + qhat, 0.0))
    ev, eq, _ = field_averages(batch.S, batch.logw, A, sigma_b)
    return np.stack([ev, eq, batch.rho * A * ev], axis=1)


def _subset(batch: PointBatch, idx: np.ndarray) -> PointBatch:
    return PointBatch(
        batch.S[idx], batch.logw[idx], batch.load[idx], batch.beta[idx], batch.noise[idx], batch.rho[idx]
    )


def solve_batch(
    batch: PointBatch,
    initial: np.ndarray | None = None,
    damping: float = 0.3,
    tol: float = 1e-8,
    max_iter: int = 3000,
) -> BatchSolution:
    """Damped fixed-point iteration of the RS equations, vectorised over the points of `batch`.

    Converged points are frozen; points that do not converge are flagged (converged=False), with their last
    residual, for the caller to report. Residual: max relative change of (V, q, m) in one step.
    """
    eta = check_damping(damping)
    tol = check_tolerance(tol)
    max_iter = check_positive_int("max_iter", max_iter)
    P = batch.S.shape[0]
    state = prior_start(batch) if initial is None else np.array(initial, dtype=float, copy=True)
    converged = np.zeros(P, dtype=bool)
    iterations = np.zeros(P, dtype=int)
    residual = np.full(P, np.inf)
    active = np.arange(P)
    for it in range(1, max_iter + 1):
        sub = _subset(batch, active)
        old = state[active]
        new = rs_map(sub, old)
        new[:, 0] = np.maximum(new[:, 0], 1e-300)
        res = np.max(np.abs(new - old) / (np.abs(old) + 1e-8), axis=1)
        res = np.where(np.all(np.isfinite(new), axis=1), res, np.inf)
        upd = (1.0 - eta) * new + eta * old
        state[active] = np.where(np.isfinite(upd), upd, old)
        residual[active] = res
        iterations[active] = it
        done = res < tol
        converged[active[done]] = True
        bad = ~np.all(np.isfinite(new), axis=1)
        active = active[~done & ~bad]
        if active.size == 0:
            break
    V, q, m = state[:, 0], state[:, 1], state[:, 2]
    A, qhat = conjugates(V, q, m, batch.load, batch.beta, batch.noise, batch.rho)
    sigma_b = np.sqrt(np.maximum(A**2 * batch.rho + qhat, 0.0))
    _, _, ev2 = field_averages(batch.S, batch.logw, A, sigma_b, with_at=True)
    at = A**2 / batch.load * ev2
    return BatchSolution(V, q, m, A, qhat, at, converged, iterations, residual)


def errors_from_overlaps(
    setting: RegressionSetting, m: float, q: float, V: float
) -> tuple[float, float, float]:
    """(training error, generalization error of a Gibbs sample, of the Gibbs mean), theory.md 3.4, 5."""
    base = setting.rho + setting.noise_variance - 2.0 * m
    err_r = base + q
    if setting.zero_temperature:
        train = 0.0
    else:
        d = 1.0 + setting.beta * V
        train = V / d + err_r / d**2
    return float(train), float(base + q + V), float(err_r)


def batch_for(settings: list[RegressionSetting], levels: list[LevelSet]) -> PointBatch:
    """Stack points that share the number of levels into one `PointBatch`."""
    S = np.stack([lv.values for lv in levels])
    logw = np.stack([site_log_weights(lv, st) for lv, st in zip(levels, settings, strict=True)])
    arr = lambda f: np.array([f(st) for st in settings], dtype=float)  # noqa: E731
    return PointBatch(
        S,
        logw,
        arr(lambda st: st.load),
        arr(lambda st: st.beta),
        arr(lambda st: st.noise_variance),
        arr(lambda st: st.rho),
    )


def result_from_batch(
    sol: BatchSolution, i: int, setting: RegressionSetting, levels: LevelSet, regime: str
) -> RSResult:
    """Package point i of a batch solution; raises ConvergenceError if it did not converge."""
    if not sol.converged[i]:
        raise ConvergenceError(
            f"RS saddle point did not converge at {setting} with {levels.label}: last residual "
            f"{sol.residual[i]:.3e} after {sol.iterations[i]} iterations (try more damping or max_iter, "
            "or a warm start from a nearby point)"
        )
    V, q, m = float(sol.V[i]), float(sol.q[i]), float(sol.m[i])
    train, gen, gen_mean = errors_from_overlaps(setting, m, q, V)
    chi = setting.beta * V if math.isfinite(setting.beta) else math.inf
    return RSResult(
        setting=setting,
        levels=levels,
        m=m,
        q=q,
        Q=q + V,
        V=V,
        chi=chi,
        A=float(sol.A[i]),
        qhat=float(sol.qhat[i]),
        train_error=train,
        gen_error=gen,
        gen_error_mean=gen_mean,
        at_value=float(sol.at_value[i]),
        at_slope=math.nan,
        regime=regime,
        iterations=int(sol.iterations[i]),
        residual=float(sol.residual[i]),
    )


def solve_rs(
    setting: RegressionSetting,
    levels: LevelSet,
    *,
    damping: float = 0.3,
    tol: float = 1e-8,
    max_iter: int = 3000,
    initial: RSResult | None = None,
) -> RSResult:
    """RS saddle point at `setting` (finite beta: Gibbs learning; beta = inf: zero-temperature ERM).

    `initial` warm-starts from a nearby solution (sweeps). Raises ConvergenceError with the last residual
    rather than returning an unconverged point.
    """
    if setting.zero_temperature:
        from wquant.theory.zero_temperature import solve_zero_temperature

        return solve_zero_temperature(
            setting, levels, damping=damping, tol=tol, max_iter=max_iter, initial=initial
        )
    batch = batch_for([setting], [levels])
    init = None
    if initial is not None and math.isfinite(initial.V) and initial.levels.size == levels.size:
        init = np.array([[max(initial.V, 1e-12), initial.q, initial.m]])
    sol = solve_batch(batch, init, damping=damping, tol=tol, max_iter=max_iter)
    return result_from_batch(sol, 0, setting, levels, regime="finite beta")
