"""beta -> inf: ERM on the level set (regime I) and the uniform measure over interpolators (regime II).

Regime I (training error > 0): weight by weight the estimator is the quantizer applied to a ridge-like
Gaussian field, so every order parameter is an explicit Gaussian CDF/PDF at the switching points tau_k
(docs/theory.md 3.4). Its AT eigenvalue grows linearly in beta (4.2): strict ERM has no RS region, so we
report the slope at_value/beta instead. Regime II (lam = 0, fewer samples than the interpolation
threshold) keeps a finite V and is the finite-beta machinery with the conjugates' "1 +" dropped (3.5).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from scipy.stats import norm

from wquant.errors import ConvergenceError
from wquant.theory._validation import check_damping, check_positive_int, check_tolerance
from wquant.theory.quantizers import LevelSet, zero_temperature_costs
from wquant.theory.rs import (
    RSResult,
    batch_for,
    errors_from_overlaps,
    result_from_batch,
    sanity_problems,
    solve_batch,
)
from wquant.theory.setting import RegressionSetting


def switching_points(levels: LevelSet, costs: np.ndarray, a_tilde: float) -> tuple[np.ndarray, np.ndarray]:
    """(tau, jump sizes) of B -> argmin_s {a s^2/2 + c(s) - B s}: the lower convex hull of the levels.

    For V1/V2 every level is on the hull; a level dominated by a non-convex cost is skipped.
    """
    s = levels.values
    g = 0.5 * a_tilde * s**2 + costs
    hull = [0]
    for k in range(1, s.size):  # loop over levels (K <= 2**16), not over weights
        while len(hull) >= 2:
            i, j = hull[-2], hull[-1]
            if (g[j] - g[i]) * (s[k] - s[j]) >= (g[k] - g[j]) * (s[j] - s[i]):
                hull.pop()
            else:
                break
        hull.append(k)
    h = np.asarray(hull)
    jumps = np.diff(s[h])
    tau = np.diff(g[h]) / jumps
    return tau, jumps


def _regime_one_step(
    setting: RegressionSetting, levels: LevelSet, costs: np.ndarray, chi: float, q: float
) -> tuple[float, float, dict[str, float]]:
    load, rho = setting.load, setting.rho
    a_t = load / (1.0 + chi)
    m = rho * a_t * chi
    err_r = rho + setting.noise_variance - 2.0 * m + q
    qhat_t = load * err_r / (1.0 + chi) ** 2
    sd = math.sqrt(a_t**2 * rho + qhat_t)
    tau, jumps = switching_points(levels, costs, a_t)
    dens = norm.pdf(tau, scale=sd)
    chi_new = float(np.sum(jumps * dens))
    cdf = np.concatenate([[0.0], norm.cdf(tau / sd), [1.0]])
    s = levels.values
    # levels off the hull get zero mass; map hull intervals back to levels by value
    hull_levels = np.concatenate([[s[0]], s[0] + np.cumsum(jumps)])
    q_new = float(np.sum(hull_levels**2 * np.diff(cdf)))
    at_slope = load / (1.0 + chi) ** 2 / 6.0 * float(np.sum(jumps**3 * dens))
    return chi_new, q_new, {"m": m, "err_r": err_r, "a": a_t, "qhat": qhat_t, "at_slope": at_slope}


def solve_unique_minimiser(
    setting: RegressionSetting,
    levels: LevelSet,
    *,
    damping: float = 0.5,
    tol: float = 1e-10,
    max_iter: int = 5000,
    initial: RSResult | None = None,
) -> RSResult:
    """Regime I: damped iteration of the closed (chi, q) system. Diverging chi means interpolation."""
    eta = check_damping(damping)
    tol = check_tolerance(tol)
    max_iter = check_positive_int("max_iter", max_iter)
    costs = zero_temperature_costs(levels, setting)
    if initial is not None and math.isfinite(initial.chi) and initial.chi > 0:
        chi, q = initial.chi, initial.q
    else:
        chi, q = 0.5, float(np.mean(levels.values**2))
    res = math.inf
    for it in range(1, max_iter + 1):
        chi_new, q_new, _ = _regime_one_step(setting, levels, costs, chi, q)
        res = max(abs(chi_new - chi) / (abs(chi) + 1e-12), abs(q_new - q) / (abs(q) + 1e-12))
        if not (math.isfinite(res) and chi_new < 1e8):
            break
        chi, q = (1 - eta) * chi_new + eta * chi, (1 - eta) * q_new + eta * q
        if res < tol:
            _, _, aux = _regime_one_step(setting, levels, costs, chi, q)
            m = aux["m"]
            problem = sanity_problems(
                np.array(m), np.array(q), np.array(0.0), np.array(chi), np.array(setting.rho), np.max(levels.values**2)
            )[()]
            if problem:
                raise ConvergenceError(
                    f"zero-temperature RS (unique minimiser) at {setting} with {levels.label} fails the sanity "
                    f"bound {problem} (m={m:.4g}, q={q:.4g}, chi={chi:.4g}): the numerics broke down here; move "
                    "alpha, lam or the width towards moderate values"
                )
            train = aux["err_r"] / (1.0 + chi) ** 2
            _, gen, gen_mean = errors_from_overlaps(setting, m, q, 0.0)
            return RSResult(
                setting=setting,
                levels=levels,
                m=m,
                q=q,
                Q=q,
                V=0.0,
                chi=chi,
                A=aux["a"],
                qhat=aux["qhat"],
                train_error=train,
                gen_error=gen,
                gen_error_mean=gen_mean,
                at_value=math.inf,
                at_slope=aux["at_slope"],
                regime="T=0 unique minimiser",
                iterations=it,
                residual=res,
            )
    raise ConvergenceError(
        f"zero-temperature RS (unique minimiser) did not converge at {setting} with {levels.label}: "
        f"last residual {res:.3e}, chi={chi:.4g} (chi -> inf means the interpolation regime; use lam = 0 "
        "or a finite beta)"
    )


def solve_interpolation(
    setting: RegressionSetting,
    levels: LevelSet,
    *,
    damping: float = 0.5,
    tol: float = 1e-8,
    max_iter: int = 3000,
    initial: RSResult | None = None,
) -> RSResult:
    """Regime II: beta -> inf Gibbs measure spread over the zero-training-error configurations."""
    batch = batch_for([setting], [levels])
    init = None
    if initial is not None and 0 < initial.V < math.inf:
        init = np.array([[initial.V, initial.q, initial.m]])
    sol = solve_batch(batch, init, damping=damping, tol=tol, max_iter=max_iter)
    res = result_from_batch(sol, 0, setting, levels, regime="T=0 interpolation")
    if res.V < 1e-9:
        raise ConvergenceError(
            f"interpolation regime collapsed (V={res.V:.2e}) at {setting}: above the interpolation threshold,"
            " use the unique-minimiser regime"
        )
    return res


def interpolation_threshold(levels: LevelSet, sigma: float, rho: float = 1.0, tol: float = 1e-12) -> float:
    """alpha_c as M/N: below it (lam = 0) zero-training-error configurations exist. Returns the load M/N;
    the paper's alpha = N/M threshold is 1 / the returned value (continuous weights: 1)."""
    s, t, gaps = levels.values, levels.thresholds, levels.gaps
    noise = sigma**2
    load, q = 0.5, float(np.mean(s**2))
    for _ in range(20000):
        v_h = rho + (rho + noise - 2.0 * load * rho + q) / load
        sd = math.sqrt(max(v_h, 1e-300))
        c_phi = float(np.sum(gaps * norm.pdf(t, scale=sd)))
        cdf = np.concatenate([[0.0], norm.cdf(t / sd), [1.0]])
        q_new = float(np.sum(s**2 * np.diff(cdf)))
        step = max(abs(c_phi - load), abs(q_new - q))
        load, q = 0.5 * (load + c_phi), 0.5 * (q + q_new)
        if step < tol:
            return load
    raise ConvergenceError(f"interpolation threshold did not converge for {levels.label}: last step {step:.2e}")


