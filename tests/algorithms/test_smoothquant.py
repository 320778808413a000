"""SmoothQuant against closed forms: the scale formula, and the W8A8 error on a layer with planted activation
outliers predicted by the uniform rounding-noise model (an oracle independent of the code)."""

from __future__ import annotations

import pytest
import torch

from wquant.algorithms import (
    SmoothQuantConfig,
    migration_scales,
    parse_activations,
    smoothquant_scales,
    statistics_from_inputs,
)
from wquant.algorithms.smoothing import w8a8_error
from wquant.errors import ParameterError

ACT = parse_activations("int8/token")


def planted(seed: int, out: int = 64, cols: int = 128, tokens: int = 1024, k: int = 4, m: float = 60.0):
    """N(0, 1) weights and inputs, except k input channels at ±m·(1 + U(0, 0.1)): the outliers of LLM activations."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(out, cols, generator=gen)
    x = torch.randn(tokens, cols, generator=gen)
    sign = torch.randint(0, 2, (tokens, k), generator=gen) * 2 - 1
    x[:, :k] = sign * m * (1 + 0.1 * torch.rand(tokens, k, generator=gen))
    return w, x


def noise_model(w: torch.Tensor, x: torch.Tensor, s: torch.Tensor) -> float:
    """Closed form of the W8A8 output error with rounding errors uniform on their steps and independent:
    Σ_t,o [Σ_j (w_oj s_j)²·Δa_t² + Σ_j (x_tj / s_j)²·Δw_o²] / 12, Δa_t = max_j |x_tj/s_j| / 127 (per token),
    Δw_o = max_j |w_oj s_j| / 127 (per output channel)."""
    ws, xs = (w * s).double(), (x / s).double()
    da, dw = xs.abs().amax(1) / 127, ws.abs().amax(1) / 127
    per = ws.square().sum(1)[None, :] * da[:, None].square() + xs.square().sum(1)[:, None] * dw[None, :].square()
    return float(per.sum() / 12)


def test_scales_follow_the_formula_and_alpha_zero_is_not_identity() -> None:
    act, wmax = torch.tensor([4.0, 9.0, 0.0, 1.0]), torch.tensor([1.0, 0.25, 2.0, 0.0])
    assert torch.allclose(migration_scales(act, wmax, 0.5), torch.tensor([2.0, 6.0, 1.0, 1.0]))  # dead channels: 1
    assert torch.allclose(migration_scales(act, wmax, 1.0), torch.tensor([4.0, 9.0, 1.0, 1.0]))
    # the paper's α = 0 moves everything onto the activations (s = 1/max|W|), it does not switch smoothing off
    assert torch.allclose(migration_scales(act, wmax, 0.0), torch.tensor([1.0, 4.0, 1.0, 1.0]))
    gen = torch.Generator().manual_seed(3)
    w1, w2, x = torch.randn(8, 16, generator=gen), torch.randn(5, 16, generator=gen), torch.randn(64, 16, generator=gen)
    got = smoothquant_scales([w1, w2], statistics_from_inputs(x), SmoothQuantConfig(alpha=0.3)).scales
    wmax = torch.maximum(w1.abs().amax(0), w2.abs().amax(0))  # max |W_j| over every layer fed the input
    assert torch.allclose(got, x.abs().amax(0) ** 0.3 / wmax**0.7, rtol=1e-5)
    assert SmoothQuantConfig(alpha=None).channel_scales([w1], statistics_from_inputs(x)) is None


@pytest.mark.parametrize("seed", [0, 1])
def test_planted_outliers_w8a8_error_drops_fivefold_as_the_noise_model_predicts(seed: int) -> None:
    """Plain W8A8: one ±60 channel sets every token's step (60/127 ≈ 0.47 on N(0,1) entries). Smoothing with α = 0.5
    divides it by √(60·1.1/max|W_j|) ≈ 5 and spreads the difficulty; the noise model predicts ≈ 7-8× less error."""
    w, x = planted(seed)
    stats = statistics_from_inputs(x)
    cfg = SmoothQuantConfig()
    ones = torch.ones(x.shape[1])
    s = smoothquant_scales([w], stats, cfg).scales
    measured = w8a8_error([w], x, ones, cfg.spec, ACT) / w8a8_error([w], x, s, cfg.spec, ACT)
    predicted = noise_model(w, x, ones) / noise_model(w, x, s)
    assert predicted >= 6.0
    assert measured >= 5.0
    assert abs(measured / predicted - 1) < 0.3
    searched = smoothquant_scales([w], statistics_from_inputs(x, samples=512), SmoothQuantConfig(search=True),
                                  activations=ACT)  # fmt: skip
    assert w8a8_error([w], x, searched.scales, cfg.spec, ACT) <= 1.05 * w8a8_error([w], x, s, cfg.spec, ACT)


def test_search_needs_sample_rows_and_bad_settings_are_refused() -> None:
    w, x = planted(0, tokens=64)
    with pytest.raises(ParameterError, match="sample input rows"):
        smoothquant_scales([w], statistics_from_inputs(x), SmoothQuantConfig(search=True), activations=ACT)
    with pytest.raises(ParameterError, match=r"alpha must be in \[0, 1\]"):
        SmoothQuantConfig(alpha=1.5)
    with pytest.raises(ParameterError, match="finish"):
        SmoothQuantConfig(finish="hqq")  # type: ignore[arg-type]
