"""Exact bit accounting (anchors.md §3.6, formats.md C2) and the packed-size invariant."""

import math

import pytest
import torch

from wquant.formats import QuantizedTensor, quantize

W = torch.randn(256, 512, generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize(
    "spec,expected",
    [
        ("nf4/block64:absmax:fp32", 4 + 32 / 64),  # QLoRA NF4: 4.5
        ("mxfp4", 4 + 8 / 32),  # OCP MXFP4: 4.25
        ("int4:unsigned/block128:minmax:bf16", 4 + 32 / 128),  # scale + zero in bf16: 4.25
        ("gptq-int4-g128", 4 + (16 + 4) / 128),  # GPTQ checkpoint: fp16 scale + 4-bit zero point, 4.15625
        ("int3:unsigned/channel:zeropoint:bf16", 3 + (16 + 3) / 512),
        ("int4:asym/block64:span:fp32", 4 + 32 / 64),  # span stores a scale only
        ("int4/block128:absmax:bf16", 4.125),
        ("int4/channel:absmax:bf16", 4 + 16 / 512),
        ("int4/block128:absmax:e7m3", 4 + 11 / 128),  # graphcore's "E8M3" = 1 + 7 + 3 bits
        ("e4m3/tensor:absmax:fp32", 8 + 32 / (256 * 512)),
        ("nvfp4", 4 + 8 / 16 + 32 / (256 * 512)),  # + one fp32 per-tensor factor
    ],
)
def test_bits_per_param_cheat_sheet(spec, expected):
    assert quantize(W, spec).bits_per_param() == pytest.approx(expected, abs=1e-12)


def test_outliers_cost_48_bits_each():
    # formats.md C2 on a 4096×4096 tensor: 4 + 16/2^24 + 48·⌊2^24/1024⌋/2^24 (tensor RMS, bf16 scale)
    n = 4096 * 4096
    x = torch.randn(4096, 4096, generator=torch.Generator().manual_seed(0))
    base = quantize(x, "int4/tensor:rms:bf16").bits_per_param()
    with_outliers = quantize(x, "int4/tensor:rms:bf16+outliers0.0009765625").bits_per_param()
    assert base == 4 + 16 / n
    assert with_outliers == pytest.approx(4 + 16 / n + 48 * (n // 1024) / n, abs=1e-12)
    assert with_outliers - base == pytest.approx(0.046875, abs=1e-12)


def test_ragged_blocks_store_one_scale_per_partial_block_and_no_padding_codes():
    x = torch.randn(3, 100, generator=torch.Generator().manual_seed(2))
    q = quantize(x, "int4/block64:absmax:bf16")
    assert q.bit_breakdown()["codes"] == 300 * 4
    assert q.bit_breakdown()["scales"] == 3 * 2 * 16  # ceil(100/64) = 2 blocks per row


def test_lloyd_max_table_is_counted():
    q = quantize(W, "lloydmax:3/tensor:rms:bf16")
    assert q.bit_breakdown()["table"] == 32 + 8 * 32  # entry count + 8 fp32 levels
    assert q.bits() == W.numel() * 3 + 16 + 32 + 8 * 32


@pytest.mark.parametrize(
    "spec",
    [
        "int4/block64:absmax:bf16",
        "int3:asym/block32:absmax:fp16",  # non-power-of-two code width
        "int5/block48:absmax:fp32",
        "e2m3/block32:absmax:e8m0",  # 6-bit codes
        "nvfp4",
        "int4:unsigned/block64:minmax:bf16",
        "lloydmax:3/tensor:rms",
        "crd-t5:4/tensor:rms+outliers0.001",
        "pow0.7:3/channel:absmax:bf16",
        "int4:asym/block128:signmax:bf16+search",
        "e4m3/tensor:absmax:e8m0-rceil",
        "int12/channel:rms:fp32",
    ],
)
def test_packed_size_equals_bits_and_round_trips_exactly(spec):
    x = torch.randn(37, 70, generator=torch.Generator().manual_seed(9))
    q = quantize(x, spec)
    data = q.to_bytes()
    assert len(data) == math.ceil(q.bits() / 8)
    back = QuantizedTensor.from_bytes(data, q.spec.to_string(), q.shape, q.dtype)
    assert torch.equal(back.dequantize(), q.dequantize())
    assert back.bits() == q.bits()


def test_total_bits_is_sum_of_fields():
    q = quantize(W, "int4:unsigned/block64:minmax:bf16+outliers0.01")
    parts = q.bit_breakdown()
    n_groups = 256 * 512 // 64
    k = math.floor(0.01 * W.numel())
    assert parts == {
        "codes": W.numel() * 4,
        "scales": n_groups * 16,
        "offsets": n_groups * 16,
        "tensor_scale": 0,
        "table": 0,
        "outliers": k * 48,
        "alignment": 0,
    }
    assert q.bits() == sum(parts.values())
