"""Numerics of the RS solver at settings the reference tables do not reach, against oracles computed here:
a brute-force fixed point on a fixed very fine field grid (many bits, large beta) and the beta -> inf limit of the
finite-beta solver (degenerate cheapest levels at T = 0)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import wquant.theory.rs as rs
from wquant.theory.quantizers import site_log_weights, uniform_levels
from wquant.theory.rs import field_averages, solve_rs
from wquant.theory.setting import RegressionSetting

FINE_NODES = 2**13 + 1  # spacing ~0.003 sd of the field: >= 30 nodes per thermal width sqrt(A) at beta = 100, b = 7


def _posterior(s: np.ndarray, logw: np.ndarray, A: float, B: np.ndarray) -> np.ndarray:
    logits = logw[None, :] - 0.5 * A * s[None, :] ** 2 + B[:, None] * s[None, :]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def brute_force_rs(
    setting: RegressionSetting, s: np.ndarray, logw: np.ndarray, nodes: int = FINE_NODES
) -> dict[str, float]:
    """RS fixed point by plain quadrature on `nodes` nodes over +-9 sd of the field, no grid sizing at all.

    m is computed directly as E[w0 <s>] = rho A E[B <s>] / sd^2 (E[w0 | B] is linear in B), not by Stein's
    lemma as the solver does."""
    load, beta, noise, rho = setting.load, setting.beta, setting.noise_variance, setting.rho
    z = np.linspace(-9.0, 9.0, nodes)
    g = np.exp(-0.5 * z**2)
    g /= g.sum()
    p0 = np.exp(logw - logw.max())
    p0 /= p0.sum()
    V, q, m = float(p0 @ (s - p0 @ s) ** 2), float(p0 @ s) ** 2, 0.0

    def sweep(V: float, q: float, m: float) -> tuple[float, float, float, float, float]:
        d = 1.0 + beta * V
        A = load * beta / d
        sd = math.sqrt(A * A * rho + load * beta**2 * (rho + noise - 2 * m + q) / d**2)
        B = sd * z
        p = _posterior(s, logw, A, B)
        mean = p @ s
        var = p @ (s - 0.0) ** 2 - mean**2
        return float(var @ g), float(mean**2 @ g), float(rho * A * ((B * mean) @ g) / sd**2), A, float(var**2 @ g)

    for _ in range(2000):
        Vn, qn, mn, _, _ = sweep(V, q, m)
        step = max(abs(Vn - V) / V, abs(qn - q) / max(q, 1e-12), abs(mn - m) / max(abs(m), 1e-12))
        V, q, m = 0.5 * (V + Vn), 0.5 * (q + qn), 0.5 * (m + mn)
        if step < 1e-12:
            break
    _, _, _, A, ev2 = sweep(V, q, m)
    return {
        "m": m,
        "q": q,
        "chi": beta * V,
        "at_value": A * A / load * ev2,
        "gen_error": rho + noise - 2 * m + q + V,
    }


@pytest.mark.parametrize(
    ("alpha", "sigma", "lam", "bits", "width", "nodes"),
    [
        (0.5, 0.1, 0.0, 7, 0.5, FINE_NODES),
        (1.5, 0.01, 0.05, 7, 0.5, FINE_NODES),
        (0.5, 0.1, 0.0, 1, 5.0, 2**17 + 1),  # gap 10: the grid wants ~7e4 nodes, above the old cap of 32769
    ],
)
def test_large_beta_matches_brute_force_grid(
    alpha: float, sigma: float, lam: float, bits: int, width: float, nodes: int
) -> None:
    """beta = 100. b = 7, omega = 0.5: the level gap (1/127) is far below the thermal width 1/sqrt(A), so a grid
    sized by the gap alone was off by up to 6 % (AT), 2 % (chi, m, E_g). b = 1, omega = 5 (deep RSB, AT ~ 800):
    the old cap on the grid left AT 0.4 % off; the grid now grows to what the point needs."""
    st = RegressionSetting(alpha=alpha, sigma=sigma, lam=lam, beta=100.0)
    lv = uniform_levels(bits, width)
    r = solve_rs(st, lv)
    ref = brute_force_rs(st, lv.values, site_log_weights(lv, st), nodes)
    for name, want in ref.items():
        assert abs(getattr(r, name) - want) <= 1e-6 * max(1.0, abs(want)), (name, getattr(r, name), want)


def test_field_average_slices_match_direct_quadrature(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slicing the (points x nodes x levels) work into small chunks gives the same averages as quadrature."""
    monkeypatch.setattr(rs, "ENTRY_CHUNK", 100)  # forces slices of the node axis (n x K > 100)
    s = uniform_levels(3, 1.2).values
    A, sd = np.array([7.0, 3.0]), np.array([9.0, 4.0])
    ev, eq, ev2, _ = field_averages(np.stack([s, s]), np.zeros((2, s.size)), A, sd, with_at=True)
    z = np.linspace(-9.0, 9.0, FINE_NODES)
    g = np.exp(-0.5 * z**2)
    g /= g.sum()
    for i in range(2):
        p = _posterior(s, np.zeros(s.size), float(A[i]), sd[i] * z)
        mean = p @ s
        var = p @ s**2 - mean**2
        np.testing.assert_allclose([ev[i], eq[i], ev2[i]], [var @ g, mean**2 @ g, var**2 @ g], rtol=1e-9)


@pytest.mark.parametrize("cost", ["V1", "V2"])
def test_degenerate_cheapest_pair_at_zero_temperature_is_the_large_beta_limit(cost: str) -> None:
    """lam > 0, b = 2, omega = 1.5: the cheapest levels +-0.5 tie and interpolate below M/N ~ 0.142, so the T = 0
    measure is uniform over their interpolators (regime II on that sub-grid), where regime I used to raise.
    Finite beta approaches it as 1/beta: Richardson extrapolation from beta = 1e3, 1e4 must land on it."""
    st = RegressionSetting(alpha=10.0, sigma=0.1, lam=0.1, beta=math.inf, cost=cost)
    lv = uniform_levels(2, 1.5)
    r0 = solve_rs(st, lv)
    assert r0.regime.startswith("T=0 interpolation on the cheapest levels") and r0.train_error == 0.0
    assert abs(r0.m - st.load) < 1e-6  # m = (M/N) rho on the interpolating branch
    r3, r4 = (solve_rs(st.with_(beta=b), lv) for b in (1e3, 1e4))
    for name in ("m", "q", "V", "at_value", "gen_error", "gen_error_mean"):
        x0, x3, x4 = (getattr(r, name) for r in (r0, r3, r4))
        assert abs(x4 - x0) < 1e-3 and abs(x4 - x0) < 0.2 * abs(x3 - x0) + 1e-9, name
        assert abs((10.0 * x4 - x3) / 9.0 - x0) < 2e-5, name


def test_above_the_cheapest_pairs_threshold_regime_one_is_kept() -> None:
    st = RegressionSetting(alpha=5.0, sigma=0.1, lam=0.1, beta=math.inf)  # M/N = 0.2 > 0.142
    r = solve_rs(st, uniform_levels(2, 1.5))
    assert r.regime == "T=0 unique minimiser" and r.train_error > 0.0
