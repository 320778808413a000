"""Two-level (super-block) scaling and the GGUF presets: bits equal to GGUF's bytes, storage round trips,
refusals, the fitted block scales, and the algorithms that run on these grids."""

from __future__ import annotations

import math

import pytest
import torch

from wquant.errors import SpecError, TensorError
from wquant.formats import QuantizedTensor, parse_spec, prepare_layout, quantize
from wquant.formats.spec import FALLBACKS, GGUF_LADDER, FormatSpec, fallback_spec

gguf = pytest.importorskip("gguf")

#: wquant preset → ggml type name; the oracle for their sizes is gguf's own GGML_QUANT_SIZES table.
GGUF_PRESETS = {
    "q4_0": "Q4_0", "q4_1": "Q4_1", "q5_0": "Q5_0", "q5_1": "Q5_1", "q8_0": "Q8_0", "iq4_nl": "IQ4_NL",
    "mxfp4": "MXFP4", "tq2_0": "TQ2_0", "q2_k": "Q2_K", "q3_k": "Q3_K", "q4_k": "Q4_K", "q5_k": "Q5_K",
    "q6_k": "Q6_K", "iq4_xs": "IQ4_XS",
}  # fmt: skip
TWO_LEVEL = ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_xs")


def _weights(rows: int = 6, cols: int = 512, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g) * 0.1


@pytest.mark.parametrize("preset", GGUF_PRESETS)
def test_bits_are_the_gguf_bytes(preset):
    block, type_size = gguf.GGML_QUANT_SIZES[getattr(gguf.GGMLQuantizationType, GGUF_PRESETS[preset])]
    w = _weights()
    q = quantize(w, preset)
    assert q.bits() == 8 * type_size * w.numel() // block
    assert len(q.to_bytes()) == type_size * w.numel() // block


@pytest.mark.parametrize(
    ("preset", "bpw"),
    [("q2_k", 2.625), ("q3_k", 3.4375), ("q4_k", 4.5), ("q5_k", 5.5), ("q6_k", 6.5625), ("iq4_xs", 4.25)],
)
def test_issue_bits_per_weight(preset, bpw):
    assert quantize(_weights(2, 256), preset).bits_per_param() == bpw


@pytest.mark.parametrize("preset", TWO_LEVEL)
def test_two_level_storage_round_trips(preset):
    q = quantize(_weights(5, 768, seed=1), preset)
    parts = q.bit_breakdown()
    supers = 5 * 768 // 256
    assert parts["super_scales"] == supers * 16 * (2 if q.spec.scaling.rule == "minmax" else 1)
    back = QuantizedTensor.from_bytes(q.to_bytes(), q.spec.to_string(), q.shape, q.dtype)
    assert torch.equal(back.dequantize(), q.dequantize())
    state = QuantizedTensor.from_state(q.state(), q.spec, q.shape, q.dtype)
    assert torch.equal(state.dequantize(), q.dequantize())
    rows = torch.tensor([4, 0, 2])
    assert torch.equal(q.dequantize_rows(rows), q.dequantize()[rows])


@pytest.mark.parametrize("preset", TWO_LEVEL)
def test_two_level_spec_strings_round_trip(preset):
    spec = parse_spec(preset)
    assert parse_spec(spec.to_string()) == spec
    assert FormatSpec.from_json(spec.to_json()) == spec
    assert "/super256:fp16" in spec.to_string()


def test_any_grid_takes_two_level_scales():
    w = _weights(3, 512)
    for text in ("nf4/block32:absmax:u6/super256:fp16", "e2m1/block16:absmax:u8/super256:bf16",
                 "int4/block64:rms:u5/super512:fp32"):  # fmt: skip
        q = quantize(w, text)
        spec = q.spec.scaling
        groups = w.numel() // spec.block_size
        expected = w.numel() * 4 + groups * spec.scale_format.bits + groups // spec.blocks_per_super * 16
        expected += (groups // spec.blocks_per_super) * (spec.super_format.bits - 16)
        assert q.bits() == expected
        assert float((q.dequantize() - w).square().mean() / w.square().mean()) < 0.05


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("int4/block32:absmax:u6", "super-block"),
        ("int4/block32:absmax:u6/super48:fp16", "multiple"),
        ("int4/block32:absmax:fp16/super256:fp16", "integers"),
        ("int4:unsigned/block32:minmax:i6/super256:fp16", "unsigned"),
        ("int4:unsigned/block32:zeropoint:u6/super256:fp16", "minmax"),
        ("int4/block32:minmax:u6/super256:fp16", "starting at 0"),
        ("int4/block32:signmax:u6/super256:fp16", "i6"),
        ("int4/block32:absmax:u6/super256:e8m0", "fp16"),
        ("lloydmax:4/block32:absmax:u6/super256:fp16", "fitted grids"),
        ("int4/block32:absmax:u6/super256:fp16+search", r"drop \+search"),
        ("int4/block32:absmax:u6/super256/x", "super-block is written"),
    ],
)
def test_bad_two_level_specs_say_what_to_fix(text, fragment):
    with pytest.raises(SpecError, match=fragment):
        parse_spec(text)


@pytest.mark.parametrize("preset", TWO_LEVEL)
def test_ragged_rows_are_refused_with_the_fallback(preset):
    w = torch.randn(4, 384)
    with pytest.raises(TensorError) as info:
        quantize(w, preset, name="blk.0.attn_q.weight")
    message = str(info.value)
    assert "blk.0.attn_q.weight" in message and "384" in message and FALLBACKS[preset] in message
    fallback = fallback_spec(preset, (4, 384))
    assert fallback is not None and quantize(w, fallback).bits() > 0


def test_fitted_block_scales_beat_the_plain_rule():
    w = torch.randn(64, 1024, generator=torch.Generator().manual_seed(3))
    for preset in ("q2_k", "q3_k", "q4_k", "q6_k", "iq4_xs"):
        layout = prepare_layout(w, preset)

        def mse(scales, layout=layout):
            return float((layout.decode(layout.encode(w, scales), scales) - w).square().mean())

        plain = mse(layout.choose_scales(w, candidates=()))
        fitted = mse(layout.choose_scales(w))
        assert fitted < 0.95 * plain, preset


def test_fit_follows_importance():
    """Weighting one column heavily must lower that column's error (the fit is weighted least squares)."""
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(4))
    layout = prepare_layout(w, "q3_k")
    importance = torch.ones_like(w)
    importance[:, ::16] = 100.0

    def column_error(scales):
        return float((layout.decode(layout.encode(w, scales), scales) - w)[:, ::16].square().mean())

    assert column_error(layout.choose_scales(w, importance=importance)) < column_error(layout.choose_scales(w))


def test_gguf_ladder_resolves():
    bits = [quantize(_weights(2, 256), p).bits_per_param() for p in GGUF_LADDER]
    assert bits == sorted(bits) and math.isclose(bits[0], 2.625) and math.isclose(bits[-1], 8.5)
