"""RS saddle point, AT and zero-temperature theory against numbers computed independently
(/work/shared/research/theory.md section 10 and 7) and against the Marchenko-Pastur ridge formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import quad
from scipy.optimize import brentq

from wquant.errors import ConvergenceError
from wquant.theory.quantizers import uniform_levels
from wquant.theory.rs import solve_rs
from wquant.theory.setting import RegressionSetting
from wquant.theory.zero_temperature import interpolation_threshold, ridge_generalization_error

INF = math.inf


def mp_ridge_error(load: float, lam: float, noise: float, rho: float = 1.0) -> float:
    """Ridge test error from the Marchenko-Pastur spectrum of F^T F (independent of any replica formula).

    Eigenvalues x = load * nu, nu ~ MP with ratio gamma = 1/load; an atom at 0 of mass 1 - load if load < 1.
    E_g = noise + rho lam^2 E[1/(x+lam)^2] + noise E[x/(x+lam)^2].
    """
    gamma = 1.0 / load
    lo, hi = (1 - math.sqrt(gamma)) ** 2, (1 + math.sqrt(gamma)) ** 2

    def dens(nu: float) -> float:
        return math.sqrt(max((hi - nu) * (nu - lo), 0.0)) / (2 * math.pi * gamma * nu)

    cont_mass = min(1.0, load)
    bias = quad(lambda nu: dens(nu) * lam**2 / (load * nu + lam) ** 2, lo, hi, limit=200)[0]
    var = quad(lambda nu: dens(nu) * load * nu / (load * nu + lam) ** 2, lo, hi, limit=200)[0]
    bias += (1.0 - cont_mass) * 1.0  # atom at 0: lam^2/lam^2
    return noise + rho * bias + noise * var


@pytest.mark.parametrize("load", [0.5, 1.5, 3.0])
def test_many_bits_equal_closed_form_ridge(load: float) -> None:
    noise, lam = 0.1, 0.1
    oracle = mp_ridge_error(load, lam, noise)
    st = RegressionSetting(alpha=1.0 / load, sigma=math.sqrt(noise), lam=lam, beta=INF)
    r = solve_rs(st, uniform_levels(10, 6.0))
    assert abs(r.gen_error - oracle) < 1e-3
    assert abs(ridge_generalization_error(st) - oracle) < 1e-6
    # finite beta: the Gibbs mean of a Gaussian posterior is the ridge estimator at any temperature
    r_beta = solve_rs(st.with_(beta=2.0), uniform_levels(10, 6.0))
    assert abs(r_beta.gen_error_mean - oracle) < 1e-3


def test_spec_reference_point_rs_phase() -> None:
    st = RegressionSetting(alpha=0.5, sigma=0.1, lam=0.0, beta=5.0)
    r = solve_rs(st, uniform_levels(2, 1.0))
    for got, want in [(r.m, 0.6339), (r.q, 0.4955), (r.Q, 0.5883), (r.chi, 0.4641), (r.at_value, 0.275)]:
        assert abs(got - want) < 1.5e-3
    assert r.rs_stable


def test_spec_reference_point_rsb_phase() -> None:
    st = RegressionSetting(alpha=0.5, sigma=0.1, lam=0.0, beta=20.0)
    r = solve_rs(st, uniform_levels(1, 1.5))
    assert abs(r.m - 0.921) < 2e-3 and abs(r.q - 2.207) < 2e-3
    assert abs(r.at_value - 14.9) < 0.1 and not r.rs_stable


@pytest.mark.parametrize(("bits", "width", "at"), [(1, 0.7, 12.25), (2, 1.4, 7.05), (3, 2.0, 2.72), (4, 2.5, 0.93)])
def test_large_beta_at_values(bits: int, width: float, at: float) -> None:
    st = RegressionSetting(alpha=0.5, sigma=0.1, lam=0.0, beta=100.0)
    r = solve_rs(st, uniform_levels(bits, width))
    assert abs(r.at_value - at) / at < 0.01
    # T=0 asymptotic slope (theory.md 4.2) times beta: same within a few per cent
    r0 = solve_rs(st.with_(beta=INF), uniform_levels(bits, width))
    assert abs(100.0 * r0.at_slope - r.at_value) / r.at_value < 0.05


def test_finite_beta_converges_to_zero_temperature() -> None:
    st = RegressionSetting(alpha=0.5, sigma=0.1, lam=0.0, beta=INF)
    r0 = solve_rs(st, uniform_levels(1, 0.7))
    assert abs(r0.chi - 0.3328) < 5e-4 and abs(r0.train_error - 0.2821) < 5e-4 and abs(r0.gen_error - 0.501) < 1e-3
    assert r0.at_value == INF and r0.regime == "T=0 unique minimiser"
    r200 = solve_rs(st.with_(beta=200.0), uniform_levels(1, 0.7))
    assert abs(r200.chi - 0.3330) < 5e-4
    assert abs(r200.train_error - r0.train_error) < 5e-3


@pytest.mark.parametrize(
    ("bits", "widths", "want"),
    [
        (1, [0.5, 1.0, 1.5, 2.0, 3.0, 4.0], [0.142, 0.394, 0.523, 0.574, 0.609, 0.622]),
        (2, [0.5, 1.0, 1.5, 2.0, 3.0, 4.0], [0.144, 0.445, 0.676, 0.780, 0.843, 0.861]),
    ],
)
def test_interpolation_threshold(bits: int, widths: list[float], want: list[float]) -> None:
    got = [interpolation_threshold(uniform_levels(bits, w), sigma=0.1) for w in widths]
    np.testing.assert_allclose(got, want, atol=1.5e-3)


def test_interpolation_regime_below_threshold() -> None:
    lv = uniform_levels(2, 1.5)
    load_c = interpolation_threshold(lv, sigma=0.1)
    st = RegressionSetting(alpha=1.0 / (0.8 * load_c), sigma=0.1, lam=0.0, beta=INF)
    r = solve_rs(st, lv)
    assert r.regime == "T=0 interpolation" and r.train_error == 0.0 and r.V > 0
    assert abs(r.m - st.load) < 1e-6  # m = alpha rho in M/N units
    assert r.at_value < 1.0
    # at large finite beta the Gibbs measure approaches the same interpolator measure
    rb = solve_rs(st.with_(beta=2000.0), lv)
    assert abs(rb.q - r.q) < 0.01 and abs(rb.V - r.V) < 0.01


def test_at_line_follows_constant_beta_delta_squared() -> None:
    """theory.md 4.2: at large beta the AT boundary sits at beta Delta^2 ~ 6 L/(L - 1) = 12 (L = M/N = 2)."""
    for beta, bits, want in [(5.0, 3, 5.42), (20.0, 3, 2.71), (20.0, 2, 1.20), (100.0, 3, 1.25)]:
        st = RegressionSetting(alpha=0.5, sigma=0.1, lam=0.0, beta=beta)

        def at_minus_one(w: float, st: RegressionSetting = st, bits: int = bits) -> float:
            return solve_rs(st, uniform_levels(bits, w)).at_value - 1.0

        w_at = brentq(at_minus_one, 0.3 * want, 1.6 * want, xtol=1e-3)
        assert abs(w_at - want) / want < 0.02
        delta = 2 * w_at / (2**bits - 1)
        if bits == 3:
            assert abs(beta * delta**2 - 12.0) / 12.0 < 0.15


def test_non_convergence_is_raised_not_returned() -> None:
    st = RegressionSetting(alpha=0.5, sigma=0.1, lam=0.0, beta=20.0)
    with pytest.raises(ConvergenceError, match="residual"):
        solve_rs(st, uniform_levels(3, 2.0), max_iter=3)
