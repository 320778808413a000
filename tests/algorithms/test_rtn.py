"""RTN with a per-group clip search: exact without search, never worse with it, any format."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from algo_helpers import correlated_layer

from wquant.algorithms import RTNConfig, hessian_from_inputs, rtn
from wquant.errors import ParameterError, TensorError
from wquant.formats import as_2d, prepare_layout, quantize

SPECS = [
    "int4/block64:absmax:bf16",
    "int4/block64:absmax:bf16+coded",  # the entropy-coded payload must be built on this path too
    "int4:unsigned/block64:minmax:bf16",
    "nf4/block64:absmax:fp32",
    "pow0.7:4/channel:absmax:bf16",
    "crd-normal:4/block64:absmax",
    "e2m1/block32:absmax:e8m0",
    "nvfp4",
    "int8/tensor:rms",
    "int3/block32+outliers0.01",
]


def _heavy(rows: int, cols: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen) ** 3  # heavy tails: a few large weights per block


@pytest.mark.parametrize("spec", SPECS)
def test_without_search_is_formats_quantize(spec: str) -> None:
    w = torch.randn(40, 150, generator=torch.Generator().manual_seed(0))
    ours, ref = rtn(w, RTNConfig(spec, search=False)), quantize(w, spec)
    assert torch.equal(ours.codes, ref.codes) and ours.bits() == ref.bits()
    assert torch.equal(ours.dequantize(), ref.dequantize())


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("importance", ["ones", "abs"])
def test_search_never_loses_on_its_objective(spec: str, importance: str) -> None:
    w = _heavy(32, 192, seed=1)
    imp = torch.ones_like(w) if importance == "ones" else w.abs()
    base = quantize(w, spec)
    ours = rtn(w, RTNConfig(spec, importance=importance))  # type: ignore[arg-type]
    assert ours.spec == base.spec
    if base.spec.coding is None:  # coded sizes follow the codes the search picked
        assert ours.bits() == base.bits()
    else:
        assert ours.payload is not None and ours.bit_breakdown()["codes"] == 8 * len(ours.payload)
    e_base = float(((base.dequantize() - w).square() * imp).sum())
    e_ours = float(((ours.dequantize() - w).square() * imp).sum())
    assert e_ours <= e_base * (1 + 1e-6)


def test_search_clips_heavy_tails_and_helps_a_lot() -> None:
    w = _heavy(64, 256, seed=2)
    spec = "int4/block64:absmax:bf16"
    e_base = float((quantize(w, spec).dequantize() - w).square().sum())
    e_ours = float((rtn(w, RTNConfig(spec)).dequantize() - w).square().sum())
    assert e_ours < 0.97 * e_base
    # Oracle for one block: brute force over 400 clips, by hand, in float64.
    block = w[0, :64].double()
    best = min(
        float(((block / s).round().clamp(-7, 7) * s - block).square().sum())
        for s in (block.abs().max() / 7 * torch.linspace(0.5, 1.0, 400, dtype=torch.float64)).tolist()
    )
    ours_block = rtn(w, RTNConfig(spec, grid=64)).dequantize()[0, :64].double()
    assert float((ours_block - block).square().sum()) <= best * 1.02  # bf16 scale rounding, grid of 64


def test_fisher_weights_steer_the_clip() -> None:
    w = _heavy(16, 128, seed=3)
    fisher = torch.ones_like(w)
    fisher[:, :64] = 100.0
    spec = "int3/block64:absmax:bf16"
    f_out = rtn(w, RTNConfig(spec, importance="fisher"), fisher=fisher).dequantize()
    o_out = rtn(w, RTNConfig(spec)).dequantize()
    weighted = lambda q: float(((q - w).square() * fisher).sum())  # noqa: E731
    assert weighted(f_out) <= weighted(o_out) * (1 + 1e-6)


def test_layout_primitives_choose_the_scales_quantize_stores() -> None:
    w = torch.randn(20, 100, generator=torch.Generator().manual_seed(4))
    for spec in ("int4/block32:absmax:bf16", "int4:unsigned/block32:minmax:bf16", "nvfp4", "nf4/channel:absmax:fp16",
                 "int3/block24:absmax:e8m0+outliers0.02"):  # fmt: skip
        layout = prepare_layout(w, spec)
        x = layout.without_outliers(as_2d(w))
        scales = layout.choose_scales(x)
        reference = quantize(w, spec)
        assert np.array_equal(scales.scale_codes.numpy().reshape(-1), reference.scale_codes), spec
        assert torch.equal(layout.assemble(layout.encode(x, scales), scales).dequantize(), reference.dequantize())


def test_bad_inputs() -> None:
    w = torch.randn(8, 64)
    with pytest.raises(ParameterError, match="importance"):
        RTNConfig(importance="magic")  # type: ignore[arg-type]
    with pytest.raises(ParameterError, match="calibration"):
        rtn(w, RTNConfig(importance="hessian"))
    with pytest.raises(TensorError, match="Fisher"):
        rtn(w, RTNConfig(importance="fisher"), fisher=-torch.ones_like(w))
    with pytest.raises(TensorError, match="NaN"):
        rtn(torch.full((4, 64), float("nan")))
    with pytest.raises(ParameterError, match="lo < hi"):
        RTNConfig(lo=1.5, hi=1.0)


def test_clip_search_on_an_unbounded_uniform_grid_is_refused() -> None:
    # on a uniform grid a smaller multiplier is just a finer step: the search would always pick its lower end
    weight, x = correlated_layer(64, 256, 1024, seed=12)
    with pytest.raises(ParameterError, match="no clip to search"):
        RTNConfig("uniform@3/tensor:rms:bf16+coded", search=True)
    got = rtn(weight, RTNConfig("uniform@3/tensor:rms:bf16+coded", search=False), hessian=hessian_from_inputs(x))
    assert 0.99 * 3 <= got.bits_per_param() <= 3
