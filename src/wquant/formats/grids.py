"""Element grids: the value sets that scaled weights are rounded onto.

Each grid is a frozen dataclass with a spec `token` and a `codebook(rule, block_size)`; the scaling rule and
block size matter only for grids whose design depends on them (the block-truncated cube-root grids).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, Literal

import numpy as np
from scipy import stats

from wquant.errors import ParameterError, SpecError
from wquant.formats.codebook import Codebook
from wquant.formats.floats import FloatFormat
from wquant.formats.lloyd_max import lloyd_max_levels
from wquant.validation import check_int_range

EULER_GAMMA = 0.5772156649015329
MAX_ELEMENT_BITS = 16

IntVariant = Literal["sym", "asym", "half", "unsigned"]
CrdFamily = Literal["normal", "laplace", "t"]


def _check_bits(bits: object, name: str = "bits") -> int:
    return check_int_range(bits, name, 1, MAX_ELEMENT_BITS, error=SpecError)


def _fmt_number(value: float) -> str:
    """Shortest round-tripping decimal, without '+' (which separates spec modifiers)."""
    return repr(float(value)).replace("e+", "e")


@dataclass(frozen=True)
class IntGrid:
    """Integer grid of `bits` bits.

    sym: -(2^(b-1)-1) … 2^(b-1)-1 (restricted range, zero exact; b=1 gives {-1, 1});
    asym: two's-complement range -2^(b-1) … 2^(b-1)-1; half: ±0.5 … ±(2^(b-1)-0.5), no zero;
    unsigned: 0 … 2^b-1 (pair it with the minmax or zeropoint rule for an affine scale+zero format).
    """

    bits: int
    variant: IntVariant = "sym"
    data_dependent: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        if self.variant not in ("sym", "asym", "half", "unsigned"):
            raise SpecError(f"int variant {self.variant!r} unknown; valid: asym, half, sym, unsigned")

    @property
    def token(self) -> str:
        return f"int{self.bits}" + ("" if self.variant == "sym" else f":{self.variant}")

    def codebook(self, rule: str = "absmax", block_size: int | None = None) -> Codebook:
        n = 2**self.bits
        if self.variant == "sym":
            levels = np.array([-1.0, 1.0]) if self.bits == 1 else np.arange(-(n // 2 - 1), n // 2, dtype=np.float64)
        elif self.variant == "asym":
            levels = np.arange(-(n // 2), n // 2, dtype=np.float64)
        elif self.variant == "half":
            levels = np.arange(n, dtype=np.float64) - (n - 1) / 2
        else:
            levels = np.arange(n, dtype=np.float64)
        return Codebook.from_levels(levels)


@dataclass(frozen=True)
class FloatGrid:
    """ExMy floating-point element grid (OCP semantics for e2m1, e2m3, e3m2, e4m3, e5m2)."""

    fmt: FloatFormat
    data_dependent: ClassVar[bool] = False

    @property
    def bits(self) -> int:
        return self.fmt.bits

    @property
    def token(self) -> str:
        return self.fmt.name

    def codebook(self, rule: str = "absmax", block_size: int | None = None) -> Codebook:
        return Codebook.from_levels(self.fmt.values())


#: NF4 (QLoRA), the published float32 values: normal quantiles with offset 0.9677083, normalised to ±1.
NF4_LEVELS = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0,
)  # fmt: skip

#: AF4 (AbnormalFloat, designed for absmax blocks of 64), published values.
AF4_LEVELS = (
    -1.0, -0.69441008, -0.51243739, -0.3736951, -0.25607552, -0.14982478, -0.04934812, 0.0,
    0.04273164, 0.12934483, 0.21961274, 0.31675666, 0.42563882, 0.55496234, 0.72424863, 1.0,
)  # fmt: skip


def quantile_table(dist: stats.rv_continuous, offset: float = 0.9677083) -> tuple[float, ...]:
    """The NF4 construction for any symmetric distribution: 8 positive and 7 negative quantiles, zero, ±1."""
    positive = dist.ppf(np.linspace(offset, 0.5, 9)[:-1])
    negative = -dist.ppf(np.linspace(offset, 0.5, 8)[:-1])
    values = np.sort(np.concatenate([positive, [0.0], negative]))
    return tuple(float(v) for v in values / values.max())


@lru_cache(maxsize=1)
def sf4_levels() -> tuple[float, ...]:
    """SF4: Student-float with ν = 5, the NF4 construction on Student-t quantiles."""
    return quantile_table(stats.t(5))


@dataclass(frozen=True)
class TableGrid:
    """A fixed lookup table of levels (NF4, AF4, SF4, or any user-given sorted set)."""

    name: str
    values: tuple[float, ...]
    data_dependent: ClassVar[bool] = False

    def __post_init__(self) -> None:
        Codebook.from_levels(self.values)  # validates: finite, sorted, no duplicates

    @property
    def bits(self) -> int:
        return max(1, math.ceil(math.log2(len(self.values))))

    @property
    def token(self) -> str:
        if self.name == "lut":
            return "lut:" + ",".join(_fmt_number(v) for v in self.values)
        return self.name

    def codebook(self, rule: str = "absmax", block_size: int | None = None) -> Codebook:
        return Codebook.from_levels(self.values)


@dataclass(frozen=True)
class PowerGrid:
    """The NUPES/PowerQuant power grid: levels ±(k/K)^(1/a), k = 0…K, K = 2^(b-1) - 1.

    rounding="companded" rounds in the companded domain sign(x)|x|^a (the operator, integer-friendly);
    "nearest" rounds to the nearest level in value space (never worse in MSE).
    """

    bits: int
    exponent: float
    rounding: Literal["companded", "nearest"] = "companded"
    data_dependent: ClassVar[bool] = False

    def __post_init__(self) -> None:
        check_int_range(self.bits, "power grid bits", 2, MAX_ELEMENT_BITS, error=SpecError)
        if not (isinstance(self.exponent, int | float) and 0 < self.exponent <= 4):
            raise SpecError(f"power exponent must be in (0, 4], got {self.exponent!r}")
        if self.rounding not in ("companded", "nearest"):
            raise SpecError(f"power rounding {self.rounding!r} unknown; valid: companded, nearest")

    @property
    def token(self) -> str:
        return f"pow{_fmt_number(self.exponent)}:{self.bits}" + (":nearest" if self.rounding == "nearest" else "")

    def codebook(self, rule: str = "absmax", block_size: int | None = None) -> Codebook:
        k_max = 2 ** (self.bits - 1) - 1
        u = np.arange(-k_max, k_max + 1, dtype=np.float64) / k_max
        levels = np.sign(u) * np.abs(u) ** (1.0 / self.exponent)
        if self.rounding == "nearest" or self.exponent == 1.0:
            return Codebook.from_levels(levels)
        mids = (u[1:] + u[:-1]) / 2
        return Codebook.from_levels(levels, boundaries=np.sign(mids) * np.abs(mids) ** (1.0 / self.exponent))


def _crd_probabilities(n: int, scaling: str, symmetric: bool) -> np.ndarray:
    """Cumulative probabilities at which the cube-root-density grid places its levels (formats.md A2.2)."""
    if scaling == "rms":
        if symmetric:
            return np.linspace(0, 1, n + 2)[1:-1]
        return np.concatenate([np.linspace(0, 0.5, n // 2 + 1)[1:], np.linspace(0.5, 1, n // 2 + 2)[1:-1]])
    if scaling == "absmax":
        if symmetric:
            return np.linspace(0, 1, n)
        return np.concatenate([np.linspace(0, 0.5, n // 2), np.linspace(0.5, 1, n // 2 + 1)[1:]])
    # signmax: the block extreme always lands on +1, so -1 is never needed
    return np.concatenate([np.linspace(0, 0.5, n // 2 + 1)[1:], np.linspace(0.5, 1, n // 2 + 1)[1:]])


@dataclass(frozen=True)
class CubeRootGrid:
    """Cube-root-density grid: levels at quantiles of p^power (power 1/3 is MSE-optimal at high rate).

    Tensor/channel scaling uses the tables for unit-variance data; absmax/signmax blocks of B use the
    block-truncated tables (formats.md A1.4(e), A2.2), which model data divided by its block maximum.
    """

    family: CrdFamily
    bits: int
    nu: float | None = None
    symmetric: bool = True
    power: float = 1.0 / 3.0
    data_dependent: ClassVar[bool] = False

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        if self.bits < 2 and not self.symmetric:
            raise SpecError("asymmetric cube-root grids need at least 2 bits")
        if self.family not in ("normal", "laplace", "t"):
            raise SpecError(f"cube-root family {self.family!r} unknown; valid: laplace, normal, t<nu>")
        if self.family == "t" and (self.nu is None or not self.nu > 2):
            raise SpecError(f"Student-t cube-root grids need nu > 2 (finite variance), got {self.nu!r}")
        if not 0 < self.power <= 1:
            raise SpecError(f"density power must be in (0, 1], got {self.power}")

    @property
    def token(self) -> str:
        fam = f"t{_fmt_number(self.nu).removesuffix('.0')}" if self.family == "t" else self.family
        out = f"crd-{fam}:{self.bits}" + ("" if self.symmetric else ":asym")
        return out + ("" if abs(self.power - 1 / 3) < 1e-15 else f":p{_fmt_number(self.power)}")

    def codebook(self, rule: str = "absmax", block_size: int | None = None) -> Codebook:
        block = rule in ("absmax", "signmax") and block_size is not None
        if rule == "signmax" and self.symmetric:
            scaling = "absmax"
        else:
            scaling = rule if block else "rms"
        p = _crd_probabilities(2**self.bits, scaling, self.symmetric)
        a = self.power
        if not block:
            if self.family == "normal":
                levels = stats.norm.ppf(p, scale=1 / math.sqrt(a))
            elif self.family == "laplace":
                levels = stats.laplace.ppf(p, scale=1 / (a * math.sqrt(2)))
            else:
                nu2 = a * (self.nu + 1) - 1
                levels = stats.t.ppf(p, nu2, scale=math.sqrt((self.nu - 2) / nu2))
            return Codebook.from_levels(levels, rms_target=1.0)
        if self.family == "normal":
            dist, edge = stats.norm(scale=a**-0.5 / math.sqrt(2 * math.log(block_size / math.pi))), 1.0
        elif self.family == "laplace":
            dist, edge = stats.laplace(scale=1 / (a * (EULER_GAMMA + math.log(block_size)))), 1.0
        else:
            nu = float(self.nu)
            edge = (
                (2 * math.log(block_size / math.pi)) ** ((nu - 3) / (2 * nu))
                * block_size ** (1 / nu)
                * math.sqrt(nu / (nu - 2))
            )
            nu2 = a * (nu + 1) - 1
            dist = stats.t(nu2, scale=math.sqrt(nu / nu2))
        c0, c1 = dist.cdf(-edge), dist.cdf(edge)
        levels = dist.ppf(c0 + p * (c1 - c0)) / edge
        levels[p == 0], levels[p == 1] = -1.0, 1.0
        return Codebook.from_levels(levels)


@dataclass(frozen=True)
class LloydMaxGrid:
    """Lloyd–Max grid fitted to the (scaled) tensor itself; its fp32 table is stored with the codes."""

    bits: int
    data_dependent: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _check_bits(self.bits)
        if self.bits > 12:
            raise SpecError(f"Lloyd–Max grids above 12 bits are not supported (got {self.bits})")

    @property
    def token(self) -> str:
        return f"lloydmax:{self.bits}"

    def codebook(self, rule: str = "absmax", block_size: int | None = None) -> Codebook:
        """The nominal range before fitting: data scaled to [-1, 1] (absmax) or to unit RMS."""
        return Codebook.from_levels(np.linspace(-1, 1, 2**self.bits), rms_target=1.0)

    def fit(self, values: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
        """The stored table (fp32 levels) for scaled data `values`."""
        if np.size(values) < 2**self.bits:
            raise ParameterError(f"lloydmax:{self.bits} fits {2**self.bits} levels but the tensor has only "
                                 f"{np.size(values)} values; use fewer bits or a fixed grid")  # fmt: skip
        return lloyd_max_levels(values, 2**self.bits, weights).astype(np.float32)

    def codebook_from_table(self, table: np.ndarray) -> Codebook:
        return Codebook.from_levels(np.asarray(table, dtype=np.float64), rms_target=1.0)


@dataclass(frozen=True)
class UniformGrid:
    """Unbounded uniform grid k·step (k ∈ ℤ) on scaled data: the entropy-coded scalar quantizer (ECSQ).

    The levels actually used, k = -K…K, come from the data; the table stores their reconstruction values:
    cell centroids (reconstruction="centroid", the MSE-optimal choice at low rate) or the grid points
    themselves ("mid"). `target_bits` asks `quantize` to choose the step that meets a bits/param budget.
    """

    step: float | None = None
    reconstruction: Literal["centroid", "mid"] = "centroid"
    target_bits: float | None = None
    data_dependent: ClassVar[bool] = True

    def __post_init__(self) -> None:
        if (self.step is None) == (self.target_bits is None):
            raise SpecError("a uniform grid takes either a step (uniform0.25) or a budget (uniform@3.5)")
        if self.step is not None and not (isinstance(self.step, int | float) and 1e-6 <= self.step <= 1e3):
            raise SpecError(f"uniform grid step must be in [1e-6, 1e3], got {self.step!r}")
        if self.target_bits is not None and not (0 < self.target_bits <= 16):
            raise SpecError(f"uniform grid budget must be in (0, 16] bits/param, got {self.target_bits!r}")
        if self.reconstruction not in ("centroid", "mid"):
            raise SpecError(f"reconstruction {self.reconstruction!r} unknown; valid: centroid, mid")

    @property
    def token(self) -> str:
        head = f"uniform@{_fmt_number(self.target_bits)}" if self.step is None else f"uniform{_fmt_number(self.step)}"
        return head + ("" if self.reconstruction == "centroid" else ":mid")

    def codebook(self, rule: str = "absmax", block_size: int | None = None) -> Codebook:
        """The nominal range before fitting: [-1, 1] after absmax, unit RMS after rms scaling."""
        return Codebook.from_levels(np.array([-1.0, 0.0, 1.0]), rms_target=1.0)

    def _half_width(self, values: np.ndarray) -> int:
        assert self.step is not None, "resolve the budget to a step first"
        peak = float(np.max(np.abs(values))) if values.size else 0.0
        return max(1, math.ceil(peak / self.step - 0.5))

    def fit(self, values: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
        assert self.step is not None, "resolve the budget to a step first"
        half = self._half_width(values)
        if half > 2**20:
            raise SpecError(f"step {self.step} needs {2 * half + 1} levels for this tensor; use a larger step")
        points = self.step * np.arange(-half, half + 1, dtype=np.float64)
        if self.reconstruction == "mid":
            return points.astype(np.float32)
        cells = np.clip(np.round(values / self.step).astype(np.int64) + half, 0, 2 * half)
        w = np.ones_like(values) if weights is None else weights
        mass = np.bincount(cells, weights=w, minlength=2 * half + 1)
        total = np.bincount(cells, weights=w * values, minlength=2 * half + 1)
        centroids = np.where(mass > 0, total / np.where(mass > 0, mass, 1.0), points)
        return centroids.astype(np.float32)

    def codebook_from_table(self, table: np.ndarray) -> Codebook:
        """Decision thresholds stay on the uniform grid; the table only says what each cell decodes to."""
        assert self.step is not None, "resolve the budget to a step first"
        half = (np.asarray(table).size - 1) // 2
        bounds = self.step * (np.arange(-half, half, dtype=np.float64) + 0.5)
        return Codebook.from_levels(np.asarray(table, dtype=np.float64), boundaries=bounds, rms_target=1.0)


ElementGrid = IntGrid | FloatGrid | TableGrid | PowerGrid | CubeRootGrid | LloydMaxGrid | UniformGrid

#: GGUF IQ4_NL / IQ4_XS non-linear 4-bit grid (ggml's kvalues_iq4nl), integers on a signed block scale.
IQ4NL_LEVELS = (
    -127.0, -104.0, -83.0, -65.0, -49.0, -35.0, -22.0, -10.0, 1.0, 13.0, 25.0, 38.0, 53.0, 69.0, 89.0, 113.0,
)  # fmt: skip

NAMED_TABLES = {"nf4": NF4_LEVELS, "af4": AF4_LEVELS, "iq4nl": IQ4NL_LEVELS}
