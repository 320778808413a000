"""Level sets, rounding and single-site costs against hand-computed values and direct quadrature."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.integrate import quad

from wquant.errors import ParameterError
from wquant.theory.quantizers import (
    custom_levels,
    make_levels,
    power_levels,
    site_log_weights,
    uniform_levels,
    zero_temperature_costs,
)
from wquant.theory.setting import RegressionSetting


def test_uniform_conventions_by_hand() -> None:
    np.testing.assert_allclose(uniform_levels(2, 1.0).values, [-1.0, -1.0 / 3.0, 1.0 / 3.0, 1.0])
    np.testing.assert_allclose(uniform_levels(2, 1.0, "midrise").values, [-0.75, -0.25, 0.25, 0.75])
    np.testing.assert_allclose(uniform_levels(1, 0.7).values, [-0.7, 0.7])
    assert uniform_levels(5, 3.0).size == 32


def test_power_levels_by_hand_and_gamma_one_is_uniform() -> None:
    np.testing.assert_allclose(power_levels(5, 2.0, 2.0).values, [-2.0, -0.5, 0.0, 0.5, 2.0])
    np.testing.assert_allclose(power_levels(8, 1.3, 1.0).values, uniform_levels(3, 1.3).values)
    assert make_levels("power", 3, 1.0).size == 8


def test_quantize_is_nearest_level_with_clipping() -> None:
    lv = custom_levels([0.0, 1.0, 3.0])
    np.testing.assert_allclose(lv.quantize([-5.0, 0.4, 0.6, 1.9, 2.1, 9.0]), [0, 0, 1, 1, 3, 3])
    np.testing.assert_allclose(lv.thresholds, [0.5, 2.0])


def test_v2_log_weights_match_direct_integration() -> None:
    st = RegressionSetting(alpha=1.5, sigma=0.1, lam=0.3, beta=4.0, cost="V2")
    lv = uniform_levels(2, 1.5)
    edges = [-np.inf, *lv.thresholds, np.inf]
    masses = [
        quad(lambda u: math.exp(-0.5 * 4.0 * 0.3 * u * u), a, b)[0] for a, b in zip(edges[:-1], edges[1:], strict=True)
    ]
    got = site_log_weights(lv, st)
    np.testing.assert_allclose(got - got[0], np.log(masses) - math.log(masses[0]), rtol=1e-9, atol=1e-9)


def test_zero_temperature_costs_v2_use_point_nearest_zero() -> None:
    st = RegressionSetting(alpha=1.5, sigma=0.1, lam=2.0, beta=math.inf, cost="V2")
    lv = uniform_levels(2, 3.0)  # levels -3, -1, 1, 3; thresholds -2, 0, 2
    np.testing.assert_allclose(zero_temperature_costs(lv, st), [4.0, 0.0, 0.0, 4.0])


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": -1.0}, "alpha"),
        ({"sigma": -0.1}, "sigma"),
        ({"beta": 0.0}, "beta"),
        ({"lam": -1.0}, "lam"),
    ],
)
def test_bad_settings_name_the_parameter(kwargs: dict[str, float], name: str) -> None:
    base = {"alpha": 1.5, "sigma": 0.1, "lam": 0.0, "beta": 5.0}
    with pytest.raises(ParameterError, match=rf"{name}=.*must be"):
        RegressionSetting(**{**base, **kwargs})


def test_bad_quantizer_parameters_name_the_parameter() -> None:
    with pytest.raises(ParameterError, match="bits"):
        uniform_levels(0, 1.0)
    with pytest.raises(ParameterError, match="width"):
        uniform_levels(2, 0.0)
    with pytest.raises(ParameterError, match="width"):
        power_levels(4, -1.0)
    with pytest.raises(ParameterError, match="duplicates"):
        custom_levels([0.0, 1.0, 1.0])
    with pytest.raises(ParameterError, match="lam"):
        RegressionSetting(alpha=1.5, sigma=0.1, lam=0.0, beta=5.0, cost="V2")
