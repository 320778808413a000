"""HQQ zero optimisation: beats min/max RTN on the l_p error, matches a textbook loop and the hqq library."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wquant.algorithms import HQQConfig, config_for, hqq, quantize_weight, shrink_lp
from wquant.errors import ParameterError, SpecError, TensorError
from wquant.formats import QuantizedTensor, parse_spec, quantize


def _gaussian(seed: int = 0) -> torch.Tensor:
    return torch.randn(256, 512, generator=torch.Generator().manual_seed(seed))


def _student3(seed: int = 0) -> torch.Tensor:
    """Student-t with ν = 3 from its definition: N(0,1) / sqrt(χ²₃ / 3), all from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(256, 512, generator=gen, dtype=torch.float64)
    chi2 = torch.randn(3, 256, 512, generator=gen, dtype=torch.float64).square().sum(dim=0)
    return (z / (chi2 / 3).sqrt()).float()


WEIGHTS = {"gaussian": _gaussian, "student3": _student3}


def lp_error(w: torch.Tensor, w_hat: torch.Tensor, p: float = 0.7) -> float:
    return float((w.double() - w_hat.double()).abs().pow(p).sum())


def rel_mse(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float((w.double() - w_hat.double()).square().sum() / w.double().square().sum())


def textbook_hqq(w: torch.Tensor, bits: int, group: int, p: float = 0.7, iters: int = 20) -> torch.Tensor:
    """HQQ written from the paper in float64 on the (groups, group) view: no wquant code, no hqq code.

    Scale 1/s = (2^b − 1)/(max − min), zero −min/s; then repeat Q = clamp(round(W/s + z)), E = shrink(W − s(Q − z)),
    z = mean(Q − (W − E)/s), β ← 1.01β; stop when Σ|W − Ŵ|^p stops falling and return the best Ŵ.
    """
    x = w.double().reshape(-1, group)
    lo, hi = x.min(dim=1, keepdim=True).values, x.max(dim=1, keepdim=True).values
    s = (hi - lo) / (2**bits - 1)
    z, beta = -lo / s, 10.0

    def rebuild(z: torch.Tensor) -> torch.Tensor:
        return s * (torch.round(x / s + z).clamp(0, 2**bits - 1) - z)

    best = rebuild(z)
    for _ in range(iters):
        q = torch.round(x / s + z).clamp(0, 2**bits - 1)
        r = x - s * (q - z)
        e = torch.sign(r) * torch.clamp(r.abs() - r.abs().pow(p - 1) / beta, min=0)
        z, beta = (q - (x - e) / s).mean(dim=1, keepdim=True), beta * 1.01
        new = rebuild(z)
        if not (x - new).abs().pow(p).sum() < (x - best).abs().pow(p).sum():
            break
        best = new
    return best.reshape(w.shape)


@pytest.mark.parametrize("dist", sorted(WEIGHTS))
@pytest.mark.parametrize("bits", [4, 3])
def test_beats_minmax_rtn_on_lp_and_mse_at_equal_bits(dist: str, bits: int) -> None:
    w = WEIGHTS[dist]()
    spec = f"int{bits}:unsigned/block64:minmax:bf16"
    ours, base = hqq(w, HQQConfig(spec)), quantize(w, spec)
    assert ours.bits() == base.bits() == w.numel() * bits + (w.numel() // 64) * 2 * 16  # codes + bf16 scale + zero
    lp, lp_rtn = lp_error(w, ours.dequantize()), lp_error(w, base.dequantize())
    mse, mse_rtn = rel_mse(w, ours.dequantize()), rel_mse(w, base.dequantize())
    # Measured: l_p 0.965-0.976 x RTN, MSE 0.885-0.922 x RTN (the zero moves off the min/max compromise).
    assert lp < 0.985 * lp_rtn
    assert mse < 0.95 * mse_rtn


@pytest.mark.parametrize("bits", [4, 3])
def test_matches_a_textbook_hqq_loop(bits: int) -> None:
    w = _student3(seed=1)
    ours = hqq(w, HQQConfig(f"int{bits}:unsigned/block64:minmax:fp32")).dequantize()
    ref = textbook_hqq(w, bits, 64)
    # Measured: both ratios 1 to 1e-7 (same iterates; fp32 vs fp64 arithmetic, zeros stored in fp32).
    assert rel_mse(w, ours) == pytest.approx(rel_mse(w, ref), rel=2e-3)
    assert lp_error(w, ours) == pytest.approx(lp_error(w, ref), rel=1e-3)


@pytest.mark.parametrize("dist", sorted(WEIGHTS))
def test_beside_the_hqq_library(dist: str) -> None:
    quantizer = pytest.importorskip("hqq.core.quantize").Quantizer
    w = WEIGHTS[dist]()
    w_q, meta = quantizer.quantize(w, nbits=4, group_size=64, optimize=True, axis=1, device="cpu",
                                   compute_dtype=torch.float32, bitpack=False)  # fmt: skip
    assert tuple(meta["scale"].shape) == (w.numel() // 64, 1)  # one scale and zero per 64 consecutive inputs
    assert set(torch.unique(w_q).tolist()) <= set(range(16))  # the element grid 0…15 of int4:unsigned
    meta["compute_dtype"] = torch.float32  # dequantize() would otherwise use float16
    theirs = quantizer.dequantize(w_q, meta).float()
    ours = hqq(w, HQQConfig("int4:unsigned/block64:minmax:fp32")).dequantize()  # fp32 scale and zero, like hqq
    # Measured: MSE ratio 0.997 (Gaussian), 1.002 (t3); l_p 0.999 (hqq stops on the L1 error and returns the zero
    # one update past its best; int3: MSE 1.001 / 1.009).
    assert rel_mse(w, ours) == pytest.approx(rel_mse(w, theirs), rel=0.02)
    assert lp_error(w, ours) == pytest.approx(lp_error(w, theirs), rel=0.01)


def test_genuine_quantized_tensor_with_its_stored_zeros() -> None:
    w = _student3(seed=2)[:32, :200]  # 200 inputs: a ragged last block of 8
    q = hqq(w, HQQConfig("int4:unsigned/block64:minmax:bf16"))
    assert isinstance(q, QuantizedTensor) and q.spec.to_string() == "int4:unsigned/block64:minmax:bf16"
    assert q.bits() == 32 * 200 * 4 + 32 * 4 * 32 and len(q.to_bytes()) * 8 >= q.bits()
    back = QuantizedTensor.from_bytes(q.to_bytes(), q.spec, q.shape, q.dtype)
    assert torch.equal(back.dequantize(), q.dequantize())

    def bf16(codes: np.ndarray) -> torch.Tensor:  # stored bf16 bit patterns → values, by hand
        return torch.from_numpy((np.asarray(codes, dtype=np.uint32) << 16).view(np.float32))

    scale, offset = bf16(q.scale_codes).reshape(32, 4), bf16(q.offset_codes).reshape(32, 4)
    by_hand = q.codes.reshape(32, 200).float() * scale.repeat_interleave(64, 1)[:, :200]
    by_hand += offset.repeat_interleave(64, 1)[:, :200]
    assert torch.allclose(q.dequantize(), by_hand, rtol=0, atol=1e-6)
    assert not np.array_equal(q.offset_codes, quantize(w, q.spec).offset_codes)  # the zeros really moved
    assert np.array_equal(q.scale_codes, quantize(w, q.spec).scale_codes)  # the scales did not


@pytest.mark.parametrize(
    "spec",
    [
        "int4:unsigned/block128:zeropoint:fp16",
        "int3:unsigned/block32:minmax:fp16+outliers0.01",
        "int4:unsigned/channel:minmax:fp32",
        "nf4/block64:minmax:bf16",
    ],
)
def test_other_offset_formats_keep_their_bits_and_never_lose_on_lp(spec: str) -> None:
    w = _student3(seed=3)[:64, :300]
    ours, base = hqq(w, HQQConfig(spec)), quantize(w, spec)
    assert ours.bits() == base.bits()
    assert lp_error(w, ours.dequantize()) <= lp_error(w, base.dequantize()) * (1 + 1e-6)


def test_zeropoint_stays_an_integer_level_and_bf16_weights_round_trip() -> None:
    w = _gaussian(seed=4)[:16, :256].bfloat16()
    q = hqq(w, HQQConfig("gptq-int4-g128"))
    assert q.dequantize().dtype == torch.bfloat16 and q.dequantize().shape == w.shape
    assert q.offset_codes is not None and int(q.offset_codes.min()) >= 0 and int(q.offset_codes.max()) <= 15


def test_shrink_lp_is_the_generalised_soft_threshold() -> None:
    x = torch.tensor([-3.0, -0.05, 0.0, 0.05, 3.0], dtype=torch.float64)
    out = shrink_lp(x, 10.0, 0.7)
    assert out[1:4].abs().max() == 0  # small residuals are absorbed by the zero
    assert float(out[4]) == pytest.approx(3.0 - 3.0**-0.3 / 10.0) and float(out[0]) == -float(out[4])
    assert torch.equal(shrink_lp(x, 2.0, 1.0), torch.sign(x) * (x.abs() - 0.5).clamp(min=0))


def test_bad_input_is_refused_clearly() -> None:
    w = _gaussian()[:8, :64].clone()
    w[0, 3] = float("nan")
    with pytest.raises(TensorError, match="NaN"):
        hqq(w)
    with pytest.raises(TensorError, match="scalar"):
        hqq(torch.tensor(1.0))
    with pytest.raises(SpecError, match="minmax.*zeropoint"):
        HQQConfig("int4/block64:absmax:bf16")
    for p in (0.0, -0.5, 2.0, 3.0, float("nan")):
        with pytest.raises(ParameterError, match="p"):
            HQQConfig(p=p)
    with pytest.raises(ParameterError, match="iterations"):
        HQQConfig(iterations=0)
    with pytest.raises(ParameterError, match="beta"):
        HQQConfig(beta=0.0)
    with pytest.raises(ParameterError, match="kappa"):
        HQQConfig(kappa=0.9)


def test_deterministic() -> None:
    w = _student3(seed=5)[:64, :256]
    a, b = hqq(w), hqq(w.clone())
    assert torch.equal(a.codes, b.codes)
    assert np.array_equal(a.offset_codes, b.offset_codes) and np.array_equal(a.scale_codes, b.scale_codes)


def test_wired_as_a_data_free_algorithm() -> None:
    config = config_for("hqq", parse_spec("int3:unsigned/block64:minmax:bf16"))
    assert isinstance(config, HQQConfig) and config.spec.to_string() == "int3:unsigned/block64:minmax:bf16"
    assert not config.needs_calibration and not config.uses_calibration
    with pytest.raises(SpecError, match="minmax"):
        config_for("hqq", parse_spec("int4/block64:absmax:bf16"))
    w = _gaussian(seed=6)[:32, :128]
    stored = quantize_weight(w, config, None).tensor
    assert torch.equal(stored.codes, hqq(w, config).codes)


def test_model_walk_runs_without_calibration() -> None:
    from torch import nn

    from wquant.models import quantize_

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 16))
    original = model[0].weight.detach().clone()
    reports = quantize_(model, HQQConfig())
    assert [r.name for r in reports] == ["0", "2"] and all(r.output_error is None for r in reports)
    assert torch.equal(model[0].qweight.quantized.codes, hqq(original).codes)
    assert reports[0].bits_per_param == 4.5
