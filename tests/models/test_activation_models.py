"""Activation quantization and smoothing through `quantize_` on tiny in-memory models: calibrated static scales,
exact weight bits with the activation width beside them, checkpoints that restore the input quantizers, and
SmoothQuant/AWQ/ZeroQuant in the walk."""

from __future__ import annotations

import pytest
import torch

import wquant
from tests.conftest import tiny_bert, tiny_llama
from wquant.algorithms import AWQConfig, SmoothQuantConfig, ZeroQuantConfig
from wquant.errors import ParameterError
from wquant.models import QuantizeConfig, QuantizedLinear, load_quantized, model_bits, save_quantized
from wquant.models.activations import InputQuantizer, input_quantizers

W8 = "int8/channel:absmax:fp32"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # tiny models: a second thread only adds OpenMP waits on the shared cores


def _batches(vocab: int, n: int = 4) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(5)
    return [torch.randint(0, vocab, (2, 24), generator=gen) for _ in range(n)]


def test_static_activation_scales_are_calibrated_and_bits_stay_exact() -> None:
    model = tiny_llama(tie=False)
    batches = _batches(model.config.vocab_size)
    seen: list[torch.Tensor] = []
    hook = model.model.layers[0].self_attn.q_proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0].detach()))
    with torch.no_grad():
        for b in batches:
            model(b)
    hook.remove()
    peak = max(float(t.abs().max()) for t in seen)  # layer 0's input: nothing before it is quantized
    reports = wquant.quantize_(model, QuantizeConfig(W8, activations="int8/tensor:static"), calibration=batches)
    assert all(r.activations == "int8/tensor:absmax:fp32:static" and r.activation_bits == 8 for r in reports)
    assert all(r.bits_per_param == 8 + 32 / r.shape[1] for r in reports)  # int8 codes + an fp32 scale per row
    q = model.model.layers[0].self_attn.q_proj
    assert isinstance(q.input_quant, InputQuantizer)
    assert float(q.input_quant.scale) == pytest.approx(peak / 127, rel=1e-6)
    bits = model_bits(model)
    scales = [t for t in bits.tensors if t.name.endswith("input_quant.scale")]
    assert len(scales) == len(reports) and all(t.bits == 32 for t in scales)  # stored, so counted


def test_dynamic_activations_need_no_data_and_report_their_width() -> None:
    model = tiny_llama(tie=False)
    reports = wquant.quantize_(model, QuantizeConfig(W8, activations="int8/token"))
    assert {r.activation_bits for r in reports} == {8 + 32 / r.shape[1] for r in reports}
    assert len(input_quantizers(model)) == len(reports)
    with pytest.raises(ParameterError, match="static activation scales"):
        wquant.quantize_(tiny_llama(tie=False), QuantizeConfig(W8, activations="int8/tensor:static"))


@pytest.mark.parametrize("acts", ["int8/tensor:static", "mxfp8"])
def test_checkpoints_restore_input_quantizers_bit_identically(tmp_path, acts: str) -> None:
    model = tiny_llama(tie=False)
    batches = _batches(model.config.vocab_size)
    wquant.quantize_(model, QuantizeConfig("int4/block16:absmax:bf16", activations=acts), calibration=batches)
    save_quantized(model, tmp_path / "q")
    loaded = load_quantized(tmp_path / "q")
    layers = [m for m in loaded.modules() if isinstance(m, QuantizedLinear)]
    assert layers and all(m.input_quant is not None and m.input_quant.spec == m.input_quant.spec for m in layers)
    assert {m.input_quant.spec.to_string() for m in layers} == {InputQuantizer(acts, 8).spec.to_string()}
    with torch.no_grad():
        assert torch.equal(model(batches[0]).logits, loaded(batches[0]).logits)


def test_smoothquant_without_smoothing_is_plain_w8a8_exactly() -> None:
    batches = _batches(96)
    plain, smooth_off, smoothed = tiny_llama(tie=False), tiny_llama(tie=False), tiny_llama(tie=False)
    wquant.quantize_(plain, QuantizeConfig(W8, activations="int8/token"), calibration=batches)
    wquant.quantize_(smooth_off, SmoothQuantConfig(alpha=None), calibration=batches)
    reports = wquant.quantize_(smoothed, SmoothQuantConfig(alpha=0.5), calibration=batches)
    with torch.no_grad():
        assert torch.equal(plain(batches[0]).logits, smooth_off(batches[0]).logits)
    assert all(r.activations == "int8/token:absmax:fp32:dynamic" for r in reports)
    notes = {r.name: r.note for r in reports}
    assert "folded into model.layers.0.input_layernorm" in notes["model.layers.0.self_attn.q_proj"]
    assert "folded into model.layers.0.mlp.up_proj" in notes["model.layers.0.mlp.down_proj"]
    assert "folded into model.norm" in notes["lm_head"]  # outside the blocks: the whole model is the block
    assert not torch.equal(
        smoothed.model.layers[0].input_layernorm.weight, plain.model.layers[0].input_layernorm.weight
    )


def _kl(reference: torch.nn.Module, model: torch.nn.Module, ids: torch.Tensor) -> float:
    with torch.no_grad():
        p, q = reference(ids).logits.log_softmax(-1), model(ids).logits.log_softmax(-1)
    return float((p.exp() * (p - q)).sum(-1).mean())


