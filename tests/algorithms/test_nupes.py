"""NUPES power quantization: formats.md C3 operator numbers, exponent search, learned codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from algo_helpers import correlated_layer

from wquant.algorithms import (
    GPTQConfig,
    NUPESConfig,
    gptq,
    hessian_from_inputs,
    nupes,
    power_spec,
    relative_error,
    search_exponent,
)
from wquant.errors import ParameterError, SpecError
from wquant.formats import quantize


@pytest.fixture(scope="module")
def c3_samples() -> dict[str, torch.Tensor]:
    """formats.md C3: 1024×1024, numpy default_rng(0), Normal then Laplace, in that order."""
    rng = np.random.default_rng(0)
    normal = rng.standard_normal((1024, 1024))
    laplace = rng.laplace(size=(1024, 1024))
    return {
        "normal": torch.as_tensor(normal, dtype=torch.float32),
        "laplace": torch.as_tensor(laplace, dtype=torch.float32),
    }


@pytest.mark.parametrize(
    ("dist", "r_uniform", "r_best", "a_best"),
    [("normal", 0.1427, 0.1258, 0.73), ("laplace", 0.2189, 0.1575, 0.58)],
)
def test_operator_reproduces_formats_c3(c3_samples: dict[str, torch.Tensor], dist: str, r_uniform: float,
                                        r_best: float, a_best: float) -> None:  # fmt: skip
    w = c3_samples[dist]
    a, err, curve = search_exponent(
        w, NUPESConfig(bits=4, scaling="channel:absmax:fp32", search="weight", coarse=0.05, fine=0.01)
    )
    assert curve[1.0] ** 0.5 == pytest.approx(r_uniform, abs=0.002)
    assert err**0.5 == pytest.approx(r_best, abs=0.002)
    assert a == pytest.approx(a_best, abs=0.03)


def test_heavy_tails_get_a_below_one_and_beat_uniform() -> None:
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(256, 512, generator=gen) ** 3  # heavy-tailed
    result = nupes(w, NUPESConfig(bits=4))
    assert result.exponent < 0.7
    assert result.error_rounded < 0.8 * result.error_uniform
    q = result.quantized
    assert q.spec == power_spec(4, result.exponent)
    assert q.bits() == quantize(w, "int4/channel:absmax:bf16").bits()  # equal bits to the integer grid
    assert relative_error(w, q.dequantize(), None) == pytest.approx(result.error_final, rel=1e-6)


def test_data_driven_search_and_learning_beat_rtn_and_gptq_on_the_same_grid() -> None:
    w, x = correlated_layer(96, 192, 1536, seed=8)
    w = w**3
    h = hessian_from_inputs(x)
    rtn_err = relative_error(w, quantize(w, "int4/channel:absmax:bf16").dequantize(), h)
    result = nupes(w, NUPESConfig(bits=4, steps=60), hessian=h)
    assert result.objective == "output" and result.exponent < 1
    assert result.error_final < result.error_rounded < result.error_uniform
    gptq_pow = relative_error(w, gptq(w, h, GPTQConfig(power_spec(4, result.exponent))).quantized.dequantize(), h)
    assert result.error_final <= gptq_pow  # learning starts from GPTQ and keeps its best hard solution
    assert result.error_final < 0.5 * rtn_err
    from_rtn = nupes(w, NUPESConfig(bits=4, steps=60, init="rtn", exponent=result.exponent), hessian=h)
    assert from_rtn.error_final < from_rtn.error_rounded  # codes move beyond nearest rounding


def test_fixed_exponent_and_bad_configs() -> None:
    w = torch.randn(16, 64)
    assert nupes(w, NUPESConfig(bits=3, exponent=0.5)).exponent == 0.5
    with pytest.raises(SpecError):
        NUPESConfig(exponent=5.0)
    with pytest.raises(ParameterError):
        NUPESConfig(lo=0.9, hi=0.5)
    with pytest.raises(ParameterError):
        NUPESConfig(steps=-1)
    with pytest.raises(ParameterError):
        NUPESConfig(init="magic")  # type: ignore[arg-type]
