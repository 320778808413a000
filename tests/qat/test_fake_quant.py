"""Fake quantization: forward = RTN for every format, STE / LSQ / PEQA / exponent gradients against closed forms."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import wquant
from wquant.errors import ParameterError, SpecError
from wquant.formats import PowerGrid, quantize
from wquant.models import QuantizedLinear, quantized_modules
from wquant.qat import FakeQuantConfig, FakeQuantLinear, PEQALinear, convert_qat, count_trainable, prepare_qat

SPECS = [
    "int4/block64:absmax:bf16",
    "int3:unsigned/block32:minmax:bf16",
    "int4:unsigned/block128:zeropoint:fp16",
    "int2/block40:absmax:bf16",  # ragged last block
    "nf4",
    "mxfp4",
    "nvfp4",  # e4m3 scales with a per-tensor factor
    "e4m3/channel:absmax:fp32",
    "lloydmax:3/block64:absmax:fp16",  # fitted table
    "pow0.7:4/channel:absmax:bf16",
    "crd-t5:4/tensor:rms",
    "int3/block16:rms:fp16+outliers0.01",
    "int4/block64:absmax:bf16+search",
    "uniform0.05/tensor:rms:bf16+coded",
]


def _weight(rows: int = 24, cols: int = 100, seed: int = 0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed)) * 0.05).to(dtype)


@pytest.mark.parametrize("spec", SPECS)
def test_forward_and_stored_tensor_are_rtn_of_the_weight(spec: str) -> None:
    w = _weight()
    rtn = quantize(w, spec)
    modules = [FakeQuantLinear(nn.Parameter(w.clone()), None, FakeQuantConfig(spec)),
               PEQALinear(rtn, None, FakeQuantConfig(spec, freeze_codes=True))]  # fmt: skip
    if not spec.startswith("uniform"):
        modules.append(FakeQuantLinear(nn.Parameter(w.clone()), None, FakeQuantConfig(spec, learn_scales=True)))
    for module in modules:
        assert torch.equal(module.fake_weight().detach(), rtn.dequantize())
        stored = module.to_quantized()
        assert stored.to_bytes() == rtn.to_bytes()  # every field, bit for bit
        assert stored.bits() == rtn.bits()


@pytest.mark.parametrize("spec", ["q4_k", "q2_k", "iq4_xs", "q6_k"])
def test_two_level_gguf_scales_train_through_the_ste_and_refuse_learned_scales(spec: str) -> None:
    w = _weight(8, 512)
    rtn = quantize(w, spec)
    module = FakeQuantLinear(nn.Parameter(w.clone()), None, FakeQuantConfig(spec))
    assert torch.equal(module.fake_weight().detach(), rtn.dequantize())
    assert module.to_quantized().to_bytes() == rtn.to_bytes()
    for options in ({"learn_scales": True}, {"freeze_codes": True}):
        with pytest.raises(ParameterError, match="two-level"):
            FakeQuantConfig(spec, **options)
    with pytest.raises(ParameterError, match="two-level"):
        PEQALinear(rtn, None, FakeQuantConfig("int4/block32:absmax:fp16", freeze_codes=True))


def test_budget_spec_is_met_again_on_the_trained_weight() -> None:
    w = _weight(32, 128)
    spec = "uniform@3/tensor:rms:bf16+coded"
    module = FakeQuantLinear(nn.Parameter(w.clone()), None, FakeQuantConfig(spec))
    with torch.no_grad():
        module.weight.mul_(1.3)
    stored = module.to_quantized()
    assert stored.to_bytes() == quantize(module.weight.detach(), spec).to_bytes()
    assert 2.95 <= stored.bits_per_param() <= 3.0


def _toy(rows: int = 6, cols: int = 16, n: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(rows, cols, generator=gen, dtype=torch.float64)
    x = torch.randn(n, cols, generator=gen, dtype=torch.float64)
    y = torch.randn(n, rows, generator=gen, dtype=torch.float64)
    return w, x, y


def _upstream(w_hat: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dL/dŴ of L = ½‖x Ŵᵀ − y‖²."""
    return (x @ w_hat.T - y).T @ x