def cheapest_levels(levels: LevelSet, setting: RegressionSetting) -> LevelSet:
    """The levels of least zero-temperature cost c(s) (all of them when lam = 0 or for V3).

    When two or more tie (e.g. +-Delta/2 of a uniform grid under V1/V2), interpolating with them alone
    minimises the penalty and the training error at once, so below their interpolation threshold the T = 0
    Gibbs measure is uniform over those interpolators, whatever lam > 0 is.
    """
    costs = zero_temperature_costs(levels, setting)
    spread = float(costs.max() - costs.min())
    keep = costs <= costs.min() + 1e-9 * spread  # ties up to rounding of the level values
    if keep.all():
        return levels
    return LevelSet(tuple(levels.values[keep]), label=f"cheapest levels of {levels.label}")


def solve_zero_temperature(
    setting: RegressionSetting,
    levels: LevelSet,
    *,
    damping: float = 0.5,
    tol: float = 1e-8,
    max_iter: int = 3000,
    initial: RSResult | None = None,
) -> RSResult:
    """beta = inf: regime II (uniform measure over interpolators) when the cheapest levels -- all levels at
    lam = 0 -- are degenerate and can interpolate (load <= their alpha_c), else regime I (unique minimiser)."""
    sub = cheapest_levels(levels, setting)
    if sub.size >= 2 and setting.load <= interpolation_threshold(sub, setting.sigma, setting.rho):
        res = solve_interpolation(setting, sub, damping=damping, tol=tol, max_iter=max_iter, initial=initial)
        if sub.size == levels.size:
            return res
        cheap = ", ".join(f"{v:.4g}" for v in sub.levels)
        return replace(res, levels=levels, regime=f"T=0 interpolation on the cheapest levels {{{cheap}}}")
    return solve_unique_minimiser(
        setting, levels, damping=damping, tol=min(tol, 1e-10), max_iter=max(max_iter, 5000), initial=initial
    )


