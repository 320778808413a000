"""The two GPTQ-checkpoint scale conventions, checked against their closed forms (anchors.md §1.3).

GPTQ's quantizer (the reference repository and gptqmodel) widens each group's range to include 0 and
stores an integer zero point: scale = (max⁺ − min⁻)/(2^b − 1), z = round(−min⁻/scale), value = scale·(q − z).
Its sym=True mode fixes z = 2^(b−1) and scale = 2·absmax/(2^b − 1). The formulas are written out here
independently of wquant's Scaling code.
"""

import numpy as np
import pytest
import torch

from wquant.errors import CorruptDataError
from wquant.formats import QuantizedTensor, quantize


def gptq_asym_reference(x: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    maxq = 2**bits - 1
    g = x.reshape(x.shape[0], -1, group)
    lo, hi = g.amin(-1).clamp(max=0), g.amax(-1).clamp(min=0)
    scale = ((hi - lo) / maxq)[..., None]
    zero = torch.round(-lo[..., None] / scale)
    return (scale * (torch.clamp(torch.round(g / scale) + zero, 0, maxq) - zero)).reshape(x.shape)


def gptq_sym_reference(x: torch.Tensor, bits: int, group: int) -> torch.Tensor:
    maxq = 2**bits - 1
    g = x.reshape(x.shape[0], -1, group)
    scale = (2 * g.abs().amax(-1) / maxq)[..., None]
    mid = (maxq + 1) // 2
    return (scale * (torch.clamp(torch.round(g / scale) + mid, 0, maxq) - mid)).reshape(x.shape)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_zeropoint_matches_the_gptq_affine_quantizer(bits):
    x = torch.randn(32, 256, generator=torch.Generator().manual_seed(bits)) + 0.3  # off-centre groups
    ours = quantize(x, f"int{bits}:unsigned/block64:zeropoint:fp32").dequantize()
    torch.testing.assert_close(ours, gptq_asym_reference(x, bits, 64), atol=1e-6, rtol=0)


def test_zeropoint_keeps_zero_exact_even_for_one_signed_groups():
    x = torch.rand(8, 128, generator=torch.Generator().manual_seed(1)) + 1.0  # all positive: range widened to 0
    x[:, :5] = 0.0
    q = quantize(x, "int4:unsigned/block64:zeropoint:bf16")
    assert torch.all(q.dequantize()[:, :5] == 0)
    assert np.all(np.asarray(q.offset_codes) == 0)  # min⁻ = 0 → zero point is the first level


@pytest.mark.parametrize("bits", [3, 4])
def test_span_matches_the_gptq_symmetric_quantizer_up_to_ties(bits):
    x = torch.randn(32, 256, generator=torch.Generator().manual_seed(10 + bits))
    ours = quantize(x, f"int{bits}:asym/block64:span:fp32").dequantize()
    ref = gptq_sym_reference(x, bits, 64)
    differ = (ours - ref).abs() > 1e-5
    # the only disagreement allowed: the block minimum sits exactly on the −(2^(b−1) − ½) tie
    step = (2 * x.reshape(32, -1, 64).abs().amax(-1) / (2**bits - 1)).repeat_interleave(64, dim=1)
    assert torch.all(((x[differ] / step[differ]).abs() - (2 ** (bits - 1) - 0.5)).abs() < 1e-4)
    assert int(differ.sum()) <= x.shape[0] * 4  # at most one tie per group


def test_zero_points_round_trip_and_damage_is_refused():
    x = torch.randn(16, 96, generator=torch.Generator().manual_seed(3))
    q = quantize(x, "int3:unsigned/block32:zeropoint:fp16")
    data = q.to_bytes()
    assert len(data) == -(-q.bits() // 8)
    back = QuantizedTensor.from_bytes(data, q.spec, q.shape, q.dtype)
    assert torch.equal(back.dequantize(), q.dequantize())
    # a 7-level grid (int3 sym) stores its zero point in 3 bits, so code 7 fits the field but names no level
    q7 = quantize(x, "int3/block32:zeropoint:fp16")
    bad = QuantizedTensor.pack(q7.spec, q7.shape, q7.dtype, q7.codes, q7.scale_codes, np.full_like(q7.offset_codes, 7))
    with pytest.raises(CorruptDataError, match="zero point"):
        bad.check()
    with pytest.raises(CorruptDataError, match="zero point"):
        QuantizedTensor.from_state(bad.state(), bad.spec, bad.shape, bad.dtype)