def _loss(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (module(x) - y).square().sum()


def test_ste_gradient_is_the_analytic_one_with_clipping() -> None:
    """int3 with rms scales (grid ends at 3 rms): clipped weights get no gradient, the others the identity."""
    w, x, y = _toy()
    module = FakeQuantLinear(nn.Parameter(w.clone()), None, FakeQuantConfig("int3/block8:rms:fp32"))
    _loss(module, x, y).backward()
    wn = w.numpy()
    s = np.sqrt((wn.reshape(6, 2, 8) ** 2).mean(-1)) / np.sqrt(3.0)  # rms / rms target of levels −3..3
    z = wn / np.repeat(s, 8, axis=1)
    w_hat = np.clip(np.round(z), -3, 3) * np.repeat(s, 8, axis=1)
    inside = np.abs(z) <= 3
    assert 0 < (~inside).sum() < inside.size  # the toy does clip
    np.testing.assert_allclose(module.fake_weight().detach().numpy(), w_hat, rtol=1e-6)
    np.testing.assert_allclose(module.weight.grad.numpy(), _upstream(w_hat, x.numpy(), y.numpy()) * inside, rtol=1e-6)


def test_lsq_scale_gradient_is_the_analytic_one() -> None:
    """LSQ: dŴ/ds = q − w/s inside the grid, q where it clips; dŴ/dw = 1 inside, 0 outside."""
    w, x, y = _toy()
    module = FakeQuantLinear(nn.Parameter(w.clone()), None, FakeQuantConfig("int3/block8:absmax:fp32",
                                                                             learn_scales=True))  # fmt: skip
    with torch.no_grad():
        module.scale.mul_(torch.linspace(0.6, 1.1, 12, dtype=torch.float64).reshape(6, 2).float())  # some clip
    _loss(module, x, y).backward()
    s = np.repeat(module.scale.detach().double().numpy(), 8, axis=1)
    z = w.numpy() / s
    q = np.clip(np.round(z), -3, 3)
    inside = np.abs(z) <= 3
    assert 0 < (~inside).sum()
    up = _upstream(q * s, x.numpy(), y.numpy())
    ds = np.where(inside, q - z, q)
    np.testing.assert_allclose(module.weight.grad.numpy(), up * inside, rtol=1e-6)
    np.testing.assert_allclose(module.scale.grad.numpy(), (up * ds).reshape(6, 2, 8).sum(-1), rtol=1e-5, atol=1e-9)


def test_lsq_minmax_offset_gradient_is_the_analytic_one() -> None:
    """ŵ = s·clip(round((w − o)/s)) + o: dŴ/do = 0 inside the grid, 1 where it clips."""
    w, x, y = _toy()
    module = FakeQuantLinear(nn.Parameter(w.clone()), None, FakeQuantConfig("int2:unsigned/block8:minmax:fp32",
                                                                             learn_scales=True))  # fmt: skip
    with torch.no_grad():
        module.scale.mul_(0.7)
    _loss(module, x, y).backward()
    s = np.repeat(module.scale.detach().double().numpy(), 8, axis=1)
    o = np.repeat(module.offset.detach().double().numpy(), 8, axis=1)
    z = (w.numpy() - o) / s
    q = np.clip(np.round(z), 0, 3)
    inside = (z >= 0) & (z <= 3)
    up = _upstream(q * s + o, x.numpy(), y.numpy())
    assert 0 < (~inside).sum()
    np.testing.assert_allclose(module.offset.grad.numpy(), (up * ~inside).reshape(6, 2, 8).sum(-1), rtol=1e-5,
                               atol=1e-9)  # fmt: skip
    np.testing.assert_allclose(module.scale.grad.numpy(), (up * np.where(inside, q - z, q)).reshape(6, 2, 8).sum(-1),
                               rtol=1e-5, atol=1e-9)  # fmt: skip


def test_peqa_scale_gradient_is_exact_and_codes_never_move() -> None:
    w, x, y = _toy()
    q0 = quantize(w, "int4/block8:absmax:fp32")
    module = PEQALinear(q0, None, FakeQuantConfig("int4/block8:absmax:fp32", freeze_codes=True))
    _loss(module, x, y).backward()
    levels = q0.codes.reshape(6, 16).double().numpy() - 7  # int4 sym: codes 0..14 are levels −7..7
    s = np.repeat(q0.scales().double().numpy(), 8, axis=1)
    up = _upstream(levels * s, x.numpy(), y.numpy())
    np.testing.assert_allclose(module.scale.grad.numpy(), (up * levels).reshape(6, 2, 8).sum(-1), rtol=1e-5)
    opt = torch.optim.Adam(module.parameters(), lr=0.01)
    for _ in range(5):
        opt.zero_grad()
        _loss(module, x, y).backward()
        opt.step()
    stored = module.to_quantized()
    assert torch.equal(stored.codes, q0.codes)
    assert not torch.equal(stored.scales(), q0.scales())
    assert _loss(module, x, y) < _loss(PEQALinear(q0, None, module.config), x, y)
    assert count_trainable_of(module) == 12  # 6 rows × 2 groups


def count_trainable_of(module: nn.Module) -> int:
    return sum(p.numel() for _, p in module.trainable())  # type: ignore[operator]


def test_power_exponent_gradient_matches_finite_differences_of_the_grid() -> None:
    """dŴ/da = s·∂level/∂a; the oracle differentiates the published PowerGrid levels numerically."""
    w, x, y = _toy()
    spec = "pow0.7:4/channel:absmax:fp32"
    module = FakeQuantLinear(nn.Parameter(w.clone()), None, FakeQuantConfig(spec, learn_exponent=True))
    _loss(module, x, y).backward()
    q = quantize(w, spec)
    codes = q.codes.reshape(6, 16).long().numpy()
    h = 1e-5
    dlevel = (PowerGrid(4, 0.7 + h).codebook().levels[codes] - PowerGrid(4, 0.7 - h).codebook().levels[codes]) / (2 * h)
    s = q.scales().double().numpy()
    up = _upstream(q.dequantize().numpy(), x.numpy(), y.numpy())
    assert module.exponent.grad is not None
    assert float(module.exponent.grad) == pytest.approx(float((up * dlevel * s).sum()), rel=1e-4)


def test_learned_exponent_is_stored_in_the_spec() -> None:
    w = _weight(16, 64) ** 3 * 400  # heavy tails want a < 1
    module = FakeQuantLinear(nn.Parameter(w.clone()), None, FakeQuantConfig("int4/channel:absmax:bf16",
                                                                             learn_exponent=True))  # fmt: skip
    assert module.current_spec().to_string().startswith("pow1.0:4/")
    with torch.no_grad():
        module.exponent.fill_(0.61234567)
    stored = module.to_quantized()
    assert stored.spec.to_string().startswith("pow0.6123:4/")
    assert stored.to_bytes() == quantize(w, stored.spec).to_bytes()
    assert torch.equal(module.fake_weight().detach(), stored.dequantize())


def test_conv1d_models_convert_to_the_rtn_model(gpt2: nn.Module) -> None:
    spec = "int4/block16:absmax:bf16"
    ref = copy.deepcopy(gpt2)
    wquant.quantize_(ref, spec)
    prepare_qat(gpt2, spec)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fake = gpt2(ids).logits
    convert_qat(gpt2)
    with torch.no_grad():
        assert torch.equal(gpt2(ids).logits, ref(ids).logits)
        assert torch.equal(fake, ref(ids).logits)
    layouts = {m.layout for _, m in quantized_modules(gpt2)}
    assert layouts == {"transposed"}  # the LM head is tied to the embedding: left as it is


def test_peqa_freezes_the_codes_of_an_already_quantized_model(llama: nn.Module) -> None:
    from wquant.algorithms import GPTQConfig

    spec = "int3/block16:absmax:bf16"
    batches = [torch.randint(3, 96, (4, 16), generator=torch.Generator().manual_seed(i)) for i in range(2)]
    wquant.quantize_(llama, GPTQConfig(spec), calibration=batches)
    before = {p: m.qweight.quantized.codes.clone() for p, m in quantized_modules(llama)}
    paths = prepare_qat(llama, FakeQuantConfig(spec, freeze_codes=True))
    assert sorted(paths) == sorted(before)  # the tied lm_head/embedding stays as it is (not quantized)
    opt = torch.optim.Adam([p for _, m in _peqa(llama) for p in m.parameters() if p.requires_grad], lr=1e-2)
    for batch in batches:
        llama(batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()
    convert_qat(llama)
    for path, module in quantized_modules(llama):
        assert isinstance(module, QuantizedLinear)
        assert torch.equal(module.qweight.quantized.codes, before[path])


def _peqa(model: nn.Module) -> list[tuple[str, PEQALinear]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PEQALinear)]


def test_trainable_counts_follow_the_layout(llama: nn.Module) -> None:
    peqa = copy.deepcopy(llama)
    prepare_qat(peqa, FakeQuantConfig("int4:unsigned/block16:minmax:bf16", freeze_codes=True))
    shapes = [m.shape for _, m in _peqa(peqa)]
    assert count_trainable(peqa) == sum(2 * r * -(-c // 16) for r, c in shapes)  # scale + offset per group
    prepare_qat(llama, "int4/block16:absmax:bf16")
    assert count_trainable(llama) == sum(r * c for r, c in shapes)  # the weights (no biases in Llama)


def test_refusals() -> None:
    with pytest.raises(ParameterError, match="uniform grid"):
        FakeQuantConfig("uniform0.1/tensor:rms:bf16+coded", learn_scales=True)
    with pytest.raises(SpecError, match="power grid"):
        FakeQuantConfig("nf4", learn_exponent=True)
    with pytest.raises(ParameterError, match="only for PEQA"):
        FakeQuantConfig("int4", round_scales=False)
    with pytest.raises(ParameterError, match="nothing to train"):
        prepare_qat(nn.Sequential(nn.Linear(4, 4)), "int4/block4", exclude=("*",))
    with pytest.raises(ParameterError, match="prepare_qat first"):
        convert_qat(nn.Sequential(nn.Linear(4, 4)))
