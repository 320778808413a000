"""Scale formats out of range are refused, never a silent wrong answer; in range, formats are scale-equivariant.

Oracle: multiplying a tensor by 2^k (k within the scale format's range) multiplies every bf16/fp32/e8m0 scale by
2^k exactly, so the dequantized tensor must be the original's times 2^k, bit for bit, +search included.
"""

from __future__ import annotations

import pytest
import torch

from wquant.errors import TensorError
from wquant.formats import quantize

W = torch.randn(32, 256, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


@pytest.mark.parametrize("spec", ["int4/block64:absmax:bf16+search", "nf4/block64:absmax:fp32+search", "mxfp4",
                                  "int4:unsigned/block32:minmax:bf16", "e4m3/channel:rms:bf16+search",
                                  "uniform0.3/tensor:rms:bf16+coded"])  # fmt: skip
@pytest.mark.parametrize("k", [-100, 90])
def test_power_of_two_rescaling_commutes_with_quantization(spec: str, k: int) -> None:
    base = quantize(W, spec).dequantize()
    scaled = quantize(W * 2.0**k, spec).dequantize()
    assert torch.equal(scaled, base * 2.0**k)


@pytest.mark.parametrize("factor", [1e-9, 1e30])
def test_fp16_scales_out_of_range_are_refused_with_the_fix(factor: float) -> None:
    with pytest.raises(TensorError, match="out of the range of fp16 scales.*bf16 or fp32"):
        quantize(W * factor, "int4/block64:absmax:fp16", name="w")


def test_a_dead_row_may_lose_its_scale_without_refusing_the_tensor() -> None:
    x = W.clone().float()
    x[3] *= 1e-12  # its fp16 scale underflows to 0; it holds 1e-24 of the energy
    q = quantize(x, "int4/block64:absmax:fp16")
    assert torch.equal(q.dequantize()[3], torch.zeros(256))
    assert float((q.dequantize()[4] - x[4]).norm() / x[4].norm()) < 0.15
