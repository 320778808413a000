"""quantize_: selection, replacement, forward fidelity, tied weights, every algorithm honouring the config,
packed torch state (state_dict, resident size, .to), row-gathering embeddings, and clear errors."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import wquant
from wquant.algorithms import GPTQConfig, HQQConfig, NUPESConfig, RTNConfig
from wquant.errors import ConfigWarning, ParameterError, SpecError, TensorError, WquantError
from wquant.formats import parse_spec, quantize
from wquant.models import (
    PackedWeight,
    QuantizeConfig,
    QuantizedEmbedding,
    QuantizedLinear,
    model_bits,
    packed_weights,
    quantize_,
    quantized_modules,
)
from wquant.models.sites import matches


def _specs(model: nn.Module) -> dict[str, str]:
    return {n: m.qweight.spec.to_string() for n, m in quantized_modules(model)}


def test_a_spec_quantizes_every_linear_and_no_embedding_by_default(bert) -> None:
    linears = {n for n, m in bert.named_modules() if isinstance(m, nn.Linear)}
    reports = quantize_(bert, "int4:unsigned/block64:minmax:bf16")
    assert set(_specs(bert)) == linears == {r.name for r in reports}
    assert isinstance(bert.embeddings.word_embeddings, nn.Embedding)
    assert all(isinstance(bert.get_submodule(n), QuantizedLinear) for n in linears)


def test_embeddings_when_targeted(bert) -> None:
    embeddings = {n for n, m in bert.named_modules() if isinstance(m, nn.Embedding)}
    quantize_(bert, QuantizeConfig("nf4", targets=("linear", "embedding")))
    assert embeddings <= set(_specs(bert))
    assert all(isinstance(bert.get_submodule(n), QuantizedEmbedding) for n in embeddings)


def test_forward_uses_exactly_the_dequantized_weights(bert) -> None:
    """Oracle: write each format's dequantized weight into an untouched copy by hand."""
    spec = "int4:unsigned/block64:minmax:bf16"
    manual = copy.deepcopy(bert)
    for module in manual.modules():
        if isinstance(module, nn.Linear | nn.Embedding):
            module.weight.data = quantize(module.weight.data, spec).dequantize()
    wquant.quantize_(bert, QuantizeConfig(spec, targets=("linear", "embedding")))
    ids = torch.randint(0, 120, (3, 11), generator=torch.Generator().manual_seed(1))
    assert torch.equal(bert(input_ids=ids).last_hidden_state, manual(input_ids=ids).last_hidden_state)


def test_include_exclude_and_overrides(bert) -> None:
    config = QuantizeConfig(
        "int4/block32:absmax:fp16",
        include=("encoder.*",),
        exclude=("*.output.dense",),
        overrides=(("*.query", "int8/channel:absmax:bf16"), ("*.key", "none"), ("*", "nf4")),
    )
    quantize_(bert, config)
    specs = _specs(bert)
    assert specs["encoder.layer.0.attention.self.query"] == "int8/channel:absmax:bf16"
    assert "encoder.layer.0.attention.self.key" not in specs  # override "none" keeps it
    assert "encoder.layer.1.output.dense" not in specs  # excluded
    assert "pooler.dense" not in specs  # not included
    assert specs["encoder.layer.1.attention.self.value"] == "nf4/block64:absmax:fp32"  # first match wins
    assert isinstance(bert.encoder.layer[0].attention.self.key, nn.Linear)


def test_glob_matches_weight_name_too(bert) -> None:
    quantize_(bert, QuantizeConfig(include=("*.query.weight",)))
    assert set(_specs(bert)) == {f"encoder.layer.{i}.attention.self.query" for i in (0, 1)}


def _batches(vocab: int, n: int = 3, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, vocab, (4, 24), generator=gen)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return out


ALGORITHMS = {
    "rtn": lambda spec: spec,
    "rtn-search": lambda spec: RTNConfig(spec, search=True),
    "rtn-hessian": lambda spec: RTNConfig(spec, search=True, importance="hessian"),
    "gptq": lambda spec: GPTQConfig(spec),
    "hqq": lambda spec: HQQConfig(spec),
    "nupes": lambda spec: NUPESConfig.from_format(spec, steps=2, coarse=0.4, fine=0.2),
}
BASE = {"hqq": "int4:unsigned/block16:minmax:bf16", "nupes": "int4/block16:absmax:bf16"}
OVERRIDE = {"hqq": "int3:unsigned/block8:zeropoint:fp16", "nupes": "int3/channel:absmax:fp16"}


