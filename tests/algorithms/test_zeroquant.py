"""ZeroQuant: group-wise weights and token-wise activations, and layer-wise distillation checked against the output
error computed directly (not through the Gram matrices LKD uses), on the training rows and on held-out rows."""

from __future__ import annotations

import pytest
import torch
from algo_helpers import correlated_layer

from wquant.algorithms import ZeroQuantConfig, config_for, fake_quantize, lkd, quantize_weight, statistics_from_inputs
from wquant.errors import ParameterError
from wquant.formats import parse_spec, quantize


def direct_error(w: torch.Tensor, approx: torch.Tensor, x: torch.Tensor, config: ZeroQuantConfig) -> float:
    """‖Q_a(X)·Ŵᵀ − X·Wᵀ‖² / ‖X·Wᵀ‖² in float64, straight from the rows."""
    xq = fake_quantize(x, config.activations).double()  # type: ignore[arg-type]
    y = x.double() @ w.double().T
    return float((xq @ approx.double().T - y).square().sum() / y.square().sum())


def test_defaults_are_group_wise_weights_and_token_wise_activations() -> None:
    cfg = ZeroQuantConfig()
    assert cfg.spec.to_string() == "int8/block64:absmax:fp16"
    assert cfg.activations.to_string() == "int8/token:absmax:fp32:dynamic"  # type: ignore[union-attr]
    assert not cfg.uses_calibration and ZeroQuantConfig(lkd=True).needs_calibration
    assert config_for("zeroquant-lkd", parse_spec("int4/block32:absmax:fp16")).lkd
    w = torch.randn(16, 64)
    assert torch.equal(quantize_weight(w, cfg).tensor.dequantize(), quantize(w, cfg.spec).dequantize())
    with pytest.raises(ParameterError, match="fitted or coded"):
        ZeroQuantConfig("uniform0.5/tensor:rms:bf16+coded", lkd=True)


@pytest.mark.parametrize("acts", ["int8/token", "int4/token"])
def test_lkd_lowers_the_output_error_with_quantized_inputs_also_on_held_out_rows(acts: str) -> None:
    w, x = correlated_layer(48, 128, 3072, seed=7)
    train, held = x[:2048], x[2048:]
    cfg = ZeroQuantConfig("int4/block32:absmax:fp16", activations=acts, lkd=True)
    stats = statistics_from_inputs(train, samples=1280)
    result = lkd(w, stats.sample_rows(), cfg)  # type: ignore[arg-type]
    rounded = quantize(w, cfg.spec).dequantize()
    learned = result.quantized.dequantize()
    rows = stats.sample_rows()
    fit, check = rows[[i for i in range(len(rows)) if i % 5 != 4]], rows[4::5]  # every 5th row is held out
    assert result.kept
    assert result.error_rounded == pytest.approx(direct_error(w, rounded, fit, cfg), rel=1e-3)
    assert result.error_final == pytest.approx(direct_error(w, learned, fit, cfg), rel=1e-3)
    assert result.held_out_final == pytest.approx(direct_error(w, learned, check, cfg), rel=1e-3)
    assert result.error_final < 0.9 * result.error_rounded
    assert direct_error(w, learned, held, cfg) < 0.95 * direct_error(w, rounded, held, cfg)
    assert result.quantized.bits() == quantize(w, cfg.spec).bits()  # same format: codes and scales moved


def test_lkd_that_does_not_generalise_falls_back_to_plain_rounding() -> None:
    """30 rows for 128 inputs: the fit learns the sample (fitting error falls) but not the layer; the held-out
    rows catch it and plain rounding is returned."""
    w, x = correlated_layer(48, 128, 64, seed=8)
    cfg = ZeroQuantConfig("int8/block32:absmax:fp16", lkd=True)
    result = lkd(w, x[:38], cfg)
    assert result.error_final < result.error_rounded and result.held_out_final > result.held_out_rounded
    assert not result.kept
    assert torch.equal(result.quantized.dequantize(), quantize(w, cfg.spec).dequantize())