def test_awq_in_the_walk_beats_rtn_and_says_where_bert_cannot_fold() -> None:
    batches = _batches(96, 6)
    base, rtn, awq = tiny_llama(tie=False), tiny_llama(tie=False), tiny_llama(tie=False)
    fmt = "int3/block16:absmax:fp32"
    awq_reports = wquant.quantize_(awq, AWQConfig(fmt), calibration=batches)
    rtn_reports = wquant.quantize_(rtn, fmt)
    assert [r.bits_per_param for r in awq_reports] == [r.bits_per_param for r in rtn_reports]  # same exact bits
    held_out = torch.randint(0, 96, (4, 32), generator=torch.Generator().manual_seed(11))
    assert _kl(base, awq, held_out) < 0.9 * _kl(base, rtn, held_out)
    bert = tiny_bert()
    batch = [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in _batches(120)]
    notes = {r.name: r.note for r in wquant.quantize_(bert, AWQConfig(fmt), calibration=batch)}
    assert "not smoothed" in notes["encoder.layer.0.attention.self.query"]
    assert "not smoothed" in notes["encoder.layer.0.intermediate.dense"]
    assert "folded into encoder.layer.0.attention.self.value" in notes["encoder.layer.0.attention.output.dense"]


def test_zeroquant_lkd_runs_in_the_walk_with_quantized_inputs() -> None:
    model = tiny_llama(tie=False)
    cfg = ZeroQuantConfig("int4/block16:absmax:fp16", lkd=True, samples=64)
    reports = wquant.quantize_(model, cfg, calibration=_batches(96))
    assert all(r.activations == "int8/token:absmax:fp32:dynamic" and "LKD output error" in r.note for r in reports)
    assert all(r.bits_per_param == 4 + 16 * -(-r.shape[1] // 16) / r.shape[1] for r in reports)  # ragged groups


def test_stored_divisors_smooth_what_cannot_be_folded_and_survive_a_checkpoint(tmp_path) -> None:
    """BERT's q/k/v and FFN inputs come from norms that also feed the residual: with fold="store" their scale is
    kept as one fp16 divisor per group (16 bits per input channel, counted once), and the walk stays exact."""
    bert = tiny_bert()
    batch = [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in _batches(120)]
    reports = wquant.quantize_(bert, SmoothQuantConfig(fold="store"), calibration=batch)
    notes = {r.name: r.note for r in reports}
    assert "stored as an fp16 divisor" in notes["encoder.layer.0.attention.self.query"]
    assert "folded into encoder.layer.0.attention.self.value" in notes["encoder.layer.0.attention.output.dense"]
    layer = bert.encoder.layer[0]
    q, k = layer.attention.self.query.input_quant, layer.attention.self.key.input_quant
    assert q.divisor is k.divisor and q.divisor.dtype == torch.float16  # one per group
    divisors = [t for t in model_bits(bert).tensors if t.name.endswith("input_quant.divisor")]
    # per block: q/k/v, intermediate and output.dense (after GELU) store one; the pooler after the last block one
    assert len(divisors) == 2 * 3 + 1 and all(t.bits == 16 * t.numel for t in divisors)
    save_quantized(bert, tmp_path / "q")
    loaded = load_quantized(tmp_path / "q")
    with torch.no_grad():
        assert torch.equal(bert(**batch[0]).last_hidden_state, loaded(**batch[0]).last_hidden_state)
    lq = loaded.encoder.layer[0].attention.self
    assert lq.query.input_quant.divisor is lq.key.input_quant.divisor  # the tie survives the checkpoint


def test_the_smoothing_step_leaves_the_block_output_unchanged_before_quantization() -> None:
    """The prepare step alone (folds, and stored divisors applied by pre-hooks) on BERT block 0: same output."""
    from wquant.models.calibration import _block_passes, _capture_inputs, _Inputs
    from wquant.models.smoothing import smoothing_step

    bert = tiny_bert()
    batch = [{"input_ids": b, "attention_mask": torch.ones_like(b)} for b in _batches(120, 2)]
    block = bert.encoder.layer[0]
    with torch.no_grad():
        inputs: list[_Inputs] = _capture_inputs(bert, block, batch)
        before = [block(*x.args, **x.kwargs)[0] for x in inputs]
        paths = [p for p, m in block.named_modules() if isinstance(m, torch.nn.Linear)]
        notes: dict[str, str] = {}
        divisors: dict[str, torch.nn.Parameter] = {}
        step = smoothing_step(lambda _p: SmoothQuantConfig(alpha=0.8, fold="store"), lambda _p: None, notes,
                              divisors=divisors)  # fmt: skip
        step(block, "encoder.layer.0.", paths, _block_passes(block, inputs))
        after = [block(*x.args, **x.kwargs)[0] for x in inputs]
    assert len(divisors) == 5 and len(notes) == 6  # q/k/v + intermediate + output stored; o folded into value
    for a, b in zip(after, before, strict=True):
        assert float((a - b).norm() / b.norm()) < 1e-5


def test_activation_specs_per_module_first_match_wins() -> None:
    model = tiny_llama(tie=False)
    acts = {"*.down_proj": "mxint8", "lm_head": "none", "*": "int8/token"}
    reports = {r.name: r for r in wquant.quantize_(model, QuantizeConfig(W8, activations=acts))}
    assert reports["model.layers.0.mlp.down_proj"].activations == "int8/block32:absmax:e8m0:dynamic"
    assert reports["lm_head"].activations is None and model.lm_head.input_quant is None
    assert reports["model.layers.1.self_attn.q_proj"].activations == "int8/token:absmax:fp32:dynamic"
    sq = {r.name: r for r in wquant.quantize_(tiny_llama(tie=False), QuantizeConfig(SmoothQuantConfig(),
                                              activations={"*.o_proj": "none"}), calibration=_batches(96))}  # fmt: skip
    assert sq["model.layers.0.self_attn.o_proj"].activations is None  # SmoothQuant works with each module's spec
    assert sq["model.layers.0.self_attn.q_proj"].activations is None  # unmatched modules keep float inputs
