"""Activation formats against independent oracles: textbook per-token int8, the OCP MX rule for e4m3 blocks, an
integer GEMM in int64, and the spec grammar's refusals."""

from __future__ import annotations

import math

import pytest
import torch

from wquant.algorithms import fake_quantize, parse_activations, static_scale
from wquant.errors import SpecError


def _e4m3_values() -> torch.Tensor:
    """OCP E4M3 (fn): bias 7, subnormals at exponent field 0, no infinities, S.1111.111 is NaN → max 448."""
    values = set()
    for e in range(16):
        for m in range(8):
            if e == 15 and m == 7:
                continue
            v = (m / 8) * 2.0**-6 if e == 0 else (1 + m / 8) * 2.0 ** (e - 7)
            values.update((v, -v))
    return torch.tensor(sorted(values), dtype=torch.float64)


def test_spec_grammar_defaults_presets_and_round_trip() -> None:
    assert parse_activations("int8").to_string() == "int8/token:absmax:fp32:dynamic"
    assert parse_activations("mxfp8").to_string() == "e4m3/block32:absmax:e8m0:dynamic"
    assert parse_activations("int8/tensor:static").static
    assert parse_activations("int4/channel").to_string() == "int4/channel:absmax:fp32:static"
    for text in ("int8/token", "int8:unsigned/token:minmax", "e4m3/block16:absmax:e8m0", "int8/tensor:static:fp16"):
        spec = parse_activations(text)
        assert parse_activations(spec.to_string()) == spec
    assert parse_activations("int8/token").bits_per_element(256) == 8 + 32 / 256
    assert parse_activations("mxfp8").bits_per_element(4096) == 8 + 8 / 32
    assert parse_activations("int8:unsigned/token:minmax").bits_per_element(64) == 8 + 64 / 64
    assert parse_activations("int8/tensor:static").bits_per_element(64) == 8


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("int8/token:static", "dynamic"),
        ("int8/block32:static", "dynamic"),
        ("int8/channel:dynamic", "must be static"),
        ("int8:unsigned/tensor:minmax:static", "static activation scales are absmax"),
        ("lloydmax:4/token", "fitted to data"),
        ("int8/row", "granularity 'row' unknown"),
        ("int8/token:bogus", "neither a rule"),
        ("", "non-empty"),
    ],
)
def test_bad_specs_say_what_to_fix(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_activations(text)


def test_per_token_int8_is_the_textbook_rule() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 7, 64, generator=gen) * torch.linspace(0.1, 5, 64)
    scale = x.abs().amax(dim=-1, keepdim=True) / 127
    expected = torch.clamp(torch.round(x / scale), -127, 127) * scale
    got = fake_quantize(x, parse_activations("int8/token"))
    assert got.shape == x.shape and got.dtype == x.dtype
    assert torch.allclose(got, expected, rtol=0, atol=1e-6)
    # per tensor, static: one scale from the calibrated max, values beyond it clip
    spec = parse_activations("int8/tensor:static")
    s = static_scale(spec, x.reshape(-1, 64).abs().amax(dim=0) / 2)  # calibrated on half the range
    assert s.shape == (1,) and math.isclose(float(s), float(x.abs().max()) / 2 / 127, rel_tol=1e-6)
    clipped = fake_quantize(x, spec, s)
    assert torch.allclose(clipped, torch.clamp(torch.round(x / s), -127, 127) * s, atol=1e-6)


def test_mx_e4m3_blocks_follow_the_ocp_rule() -> None:
    """OCP MX: shared scale 2^(floor(log2 amax) − emax), emax(e4m3) = 8; elements round to the nearest e4m3 value."""
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(5, 96, generator=gen, dtype=torch.float64) * 3
    levels = _e4m3_values()
    blocks = x.reshape(5, 3, 32)
    scale = torch.exp2(torch.floor(torch.log2(blocks.abs().amax(dim=-1, keepdim=True))) - 8)
    scaled = (blocks / scale).clamp(-448, 448)
    nearest = levels[(scaled.unsqueeze(-1) - levels).abs().argmin(dim=-1)]
    expected = (nearest * scale).reshape(5, 96)
    got = fake_quantize(x.float(), parse_activations("mxfp8")).double()
    assert torch.allclose(got, expected, rtol=1e-6, atol=0)


def test_fake_quantized_product_equals_the_integer_gemm() -> None:
    """y = Q_a(x)·Q_w(W)ᵀ in float is a_t·w_o·Σ_k qx·qw with the sum in exact integers (int64 here)."""
    gen = torch.Generator().manual_seed(2)
    x, w = torch.randn(16, 512, generator=gen), torch.randn(24, 512, generator=gen)
    a = x.abs().amax(dim=1, keepdim=True) / 127
    s = w.abs().amax(dim=1, keepdim=True) / 127
    qx, qw = torch.round(x / a).to(torch.int64), torch.round(w / s).to(torch.int64)
    exact = (qx @ qw.T).double() * a.double() * s.double().T
    from wquant.formats import quantize

    w_hat = quantize(w, "int8/channel:absmax:fp32").dequantize()
    y = fake_quantize(x, parse_activations("int8/token")) @ w_hat.T
    assert float((y.double() - exact).abs().max() / exact.abs().max()) < 1e-6
