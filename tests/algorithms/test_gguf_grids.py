"""GPTQ, RTN clip search and NUPES-style code learning run on the GGUF grids and store exactly those formats."""

from __future__ import annotations

import math

import pytest
import torch

from wquant.algorithms import relative_error
from wquant.algorithms.gptq import GPTQConfig, gptq
from wquant.algorithms.nupes import NUPESConfig, nupes
from wquant.algorithms.rtn import RTNConfig, rtn
from wquant.formats import parse_spec, quantize


def _layer(rows: int = 48, cols: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=g) * 0.05 + torch.eye(cols)
    x = torch.randn(1024, cols, generator=g) @ mix * torch.linspace(0.2, 3.0, cols)  # uneven input scales
    return torch.randn(rows, cols, generator=g), x.T @ x / 1024


@pytest.mark.parametrize("preset", ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k", "iq4_xs", "q4_0", "iq4_nl"])
def test_gptq_on_gguf_grids_beats_rounding_and_stores_the_preset(preset):
    w, h = _layer()
    result = gptq(w, h, GPTQConfig(preset))
    assert result.quantized.spec == parse_spec(preset)
    assert result.quantized.bits() == quantize(w, preset).bits()
    plain = relative_error(w, quantize(w, preset).dequantize(), h)
    assert relative_error(w, result.quantized.dequantize(), h) < 0.85 * plain


def test_gptq_fixes_a_super_block_at_once_in_any_column_order():
    w, h = _layer(cols=768)
    for act_order in (False, True, "group"):
        for static in (False, True):
            q = gptq(w, h, GPTQConfig("q4_k", act_order=act_order, static_groups=static)).quantized
            assert q.bits_per_param() == 4.5 and math.isfinite(relative_error(w, q.dequantize(), h))


def test_rtn_search_with_the_hessian_lowers_the_output_error():
    w, h = _layer()
    plain = relative_error(w, quantize(w, "q3_k").dequantize(), h)
    searched = rtn(w, RTNConfig("q3_k", search=True, importance="hessian"), hessian=h)
    assert searched.spec == parse_spec("q3_k")
    assert relative_error(w, searched.dequantize(), h) < plain


def test_nupes_learns_codes_on_a_gguf_grid():
    w, h = _layer(rows=16, cols=256)
    config = NUPESConfig.from_format("q4_k", steps=30)
    assert config.grid == parse_spec("q4_k").to_string()
    result = nupes(w, config, hessian=h)
    assert result.quantized.spec == parse_spec("q4_k") and math.isnan(result.exponent)
    assert result.error_final <= result.error_rounded


def test_nupes_keeps_power_grids_where_the_gguf_type_has_one():
    assert NUPESConfig.from_format("q4_0").grid == parse_spec("q4_0").to_string()  # int4:asym: no power form
    assert NUPESConfig.from_format("iq4_xs").grid is not None
    assert NUPESConfig.from_format("q8_0").grid is None  # int8 sym: the exponent is searched, as before


def test_hqq_refuses_two_level_scales_with_what_to_use():
    from wquant.algorithms.hqq import HQQConfig
    from wquant.errors import SpecError

    with pytest.raises(SpecError, match="GPTQ or rtn-search"):
        HQQConfig("q4_k")