@pytest.mark.parametrize("model_name", ["llama", "bert"])
@pytest.mark.parametrize("algorithm", list(ALGORITHMS))
def test_every_algorithm_honours_targets_overrides_and_excludes(model_name: str, algorithm: str, request) -> None:
    """The stored spec of every module is what the config asked for: the override's format on its modules, the
    base format elsewhere, nothing on excluded modules, embeddings only when targeted."""
    model = request.getfixturevalue(model_name)
    make = ALGORITHMS[algorithm]
    base = BASE.get(algorithm, "int4/block16:absmax:bf16")
    override = OVERRIDE.get(algorithm, "int8/channel:absmax:bf16")
    excluded, overridden, kept = ("*.0.*", "*[vV]alue*", "*[kK]ey*") if model_name == "bert" else (
        "*.layers.0.*", "*v_proj", "*k_proj")  # fmt: skip
    config = QuantizeConfig(
        make(base), targets=("linear", "embedding"), exclude=(excluded,),
        overrides=((overridden, override), (kept, "none")),
    )  # fmt: skip
    reports = quantize_(model, config, calibration=_batches(model.config.vocab_size))
    expected = {
        path: override if matches(path, overridden) else base
        for path, module in type(model)(model.config).named_modules()
        if isinstance(module, nn.Linear | nn.Embedding) and not (matches(path, excluded) or matches(path, kept))
    }
    got = _specs(model)
    assert set(got) == set(expected) and {r.name for r in reports} <= set(got)
    for path, spec in expected.items():
        want = parse_spec(spec)
        if algorithm == "nupes":  # NUPES picks the exponent; bits and scaling are the ones asked for
            assert got[path].endswith("/" + want.scaling.token) and f":{want.element.bits}/" in got[path], path
        else:
            assert got[path] == want.to_string(), (path, got[path], spec)


def test_gptq_override_keeps_the_algorithm_at_the_override_format(llama) -> None:
    batches = _batches(96)
    reports = quantize_(
        llama, QuantizeConfig(GPTQConfig("int4/block16:absmax:bf16"), overrides={"*down_proj": "int3/block16"}),
        calibration=batches,
    )  # fmt: skip
    down = [r for r in reports if r.name.endswith("down_proj")]
    assert down and all(r.format == "int3/block16:absmax:bf16" and r.output_error is not None for r in down)


def test_tied_weight_is_left_unless_embeddings_are_targeted(llama) -> None:
    assert llama.lm_head.weight is llama.model.embed_tokens.weight
    messages: list[str] = []
    quantize_(llama, QuantizeConfig(targets=("linear",)), log=messages.append)
    assert isinstance(llama.lm_head, nn.Linear) and any("tied to an embedding" in m for m in messages)


def test_tied_weight_is_quantized_once_and_stays_tied(llama) -> None:
    quantize_(llama, QuantizeConfig(targets=("linear", "embedding")))
    assert isinstance(llama.model.embed_tokens, QuantizedEmbedding)
    assert llama.lm_head.qweight is llama.model.embed_tokens.qweight
    names = [t.name for t in model_bits(llama).tensors if t.quantized]
    assert len(names) == len(set(names)) and sum("embed_tokens" in n or "lm_head" in n for n in names) == 1


def test_gpt2_conv1d_is_quantized_along_its_input_dimension(gpt2) -> None:
    attn = gpt2.transformer.h[0].attn.c_attn
    weight = attn.weight.detach().clone()  # (in, out)
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    quantize_(gpt2, "int8/block16:absmax:fp32")
    new = gpt2.transformer.h[0].attn.c_attn
    assert isinstance(new, QuantizedLinear) and new.layout == "transposed"
    expected = quantize(weight.t().contiguous(), "int8/block16:absmax:fp32").dequantize().t()
    assert torch.equal(new.weight, expected)
    assert torch.isfinite(gpt2(input_ids=ids).logits).all()


SPECS = [
    "nf4", "int4:unsigned/block64:minmax:bf16", "mxfp4", "nvfp4", "int3/block48:absmax:bf16+outliers0.01",
    "lloydmax:3/tensor:rms:bf16", "uniform0.4/tensor:rms:bf16+coded", "int8-channel", "gptq-int4-g128",
]  # fmt: skip


@pytest.mark.parametrize("spec", SPECS)
def test_packed_state_is_bits_over_eight_in_memory(spec: str) -> None:
    """Resident buffers of a quantized layer within 2 % of its exact bits/8 (4-bit codes: half a byte each)."""
    model = nn.Sequential(nn.Linear(384, 96))
    quantize_(model, spec)
    packed = model[0].qweight
    assert all(b.dtype == torch.uint8 for b in packed.buffers())
    bits = packed.bits()
    assert abs(packed.resident_bytes() - bits / 8) <= 0.02 * bits / 8  # a table's entry count is implied in memory
    assert not list(model[0].parameters())[:-1] and {n for n, _ in model.named_parameters()} == {"0.bias"}


@pytest.mark.parametrize("spec", ["nf4", "uniform0.3/tensor:rms:bf16+coded", "lloydmax:3/tensor:rms:bf16", "nvfp4"])
def test_state_dict_into_a_new_model_gives_bit_identical_outputs(spec: str) -> None:
    from tests.conftest import tiny_llama

    source = tiny_llama(tie=False)
    quantize_(source, QuantizeConfig(spec, targets=("linear", "embedding")))
    state = source.state_dict()
    assert any(k.endswith("qweight._extra_state") for k in state)
    torch.manual_seed(99)  # a different model of the same architecture, quantized the same way
    other = type(source)(source.config).eval()
    quantize_(other, QuantizeConfig(spec, targets=("linear", "embedding")))
    other.load_state_dict(state)
    ids = torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(2))
    assert torch.equal(other(input_ids=ids).logits, source(input_ids=ids).logits)


