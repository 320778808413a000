"""Value sets of ExMy floating-point formats, enumerated from their bit patterns.

Enumerating every code (at most 2^16 of them) keeps the semantics exact: the value set *is* the format, and
nearest-value rounding onto it is the reference behaviour that bit-manipulation kernels must reproduce.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np

from wquant.errors import SpecError

Specials = Literal["none", "fn", "ieee"]


@dataclass(frozen=True)
class FloatFormat:
    """Sign (optional) + `exponent_bits` + `mantissa_bits`, exponent bias, and which codes are reserved.

    specials: "none" uses every code as a number (OCP FP4/FP6), "fn" reserves only the all-ones pattern for
    NaN (OCP E4M3), "ieee" reserves the top exponent for Inf/NaN (E5M2, fp16, bf16).
    """

    exponent_bits: int
    mantissa_bits: int
    bias: int | None = None
    specials: Specials = "none"
    signed: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.exponent_bits <= 8 or not 0 <= self.mantissa_bits <= 10:
            raise SpecError(
                f"ExMy float needs 1 <= E <= 8 and 0 <= M <= 10, got E={self.exponent_bits} M={self.mantissa_bits}"
            )
        if self.bits > 16:
            raise SpecError(f"ExMy float of {self.bits} bits is too wide; at most 16 bits are supported")

    @property
    def exponent_bias(self) -> int:
        return self.bias if self.bias is not None else 2 ** (self.exponent_bits - 1) - 1

    @property
    def bits(self) -> int:
        return int(self.signed) + self.exponent_bits + self.mantissa_bits

    @property
    def name(self) -> str:
        return f"{'' if self.signed else 'u'}e{self.exponent_bits}m{self.mantissa_bits}"

    def values(self) -> np.ndarray:
        """Sorted distinct finite values (float64); -0 and +0 collapse to one zero."""
        return _enumerate(self.exponent_bits, self.mantissa_bits, self.exponent_bias, self.specials, self.signed)

    @property
    def max_value(self) -> float:
        return float(self.values()[-1])


@lru_cache(maxsize=64)
def _enumerate(e_bits: int, m_bits: int, bias: int, specials: str, signed: bool) -> np.ndarray:
    exponent = np.arange(2**e_bits)[:, None]
    mantissa = np.arange(2**m_bits)[None, :]
    frac = mantissa / 2.0**m_bits
    normal = np.ldexp(1.0 + frac, exponent - bias)
    subnormal = np.ldexp(np.broadcast_to(frac, normal.shape), 1 - bias)
    mag = np.where(exponent == 0, subnormal, normal)
    if specials == "ieee":
        mag = mag[:-1]  # top exponent holds Inf/NaN
    elif specials == "fn":
        mag = mag.reshape(-1)[:-1]  # only S.111..1.111..1 is NaN
    mag = np.unique(mag.reshape(-1))
    vals = np.concatenate([-mag[::-1], mag]) if signed else mag
    vals = np.unique(vals)
    vals.setflags(write=False)
    return vals


#: OCP element and scale types, named as the OCP MX v1.0 and FP8 specifications name them.
OCP_FLOATS: dict[str, FloatFormat] = {
    "e2m1": FloatFormat(2, 1, bias=1, specials="none"),
    "e2m3": FloatFormat(2, 3, bias=1, specials="none"),
    "e3m2": FloatFormat(3, 2, bias=3, specials="none"),
    "e4m3": FloatFormat(4, 3, bias=7, specials="fn"),
    "e5m2": FloatFormat(5, 2, bias=15, specials="ieee"),
    "ue4m3": FloatFormat(4, 3, bias=7, specials="fn", signed=False),
}


def float_format(name: str) -> FloatFormat:
    """`e2m1`, `e4m3`, ... (OCP semantics) or any `eXmY` / `ueXmY` (IEEE-style bias, every code a number)."""
    key = name.lower()
    if key in OCP_FLOATS:
        return OCP_FLOATS[key]
    signed = not key.startswith("u")
    body = key[1:] if not signed else key
    try:
        if not body.startswith("e") or "m" not in body:
            raise ValueError
        e_str, m_str = body[1:].split("m", 1)
        return FloatFormat(int(e_str), int(m_str), signed=signed)
    except ValueError:
        raise SpecError(f"{name!r} is not an ExMy float name; write e.g. e2m1, e4m3, e3m4 or ue4m3") from None
