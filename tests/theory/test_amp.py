"""AMP, state evolution and Monte Carlo on finite instances against the RS theory (independent of it: the
instances are random matrices, the sampler is exact MCMC)."""

from __future__ import annotations

import numpy as np
import pytest

from wquant.errors import ConvergenceError
from wquant.theory.amp import run_amp, state_evolution
from wquant.theory.quantizers import LevelSet, power_levels, uniform_levels
from wquant.theory.rs import solve_rs
from wquant.theory.setting import RegressionSetting
from wquant.theory.simulate import fresh_data_error, heat_bath_sampler, make_instance

SPEC_POINT = RegressionSetting(alpha=0.5, sigma=0.1, lam=0.0, beta=5.0)  # theory.md section 10 (M/N = 2)
FIG2_POINT = RegressionSetting(alpha=1.5, sigma=0.01, lam=0.0, beta=20.0)  # the seed's Fig. 2 (sigma, alpha)


@pytest.mark.parametrize(
    ("setting", "levels", "n", "seeds"),
    [
        (SPEC_POINT, uniform_levels(2, 1.0), 4000, (0, 1, 2)),
        (FIG2_POINT, uniform_levels(2, 1.0), 6000, (0, 1)),
        (FIG2_POINT, power_levels(8, 2.0, 1.5), 6000, (0, 1)),
    ],
)
def test_amp_matches_rs_in_rs_phase(setting: RegressionSetting, levels: LevelSet, n: int, seeds: tuple) -> None:
    rs = solve_rs(setting, levels)
    assert rs.rs_stable
    runs = [run_amp(make_instance(setting, n, seed), levels) for seed in seeds]
    for name in ("m", "q", "Q", "chi"):
        amp_mean = np.mean([getattr(r, name) for r in runs])
        assert abs(amp_mean / getattr(rs, name) - 1.0) < 0.02, name
    assert all(r.iterations < 100 for r in runs)


def test_amp_generalization_on_fresh_data_matches_rs() -> None:
    levels = uniform_levels(2, 1.0)
    rs = solve_rs(SPEC_POINT, levels)
    inst = make_instance(SPEC_POINT, 3000, seed=7)
    amp = run_amp(inst, levels)
    exact, empirical = fresh_data_error(inst, amp.w_mean, n_test=3000, seed=8)
    assert abs(exact / rs.gen_error_mean - 1.0) < 0.04
    assert abs(empirical / exact - 1.0) < 0.1  # 3000 fresh samples: ~2.6 % standard error


def test_state_evolution_tracks_amp_per_iteration() -> None:
    levels = uniform_levels(2, 1.0)
    setting = FIG2_POINT
    se = state_evolution(setting, levels, 8)
    amp = run_amp(make_instance(setting, 8000, seed=3), levels, min_iter=8)
    hist = amp.history[: se.shape[0]]
    np.testing.assert_allclose(hist[1:, 0], se[1:, 0], rtol=0.03)  # m_t
    np.testing.assert_allclose(hist[1:, 1], se[1:, 1], rtol=0.03)  # q_t
    np.testing.assert_allclose(hist[1:, 2], se[1:, 2], rtol=0.05)  # V_t
    # and the trajectory is not trivially flat: SE moves by > 10 % between t = 1 and t = 8
    assert abs(se[8, 0] / se[1, 0] - 1.0) > 0.1


def test_amp_and_monte_carlo_marginals_agree_on_one_instance() -> None:
    levels = uniform_levels(2, 1.0)
    inst = make_instance(SPEC_POINT, 200, seed=0)
    amp = run_amp(inst, levels, damping=0.3)
    mc = heat_bath_sampler(inst, levels, n_sweeps=400, burn_in=100, n_chains=2, seed=1)
    for c in range(2):
        assert np.corrcoef(amp.w_mean, mc.mean[:, c])[0, 1] > 0.99
        assert abs(mc.m[c] / amp.m - 1.0) < 0.03
        assert abs(mc.self_overlap[c] / amp.Q - 1.0) < 0.03


def test_rsb_phase_amp_stops_converging_and_chains_disagree() -> None:
    rsb = RegressionSetting(alpha=0.5, sigma=0.1, lam=0.0, beta=20.0)
    levels = uniform_levels(1, 1.5)
    assert solve_rs(rsb, levels).at_value > 1.0
    with pytest.raises(ConvergenceError, match="residual"):
        run_amp(make_instance(rsb, 2000, seed=0), levels, max_iter=300)
    mc = heat_bath_sampler(make_instance(rsb, 150, seed=0), levels, n_sweeps=300, burn_in=100, seed=1)
    assert mc.q_between < 0.75 * mc.q_self.min()
    # control in the RS phase: the same diagnostic shows two chains in one state
    mc_rs = heat_bath_sampler(make_instance(SPEC_POINT, 150, seed=0), uniform_levels(2, 1.0), 300, 100, seed=1)
    assert mc_rs.q_between > 0.95 * mc_rs.q_self.min()