def test_load_state_dict_refuses_damaged_fields() -> None:
    model = nn.Sequential(nn.Linear(64, 8))
    quantize_(model, "int3/block32:absmax:bf16")
    state = model.state_dict()
    state["0.qweight.codes"] = state["0.qweight.codes"][:-1]
    with pytest.raises(RuntimeError, match="codes"):
        copy.deepcopy(model).load_state_dict(state)


def test_to_moves_the_packed_buffers_and_a_dtype_cast_leaves_them_exact() -> None:
    model = nn.Sequential(nn.Linear(64, 8))
    quantize_(model, "lloydmax:3/tensor:rms:bf16")  # has a float table: stored as bytes, so .half() cannot round it
    before = {k: v.clone() for k, v in model.state_dict().items() if "qweight" in k and torch.is_tensor(v)}
    weight = model[0].weight
    model.half()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert torch.equal(model[0].weight, weight)
    model.to("meta")
    assert all(b.is_meta for b in model[0].qweight.buffers())


def test_quantized_embedding_decodes_only_the_rows_it_looks_up() -> None:
    """Oracle: F.embedding on the fully decoded table."""
    for spec in ("nf4/block64:absmax:fp32", "int3/channel:absmax:bf16", "int5/block50:absmax:bf16+outliers0.01",
                 "uniform0.5/tensor:rms:bf16+coded"):  # fmt: skip
        model = nn.Sequential(nn.Embedding(300, 100))
        quantize_(model, QuantizeConfig(spec, targets=("embedding",)))
        table = model[0].qweight.dequantize()
        ids = torch.tensor([[5, 299, 5, 0], [17, 17, 250, 1]])
        assert torch.equal(model(ids), nn.functional.embedding(ids, table)), spec
        decoded = model[0].qweight.quantized.dequantize_rows(torch.tensor([7, 3]))
        assert decoded.shape == (2, 100) and torch.equal(decoded, table[[7, 3]])


def test_ragged_blocks_are_fine() -> None:
    model = nn.Sequential(nn.Linear(37, 5))
    quantize_(model, "int4:unsigned/block64:minmax:bf16")
    assert model[0].qweight.quantized.shape == (5, 37)


def test_errors_name_the_tensor() -> None:
    model = nn.Sequential(nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(TensorError, match=r"0\.weight"):
        quantize_(model, QuantizeConfig())
    tiny = nn.Sequential(nn.Linear(4, 2))  # 8 weights cannot fit a 256-level fitted table
    with pytest.raises(WquantError, match=r"0\.weight.*shape \(2, 4\)"):
        quantize_(tiny, "lloydmax:8/tensor:rms")
    with pytest.raises(SpecError, match="override"):
        QuantizeConfig(overrides=(("*", "int4/bogus"),))
    with pytest.raises(ParameterError, match="targets"):
        QuantizeConfig(targets=("conv",))
    with pytest.raises(ParameterError, match="wrap"):
        quantize_(nn.Linear(4, 4), "nf4")
    with pytest.raises(ParameterError, match="nothing to quantize"):
        quantize_(nn.Sequential(nn.Linear(4, 4)), QuantizeConfig(exclude=("*",)))
    with pytest.raises(ParameterError, match="needs calibration"):
        quantize_(nn.Sequential(nn.Linear(4, 4)), GPTQConfig())
    with pytest.raises(ParameterError, match="not a format spec or an algorithm config"):
        quantize_(nn.Sequential(nn.Linear(4, 4)), {"0": 4})


def test_tied_to_unreplaceable_module_is_refused() -> None:
    class Holder(nn.Module):
        def __init__(self, shared: nn.Parameter) -> None:
            super().__init__()
            self.table = shared

    model = nn.Sequential(nn.Linear(8, 4))
    model.append(Holder(model[0].weight))
    with pytest.raises(TensorError, match="tied"):
        quantize_(model, QuantizeConfig())


def test_packed_weights_are_named_like_the_weights_they_replace(llama) -> None:
    quantize_(llama, QuantizeConfig(targets=("linear", "embedding")))
    names = [n for n, _ in packed_weights(llama)]
    assert "model.embed_tokens.weight" in names and "model.layers.0.self_attn.q_proj.weight" in names
    assert all(isinstance(m, PackedWeight) for _, m in packed_weights(llama))


def test_globs_that_match_nothing_are_warned_about(bert) -> None:
    fresh = copy.deepcopy(bert)
    with pytest.warns(ConfigWarning, match="override glob '\\*\\.qurey' matches none"):
        quantize_(bert, QuantizeConfig(overrides={"*.qurey": "int8/channel:absmax:bf16"}))
    with pytest.warns(ConfigWarning, match="exclude glob 'lm_head'"):
        quantize_(fresh, QuantizeConfig(exclude=("lm_head",)))
