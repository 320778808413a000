"""quantize_model: selection, replacement, forward fidelity, tied weights and clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from wquant.errors import ParameterError, SpecError, TensorError, WquantError
from wquant.formats import quantize
from wquant.models import (
    QuantizeConfig,
    QuantizedEmbedding,
    QuantizedLinear,
    model_bits,
    quantize_model,
    quantized_modules,
)


def test_default_replaces_every_linear_and_embedding(bert) -> None:
    linears = [n for n, m in bert.named_modules() if isinstance(m, nn.Linear)]
    embeddings = [n for n, m in bert.named_modules() if isinstance(m, nn.Embedding)]
    quantize_model(bert, QuantizeConfig())
    replaced = dict(quantized_modules(bert))
    assert set(replaced) == set(linears) | set(embeddings)
    assert all(isinstance(replaced[n], QuantizedLinear) for n in linears)
    assert all(isinstance(replaced[n], QuantizedEmbedding) for n in embeddings)
    assert not any(isinstance(m, nn.Linear | nn.Embedding) for m in bert.modules())


def test_forward_uses_exactly_the_dequantized_weights(bert) -> None:
    """Oracle: write each format's dequantized weight into an untouched copy by hand."""
    import copy

    spec = "int4:unsigned/block64:minmax:bf16"
    manual = copy.deepcopy(bert)
    for module in manual.modules():
        if isinstance(module, nn.Linear):
            module.weight.data = quantize(module.weight.data, spec).dequantize()
    quantize_model(bert, QuantizeConfig(spec, targets=("linear",)))
    ids = torch.randint(0, 120, (3, 11), generator=torch.Generator().manual_seed(1))
    assert torch.equal(bert(input_ids=ids).last_hidden_state, manual(input_ids=ids).last_hidden_state)


def test_include_exclude_and_overrides(bert) -> None:
    config = QuantizeConfig(
        "int4/block32:absmax:fp16",
        targets=("linear",),
        include=("encoder.*",),
        exclude=("*.output.dense",),
        overrides=(("*.query", "int8/channel:absmax:bf16"), ("*.key", "none"), ("*", "nf4")),
    )
    quantize_model(bert, config)
    specs = {n: m.stored.quantized.spec.to_string() for n, m in quantized_modules(bert)}
    assert specs["encoder.layer.0.attention.self.query"] == "int8/channel:absmax:bf16"
    assert "encoder.layer.0.attention.self.key" not in specs  # override "none" keeps it
    assert "encoder.layer.1.output.dense" not in specs  # excluded
    assert "pooler.dense" not in specs  # not included
    assert specs["encoder.layer.1.attention.self.value"] == "nf4/block64:absmax:fp32"  # first match wins
    assert isinstance(bert.encoder.layer[0].attention.self.key, nn.Linear)


def test_glob_matches_weight_name_too(bert) -> None:
    quantize_model(bert, QuantizeConfig(include=("*.query.weight",)))
    assert {n for n, _ in quantized_modules(bert)} == {
        f"encoder.layer.{i}.attention.self.query" for i in (0, 1)
    }


def test_tied_weight_is_quantized_once_and_stays_tied(llama) -> None:
    assert llama.lm_head.weight is llama.model.embed_tokens.weight
    quantize_model(
        llama, QuantizeConfig(targets=("linear",))
    )  # lm_head selected; the tie brings the embedding
    assert isinstance(llama.model.embed_tokens, QuantizedEmbedding)
    assert llama.lm_head.stored is llama.model.embed_tokens.stored
    names = [t.name for t in model_bits(llama).tensors if t.quantized]
    assert len(names) == len(set(names)) and sum("embed_tokens" in n or "lm_head" in n for n in names) == 1


def test_gpt2_conv1d_is_quantized_along_its_input_dimension(gpt2) -> None:
    attn = gpt2.transformer.h[0].attn.c_attn
    weight = attn.weight.detach().clone()  # (in, out)
    ids = torch.randint(0, 96, (2, 9), generator=torch.Generator().manual_seed(0))
    quantize_model(gpt2, QuantizeConfig("int8/block16:absmax:fp32"))
    new = gpt2.transformer.h[0].attn.c_attn
    assert isinstance(new, QuantizedLinear) and new.layout == "transposed"
    expected = quantize(weight.t().contiguous(), "int8/block16:absmax:fp32").dequantize().t()
    assert torch.equal(new.weight, expected)
    assert torch.isfinite(gpt2(input_ids=ids).logits).all()


def test_cache_keeps_one_dequantized_copy() -> None:
    model = nn.Sequential(nn.Linear(64, 8))
    quantize_model(model, QuantizeConfig(cache_dequantized=True))
    x = torch.randn(2, 64)
    first = model(x)
    assert model[0].stored._cached is not None
    assert torch.equal(model(x), first)


def test_ragged_blocks_are_fine() -> None:
    model = nn.Sequential(nn.Linear(37, 5))
    quantize_model(model, QuantizeConfig("int4:unsigned/block64:minmax:bf16"))
    assert model[0].stored.quantized.shape == (5, 37)


def test_errors_name_the_tensor() -> None:
    model = nn.Sequential(nn.Linear(8, 4))
    with torch.no_grad():
        model[0].weight[0, 0] = float("nan")
    with pytest.raises(TensorError, match=r"0\.weight"):
        quantize_model(model, QuantizeConfig())
    tiny = nn.Sequential(nn.Linear(4, 2))  # 8 weights cannot fit a 256-level fitted table
    with pytest.raises(WquantError, match=r"0\.weight.*shape \(2, 4\)"):
        quantize_model(tiny, QuantizeConfig("lloydmax:8/tensor:rms"))
    with pytest.raises(SpecError, match="override"):
        QuantizeConfig(overrides=(("*", "int4/bogus"),))
    with pytest.raises(ParameterError, match="targets"):
        QuantizeConfig(targets=("conv",))
    with pytest.raises(ParameterError, match="wrap"):
        quantize_model(nn.Linear(4, 4))


def test_tied_to_unreplaceable_module_is_refused() -> None:
    class Holder(nn.Module):
        def __init__(self, shared: nn.Parameter) -> None:
            super().__init__()
            self.table = shared

    model = nn.Sequential(nn.Linear(8, 4))
    model.append(Holder(model[0].weight))
    with pytest.raises(TensorError, match="tied"):
        quantize_model(model, QuantizeConfig())
