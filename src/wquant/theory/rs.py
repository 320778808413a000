"""Replica-symmetric saddle point at finite inverse temperature, its AT stability and the errors.

Every weight behaves as one discrete variable s in the effective single-site measure
P(s | A, B) ~ exp(l(s) - A s^2/2 + B s), with a Gaussian field B ~ N(0, A^2 rho + qhat) (docs/theory.md,
sections 3.2, 3.3, 4.1). The order parameters are 1D Gaussian averages of the site moments, computed on a
uniform grid that resolves both the sech^2 bumps of width ~1/Delta at every threshold and the thermal/clipping
width ~sqrt(A) of a many-level posterior (the trapezoid rule on analytic integrands is spectrally accurate once
the spacing is below both), vectorised over the grid points of a sweep. A point whose grid would exceed the cap,
or whose solution breaks a bound every RS solution obeys, is refused rather than reported.
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
N_MIN = 65
"""Fewest nodes of the field grid."""
ENTRY_MAX = 2**24
"""Most (nodes x levels) one point may use per field average (~0.5 s): a point that needs more is reported as
unresolved (ConvergenceError naming the limit), never computed on a coarser grid."""
ENTRY_CHUNK = 2**22
"""(points x nodes x levels) evaluated at once: bounds the working memory (~32 MB per temporary array)."""
THERMAL_STEP = 0.5
"""Grid spacing in B per sqrt(A): the clipping poles sit at Im B ~ 2.8 sqrt(A), so the trapezoid error is
~exp(-2 pi 2.8 / 0.5) -- far below the solver tolerance (0.9 would match the level rule's exp(-2 pi^2))."""


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


def site_moments(s: np.ndarray, logw: np.ndarray, A: np.ndarray, B: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
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


def nodes_wanted(sigma_b: np.ndarray, max_gap: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Nodes (float, uncapped) whose spacing in B resolves both scales on which the site moments change.

    Level scale: between two levels the posterior flips over a B-range ~1/gap (poles at Im B = pi/gap).
    Thermal/clipping scale: with many levels the posterior is a discretised Gaussian of precision >= A; its
    mean saturates at the outer levels over a B-range ~sqrt(A) (poles of Z(B) at Im B ~ 2.8 sqrt(A)). The
    spacing is the smaller of 1/gap and THERMAL_STEP * sqrt(A), so the trapezoid error stays ~exp(-2 pi^2).
    """
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        step = np.minimum(1.0 / max_gap, THERMAL_STEP * np.sqrt(A))
        want = 2.0 * Z_MAX * sigma_b / step + 1.0
    return np.nan_to_num(want, nan=np.inf)


def node_cap(n_levels: int) -> int:
    """Most nodes of the field grid for `n_levels` levels: ENTRY_MAX entries per field average."""
    return max(N_MIN, ENTRY_MAX // n_levels)


def _grid_size(want: np.ndarray, cap: int) -> np.ndarray:
    """Round a wanted node count up to 2^k + 1 (few distinct sizes: points share buckets), within [N_MIN, cap]."""
    w = np.clip(want, N_MIN, cap)
    k = np.ceil(np.log2(w - 1.0))
    return np.minimum(2.0**k + 1, cap).astype(int)


def field_averages(
    S: np.ndarray, logw: np.ndarray, A: np.ndarray, sigma_b: np.ndarray, with_at: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """E_B[Var], E_B[<s>^2], (if asked) E_B[Var^2] with B ~ N(0, sigma_b^2), and the nodes each point wanted.

    S, logw: (P, K) levels and log-weights; A, sigma_b: (P,). Points are bucketed by the grid size they
    need so that an easy point never pays for a hard one, and evaluated in slices of ENTRY_CHUNK entries.
    A point whose wanted grid exceeds `node_cap` is computed on the capped grid; callers flag it unresolved.
    """
    P, K = S.shape
    ev, eq, ev2 = np.zeros(P), np.zeros(P), np.full(P, np.nan)
    want = nodes_wanted(sigma_b, np.diff(S, axis=1).max(axis=1), A)
    need = _grid_size(want, node_cap(K))
    if with_at:
        ev2[:] = 0.0
    for n in np.unique(need):
        idx = np.flatnonzero(need == n)
        z, w = gaussian_grid(int(n))
        per_chunk = max(1, ENTRY_CHUNK // (int(n) * K))  # points per slice
        nodes = int(n) if per_chunk > 1 else max(1, ENTRY_CHUNK // K)  # nodes per slice
        for c in range(0, idx.size, per_chunk):
            ii = idx[c : c + per_chunk]
            for a in range(0, int(n), nodes):  # slices of the node axis: sums accumulate
                B = sigma_b[ii, None] * z[None, a : a + nodes]
                mean, var = site_moments(S[ii, None, :], logw[ii, None, :], np.broadcast_to(A[ii, None], B.shape), B)
                wa = w[a : a + nodes]
                ev[ii] += var @ wa
                eq[ii] += (mean**2) @ wa
                if with_at:
                    ev2[ii] += (var**2) @ wa
    return ev, eq, ev2, want


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
    nodes_wanted: np.ndarray  # field-grid nodes each point needs at its last state
    resolved: np.ndarray  # nodes_wanted within node_cap: the quadrature is trustworthy
    problem: np.ndarray  # "" or the first sanity check the point fails (see `sanity_problems`)

    @property
    def ok(self) -> np.ndarray:
        """Converged, resolved and sane: the points whose numbers may be reported."""
        return self.converged & self.resolved & (self.problem == "")


SANITY_TOL = 1e-6
"""Relative slack of the sanity bounds (the iteration stops at a relative change of ~1e-8)."""


def sanity_problems(
    m: np.ndarray, q: np.ndarray, V: np.ndarray, at: np.ndarray, rho: np.ndarray, q_max: np.ndarray
) -> np.ndarray:
    """First bound each solution violates, "" if none. The bounds hold for any measure on the level set, so a
    violation means the numerics broke down: finite overlaps, 0 <= q <= Q = q + V <= max s^2, V >= 0,
    m^2 <= rho q (Cauchy-Schwarz, which also makes every error >= sigma^2 >= 0) and AT >= 0."""
    tol = SANITY_TOL
    with np.errstate(invalid="ignore", over="ignore"):
        checks = [
            ("m, q, V finite", np.isfinite(m) & np.isfinite(q) & np.isfinite(V)),
            ("q >= 0", q >= 0.0),
            ("V = Q - q >= 0", V >= -tol * q_max),
            ("Q <= max level^2", q + V <= q_max * (1.0 + tol)),
            ("m^2 <= rho q (Cauchy-Schwarz)", m**2 <= rho * q * (1.0 + tol) + 1e-300),
            ("AT value >= 0", at >= 0.0),
        ]
    out = np.full(np.shape(m), "", dtype=object)
    for name, good in reversed(checks):  # the first failing check wins
        out = np.where(good, out, name)
    return out


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
    ev, eq, _, _ = field_averages(batch.S, batch.logw, A, sigma_b)
    return np.stack([ev, eq, batch.rho * A * ev], axis=1)


def _subset(batch: PointBatch, idx: np.ndarray) -> PointBatch:
    return PointBatch(batch.S[idx], batch.logw[idx], batch.load[idx], batch.beta[idx], batch.noise[idx], batch.rho[idx])


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
    cap = node_cap(batch.S.shape[1])
    active = np.arange(P)
    for it in range(1, max_iter + 1):
        # a point whose grid would exceed the cap is frozen (reported unresolved): a coarser grid is no answer
        active = active[_wanted(_subset(batch, active), state[active]) <= cap]
        if active.size == 0:
            break
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
    want = nodes_wanted(sigma_b, np.diff(batch.S, axis=1).max(axis=1), A)
    resolved = want <= cap
    ev2 = np.full(P, np.nan)
    r = np.flatnonzero(resolved)
    _, _, ev2[r], _ = field_averages(batch.S[r], batch.logw[r], A[r], sigma_b[r], with_at=True)
    at = A**2 / batch.load * ev2
    problem = sanity_problems(m, q, V, at, batch.rho, (batch.S**2).max(axis=1))
    return BatchSolution(V, q, m, A, qhat, at, converged, iterations, residual, want, resolved, problem)


def _wanted(batch: PointBatch, state: np.ndarray) -> np.ndarray:
    """Field-grid nodes the points of `batch` need at `state` (V, q, m)."""
    A, qhat = conjugates(state[:, 0], state[:, 1], state[:, 2], batch.load, batch.beta, batch.noise, batch.rho)
    sigma_b = np.sqrt(np.maximum(A**2 * batch.rho + qhat, 0.0))
    return nodes_wanted(sigma_b, np.diff(batch.S, axis=1).max(axis=1), A)


def errors_from_overlaps(setting: RegressionSetting, m: float, q: float, V: float) -> tuple[float, float, float]:
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


def check_solution(sol: BatchSolution, i: int, setting: RegressionSetting, levels: LevelSet) -> None:
    """Raise ConvergenceError, saying which range works, unless point i of `sol` may be reported."""
    if not sol.resolved[i]:
        want, K = float(sol.nodes_wanted[i]), levels.size
        factor = want / node_cap(K)
        if setting.zero_temperature:
            hint = "move alpha=N/M away from the interpolation threshold, or use a finite beta"
        else:
            hint = (
                f"lower beta or raise alpha=N/M by a factor of at least ~{factor:.2g} (the grid grows like "
                "beta x level gap / alpha), or use beta=inf (the zero-temperature limit)"
            )
        raise ConvergenceError(
            f"the RS field average at {setting} with {levels.label} needs ~{want:.3g} grid nodes, above the "
            f"limit of {node_cap(K)} for {K} levels (the Gibbs posterior is too sharp to integrate): {hint}"
        )
    if not sol.converged[i]:
        raise ConvergenceError(
            f"RS saddle point did not converge at {setting} with {levels.label}: last residual "
            f"{sol.residual[i]:.3e} after {sol.iterations[i]} iterations (try more damping or max_iter, "
            "or a warm start from a nearby point)"
        )
    if sol.problem[i]:
        raise ConvergenceError(
            f"RS solution at {setting} with {levels.label} fails the sanity bound {sol.problem[i]} "
            f"(m={sol.m[i]:.4g}, q={sol.q[i]:.4g}, V={sol.V[i]:.4g}, AT={sol.at_value[i]:.4g}): the numerics broke "
            "down here; move alpha, beta or the width towards moderate values"
        )


def result_from_batch(
    sol: BatchSolution, i: int, setting: RegressionSetting, levels: LevelSet, regime: str
) -> RSResult:
    """Package point i of a batch solution; raises ConvergenceError if it is unresolved, did not converge or
    fails a sanity bound."""
    check_solution(sol, i, setting, levels)
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

        return solve_zero_temperature(setting, levels, damping=damping, tol=tol, max_iter=max_iter, initial=initial)
    batch = batch_for([setting], [levels])
    init = None
    if initial is not None and math.isfinite(initial.V) and initial.levels.size == levels.size:
        init = np.array([[max(initial.V, 1e-12), initial.q, initial.m]])
    sol = solve_batch(batch, init, damping=damping, tol=tol, max_iter=max_iter)
    return result_from_batch(sol, 0, setting, levels, regime="finite beta")