def ridge_order_parameters(setting: RegressionSetting) -> tuple[float, float, float]:
    """(chi, m, q) of continuous-weight ridge regression at beta = inf (docs/theory.md 3.6); the b -> inf
    limit of the quantized theory. chi solves lam chi^2 + (L + lam - 1) chi - 1 = 0, L = M/N."""
    load, lam, rho, noise = setting.load, setting.lam, setting.rho, setting.noise_variance
    b = load + lam - 1.0
    if lam == 0.0:
        if load <= 1.0:
            raise ConvergenceError(f"ridgeless regression interpolates at alpha={setting.alpha} >= 1: chi = inf")
        chi = 1.0 / b
    elif b >= 0:
        chi = 2.0 / (b + math.sqrt(b * b + 4.0 * lam))
    else:
        chi = (-b + math.sqrt(b * b + 4.0 * lam)) / (2.0 * lam)
    a_t = load / (1.0 + chi)
    m = rho * a_t * chi
    # q (a_t + lam)^2 = a_t^2 rho + load (rho + noise - 2 m + q) / (1 + chi)^2, linear in q
    c = load / (1.0 + chi) ** 2
    q = (a_t**2 * rho + c * (rho + noise - 2.0 * m)) / ((a_t + lam) ** 2 - c)
    return chi, m, q


def ridge_generalization_error(setting: RegressionSetting) -> float:
    """Fresh-sample error rho + sigma^2 - 2m + q of ridge regression (the dashed reference in Fig. 5)."""
    _, m, q = ridge_order_parameters(setting)
    return setting.rho + setting.noise_variance - 2.0 * m + q
