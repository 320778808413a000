"""What the theory refuses to report: solutions that break bounds any measure on the level set obeys, points whose
field grid would exceed its cap, and instances beyond the available memory."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wquant.errors import BudgetError, ConvergenceError
from wquant.theory.quantizers import uniform_levels
from wquant.theory.rs import sanity_problems, solve_rs
from wquant.theory.setting import RegressionSetting
from wquant.theory.simulate import check_memory, make_instance


def test_sanity_bounds_name_the_violated_bound() -> None:
    one = np.ones(1)
    cases = [
        ((np.nan, 0.5, 0.1, 0.2), "finite"),
        ((0.1, -0.1, 0.1, 0.2), "q >= 0"),
        ((0.1, 0.5, -0.1, 0.2), "V = Q - q >= 0"),
        ((0.1, 0.9, 0.2, 0.2), "Q <= max level"),
        ((0.8, 0.5, 0.1, 0.2), "Cauchy-Schwarz"),  # alpha = 1e-4's old answer: m = 4.6 > sqrt(rho q)
        ((0.1, 0.5, 0.1, -1.0), "AT value >= 0"),
        ((0.1, 0.5, 0.1, np.nan), "AT value >= 0"),
    ]
    for (m, q, V, at), name in cases:
        got = sanity_problems(m * one, q * one, V * one, at * one, one, one)[0]
        assert name in got, (m, q, V, at, got)
    assert sanity_problems(0.7 * one, 0.5 * one, 0.1 * one, math.inf * one, one, one)[0] == ""


def test_real_solutions_pass_the_sanity_bounds() -> None:
    """No false alarms: a spread of ordinary points (both phases, both regimes) all pass."""
    for alpha, beta, bits, width in [(0.5, 5.0, 2, 1.0), (0.5, 20.0, 1, 1.5), (1.5, 100.0, 4, 2.0), (3.0, 1.0, 3, 3.0)]:
        st = RegressionSetting(alpha=alpha, sigma=0.1, lam=0.0, beta=beta)
        r = solve_rs(st, uniform_levels(bits, width))
        assert 0.0 <= r.q <= r.Q <= width**2 and r.m**2 <= r.q and r.gen_error >= 0.01 and r.train_error >= 0.0


def test_too_sharp_posterior_is_refused_not_reported() -> None:
    """alpha = N/M = 1e-6 at beta = 20 needs a ~2e7-node grid. Before, the grid was silently capped: at alpha = 1e-4
    that reported m = 4.6 and E_g = -7.6 (the answer is m = 0.692, which the finer grid now finds)."""
    st = RegressionSetting(alpha=1e-6, sigma=0.01, lam=0.0, beta=20.0)
    with pytest.raises(ConvergenceError, match=r"grid nodes.*raise alpha=N/M.*beta=inf"):
        solve_rs(st, uniform_levels(2, 1.0))
    # the zero-temperature theory answers there, and its answer is sane
    r0 = solve_rs(st.with_(beta=math.inf), uniform_levels(2, 1.0))
    assert r0.m**2 <= r0.q and r0.gen_error > 0.0


def test_instances_beyond_memory_are_refused_before_allocating() -> None:
    st = RegressionSetting(alpha=1e-4, sigma=0.01, lam=0.0, beta=20.0)  # N = 4000 -> M = 4e7: 596 GiB of float32
    with pytest.raises(BudgetError, match=r"N=4000 weights and M=40000000 samples .* needs about 59\d GiB"):
        make_instance(st, 4000, seed=0)
    with pytest.raises(BudgetError, match=r"needs about 1 GiB but only 1 GiB is available \(at most 50%"):
        check_memory(2**30, "it", "use less", available_bytes=2**30)
    check_memory(2**29, "it", "use less", available_bytes=2**30)  # half of it is fine
