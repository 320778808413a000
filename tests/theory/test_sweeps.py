"""Sweeps against the reference numbers of theory.md section 7 (computed independently): optimal omega,
the AT line in (b, omega), non-uniform grids enlarging the RS region, and the double-descent peak shift."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wquant.errors import ParameterError
from wquant.theory.setting import RegressionSetting
from wquant.theory.sweeps import error_vs_alpha, error_vs_width, phase_diagram

M_OVER_N_2 = 0.5  # theory.md's tables use M/N = 2, i.e. the paper's alpha = N/M = 0.5


def test_optimal_width_at_zero_temperature() -> None:
    st = RegressionSetting(alpha=M_OVER_N_2, sigma=0.1, lam=0.0, beta=math.inf)
    sweep = error_vs_width(st, [1, 2, 3], np.linspace(0.2, 3.0, 15))
    np.testing.assert_allclose(sweep.best_width, [0.714, 1.399, 1.997], rtol=0.01)
    np.testing.assert_allclose(sweep.best_error, [0.501, 0.221, 0.0906], atol=1e-3)
    # a real interior optimum: the grid ends are worse
    assert np.all(sweep.gen_error[:, 0] > sweep.best_error) and np.all(sweep.gen_error[:, -1] > sweep.best_error)


def test_phase_diagram_rsb_at_few_bits_and_large_width() -> None:
    st = RegressionSetting(alpha=M_OVER_N_2, sigma=0.1, lam=0.0, beta=20.0)
    for bits, want in [(1, 0.505), (2, 1.20), (3, 2.71), (4, 5.81)]:
        pd = phase_diagram(st, [bits], np.linspace(0.2 * want, 1.5 * want, 40))
        assert pd.converged.all()
        w_at = pd.boundary()[0]
        assert abs(w_at - want) / want < 0.02
        # RS below the line, RSB above it
        assert np.all(pd.rs[0, pd.widths < 0.95 * w_at]) and not np.any(pd.rs[0, pd.widths > 1.05 * w_at])


def test_mild_non_uniform_grid_enlarges_rs_region() -> None:
    st = RegressionSetting(alpha=M_OVER_N_2, sigma=0.1, lam=0.0, beta=5.0)
    widths = np.arange(0.5, 10.0, 0.05)
    uni = phase_diagram(st, [3], widths, kind="uniform")
    mild = phase_diagram(st, [3], widths, kind="power", gamma=1.5)
    assert abs(uni.boundary()[0] - 5.42) < 0.05 and abs(mild.boundary()[0] - 7.83) < 0.08
    assert mild.rs_fraction() > uni.rs_fraction() + 0.1


def test_quantization_shifts_double_descent_peak() -> None:
    """theory.md F-C (sigma^2 = 0.01, lam = 1e-3, omega = omega*(b)): peaks at M/N = 0.68, 0.88 vs ridge 0.98,
    i.e. at alpha = N/M = 1.47, 1.14 vs 1.02 -- quantization moves the peak to larger N/M."""
    st = RegressionSetting(alpha=1.0, sigma=0.1, lam=1e-3, beta=math.inf)
    alphas = np.concatenate([np.arange(0.9, 1.3, 0.02), np.arange(1.36, 1.62, 0.04)])
    sweep = error_vs_alpha(st, alphas, [2, 3], [1.399, 1.997])
    peaks, ridge_peak = sweep.peak_alpha()
    assert abs(peaks[0] - 1 / 0.68) / (1 / 0.68) < 0.03
    assert abs(peaks[1] - 1 / 0.88) / (1 / 0.88) < 0.02
    assert abs(ridge_peak - 1 / 0.98) < 0.02
    assert peaks[0] > peaks[1] > ridge_peak


def test_sweep_arguments_are_validated() -> None:
    st = RegressionSetting(alpha=1.5, sigma=0.01, lam=0.0, beta=5.0)
    with pytest.raises(ParameterError, match="width"):
        phase_diagram(st, [1], [0.0, 1.0])
    with pytest.raises(ParameterError, match="bits"):
        phase_diagram(st, [0], [1.0])
    with pytest.raises(ParameterError, match="widths"):
        error_vs_alpha(st, [1.0], [1, 2], [1.0])
