"""Quantization level sets and the single-site costs that enter the replica, AMP and Monte Carlo code.

A quantizer is a sorted level set S = {s_1 < ... < s_K} plus nearest-level rounding; everything the theory
needs (thresholds t_k, gaps Delta_k, log-weights of each level) derives from the levels alone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from scipy.special import log_ndtr

from wquant.errors import ParameterError
from wquant.theory._validation import check_bits, check_gamma, check_levels, check_n_levels, check_width
from wquant.theory.setting import RegressionSetting

UniformConvention = Literal["endpoint", "midrise"]
QuantizerKind = Literal["uniform", "power"]
DEFAULT_GAMMA = 1.5
"""Default companding exponent of the non-uniform grid: mild concentration near 0 enlarges the RS region,
strong concentration shrinks it (docs/theory.md, uniform vs non-uniform)."""


@dataclass(frozen=True)
class LevelSet:
    """Sorted, distinct quantization levels. `label` is for tables and plots only."""

    levels: tuple[float, ...]
    label: str = "custom"

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(float(v) for v in check_levels(self.levels)))

    @property
    def values(self) -> np.ndarray:
        return np.asarray(self.levels, dtype=float)

    @property
    def size(self) -> int:
        return len(self.levels)

    @property
    def thresholds(self) -> np.ndarray:
        """Midpoints t_k between neighbouring levels: nearest-level rounding switches there."""
        v = self.values
        return 0.5 * (v[1:] + v[:-1])

    @property
    def gaps(self) -> np.ndarray:
        v = self.values
        return np.diff(v)

    def quantize(self, h: ArrayLike) -> np.ndarray:
        """phi(h): nearest level, ties to the upper level, clipping outside [s_1, s_K]."""
        idx = np.searchsorted(self.thresholds, np.asarray(h, dtype=float), side="right")
        return self.values[idx]


def uniform_levels(bits: int, width: float, convention: UniformConvention = "endpoint") -> LevelSet:
    """2**bits equally spaced levels in [-width, width].

    endpoint: levels include +-width, spacing 2 width / (2**bits - 1) (b = 1 gives {+-width}).
    midrise: spacing 2 width / 2**bits, levels +-spacing/2, ..., +-(width - spacing/2).
    """
    b = check_bits(bits)
    w = check_width(width)
    k = 2**b
    if convention == "endpoint":
        vals = np.linspace(-w, w, k)
    elif convention == "midrise":
        step = 2.0 * w / k
        vals = -w + step * (np.arange(k) + 0.5)
    else:
        raise ParameterError(f"convention={convention!r} is invalid: convention must be one of endpoint, midrise")
    return LevelSet(tuple(vals), label=f"uniform b={b} w={w:g}")


def power_levels(n_levels: int, width: float, gamma: float = DEFAULT_GAMMA) -> LevelSet:
    """Power-law companded grid s_k = width sgn(u_k)|u_k|**gamma on u_k uniform in [-1, 1].

    gamma = 1 is the uniform endpoint grid; gamma > 1 packs levels near 0, where the Gaussian field is dense.
    """
    k = check_n_levels(n_levels)
    w = check_width(width)
    g = check_gamma(gamma)
    u = np.linspace(-1.0, 1.0, k)
    vals = w * np.sign(u) * np.abs(u) ** g
    if np.any(np.diff(vals) <= 0.0):
        raise ParameterError(
            f"gamma={gamma!r} is invalid for {k} levels: the companded levels coincide in float64; use a gamma "
            "closer to 1"
        )
    return LevelSet(tuple(vals), label=f"power n={k} w={w:g} g={g:g}")


def custom_levels(values: Sequence[float] | np.ndarray, label: str = "custom") -> LevelSet:
    """Any user-given level set (validated: finite, at least two, no duplicates)."""
    return LevelSet(tuple(check_levels(values)), label=label)


def make_levels(
    kind: QuantizerKind,
    bits: int,
    width: float,
    gamma: float = DEFAULT_GAMMA,
    convention: UniformConvention = "endpoint",
) -> LevelSet:
    """2**bits levels of half-range `width`: uniform, or power-law companded ("power", non-uniform)."""
    if kind == "uniform":
        return uniform_levels(bits, width, convention)
    if kind == "power":
        return power_levels(2 ** check_bits(bits), width, gamma)
    raise ParameterError(f"quantizer={kind!r} is invalid: quantizer must be one of power, uniform")


def _log_gauss_mass(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """log(Phi(hi) - Phi(lo)) without cancellation in either tail."""
    flip = lo > 0.0
    a = np.where(flip, -hi, lo)
    b = np.where(flip, -lo, hi)
    la, lb = log_ndtr(a), log_ndtr(b)
    with np.errstate(divide="ignore"):
        return lb + np.log1p(-np.exp(la - lb))


def _bin_edges(levels: LevelSet) -> tuple[np.ndarray, np.ndarray]:
    t = levels.thresholds
    return np.concatenate([[-np.inf], t]), np.concatenate([t, [np.inf]])


def site_log_weights(levels: LevelSet, setting: RegressionSetting) -> np.ndarray:
    """l(s_k) = -beta c(s_k) at finite beta: the a-priori log-weight of each level in the Gibbs measure.

    V1: -beta lam s^2/2. V2: log of the Gaussian mass exp(-beta lam u^2/2) of bin k (latent u, s = phi(u)).
    V3: log prior mass of bin k under u ~ N(0, 1/lam), independent of beta. Constants are dropped.
    At beta = inf this returns the beta-independent part only (0 for V1/V2, the prior for V3): the
    energetic part is handled by `zero_temperature_costs`.
    """
    s = levels.values
    lo, hi = _bin_edges(levels)
    beta = setting.beta
    if setting.cost == "V1":
        return np.zeros_like(s) if math.isinf(beta) else -0.5 * beta * setting.lam * s**2
    if setting.cost == "V2":
        if math.isinf(beta):
            return np.zeros_like(s)
        scale = math.sqrt(beta * setting.lam)
        return _log_gauss_mass(scale * lo, scale * hi)
    scale = math.sqrt(setting.lam)
    return _log_gauss_mass(scale * lo, scale * hi)


def zero_temperature_costs(levels: LevelSet, setting: RegressionSetting) -> np.ndarray:
    """c(s_k) as beta -> inf. V1: lam s^2/2. V2: lam e_k^2/2 with e_k the point of bin k nearest 0.
    V3: 0 (a prior does not scale with beta, so it only breaks ties)."""
    s = levels.values
    if setting.cost == "V1":
        return 0.5 * setting.lam * s**2
    if setting.cost == "V2":
        lo, hi = _bin_edges(levels)
        nearest = np.where(lo > 0.0, lo, np.where(hi < 0.0, hi, 0.0))
        return 0.5 * setting.lam * nearest**2
    return np.zeros_like(s)
