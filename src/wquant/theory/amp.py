"""Finite-beta approximate message passing for the quantized Gibbs measure, and its state evolution.

AMP returns the Gibbs marginals' means and variances on one instance; its state evolution is the RS map of
`wquant.theory.rs` iterated without damping, so the fixed points are the RS saddle points (docs/theory.md 6).
In the RSB phase (AT > 1) the iteration stops converging: that is reported as a ConvergenceError.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from wquant.errors import ConvergenceError, ParameterError
from wquant.theory._validation import check_damping, check_positive_int, check_tolerance
from wquant.theory.quantizers import LevelSet, site_log_weights
from wquant.theory.rs import batch_for, prior_start, rs_map, site_moments
from wquant.theory.setting import RegressionSetting
from wquant.theory.simulate import RegressionInstance, matvec, rmatvec


@dataclass(frozen=True)
class AMPResult:
    """AMP fixed point on one instance. history rows: (m, q, V) after each denoising step (row 0 = init)."""

    w_mean: np.ndarray
    w_var: np.ndarray
    m: float
    q: float
    Q: float
    chi: float
    train_error: float
    gen_error_mean: float  # ||w0 - <w>||^2 / N + sigma^2
    iterations: int
    residual: float
    history: np.ndarray


def _prior_moments(s: np.ndarray, logw: np.ndarray) -> tuple[float, float]:
    p = np.exp(logw - logw.max())
    p /= p.sum()
    mean = float(p @ s)
    return mean, float(p @ (s - mean) ** 2)


def run_amp(
    instance: RegressionInstance,
    levels: LevelSet,
    *,
    damping: float = 0.0,
    tol: float = 1e-9,
    max_iter: int = 300,
    min_iter: int = 1,
) -> AMPResult:
    """Finite-beta AMP (docs/theory.md 6.1) at the instance's setting.

    Stops when the mean squared change of <w> per weight, relative to mean <w>^2, drops below `tol`;
    raises ConvergenceError with the last residual after `max_iter` iterations (the RSB signature).
    `min_iter` forces a fixed number of iterations (to compare with state evolution step by step).
    """
    setting = instance.setting
    if setting.zero_temperature:
        raise ParameterError(
            "beta=inf is invalid for AMP: finite-beta AMP needs a finite beta; anneal beta upward for low temperature"
        )
    eta = check_damping(damping)
    tol = check_tolerance(tol)
    max_iter = check_positive_int("max_iter", max_iter)
    F, y, w0 = instance.F, instance.y, instance.w0
    n_samples, n = F.shape
    load, beta = n_samples / n, setting.beta
    s = levels.values
    logw = site_log_weights(levels, setting)
    mu0, var0 = _prior_moments(s, logw)
    w_hat = np.full(n, mu0)
    v = np.full(n, var0)
    g = np.zeros(n_samples)
    history = [(float(w0 @ w_hat) / n, float(np.mean(w_hat**2)), float(np.mean(v)))]
    residual = math.inf
    for it in range(1, max_iter + 1):
        V = float(np.mean(v))
        z = matvec(F, w_hat) - V * g
        g_new = beta * (y - z) / (1.0 + beta * V)
        g = g_new if it == 1 else (1.0 - eta) * g_new + eta * g
        A = load * beta / (1.0 + beta * V)
        B = rmatvec(F, g) + A * w_hat
        mean_new, var_new = site_moments(s, logw, np.full(n, A), B)
        residual = float(np.mean((mean_new - w_hat) ** 2) / max(np.mean(w_hat**2), 1e-12))
        w_hat = (1.0 - eta) * mean_new + eta * w_hat
        v = (1.0 - eta) * var_new + eta * v
        history.append((float(w0 @ w_hat) / n, float(np.mean(w_hat**2)), float(np.mean(v))))
        if not np.isfinite(residual):
            break
        if residual < tol and it >= min_iter:
            return AMPResult(
                w_mean=w_hat,
                w_var=v,
                m=float(w0 @ w_hat) / n,
                q=float(np.mean(w_hat**2)),
                Q=float(np.mean(v + w_hat**2)),
                chi=beta * float(np.mean(v)),
                train_error=float(np.mean((y - matvec(F, w_hat)) ** 2)),
                gen_error_mean=float(np.mean((w0 - w_hat) ** 2)) + setting.noise_variance,
                iterations=it,
                residual=residual,
                history=np.asarray(history),
            )
    raise ConvergenceError(
        f"AMP did not converge in {max_iter} iterations at {setting} with {levels.label}: last residual "
        f"{residual:.3e} (expected in the RSB phase, AT > 1; otherwise add damping)"
    )


def state_evolution(setting: RegressionSetting, levels: LevelSet, n_iter: int) -> np.ndarray:
    """Rows (m, q, V) for t = 0..n_iter of undamped finite-beta state evolution, started like AMP from the
    prior: it predicts AMP's per-iteration overlaps on large instances."""
    n_iter = check_positive_int("n_iter", n_iter)
    batch = batch_for([setting], [levels])
    state = prior_start(batch)
    state[:, 0] = _prior_moments(levels.values, site_log_weights(levels, setting))[1]
    rows = [(state[0, 2], state[0, 1], state[0, 0])]
    for _ in range(n_iter):
        state = rs_map(batch, state)
        rows.append((state[0, 2], state[0, 1], state[0, 0]))
    return np.asarray(rows)
