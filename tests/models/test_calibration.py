"""The calibration walk through quantize_: tiny in-memory models (no files), bad inputs, MiniLM end to end."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from wquant.algorithms import GPTQConfig, NUPESConfig, RTNConfig, config_for
from wquant.data import calibration_windows, sentence_batches
from wquant.errors import ParameterError, TensorError
from wquant.formats import parse_spec
from wquant.models import QuantizeConfig, QuantizedLinear, model_bits, quantize_
from wquant.models.calibration import calibrate

DATA = Path("/work/shared/data")
CALIB, EVAL = DATA / "wikitext-2-tokens-valid.txt", DATA / "wikitext-2-raw-test.txt"


def _tiny_bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=80, max_position_embeddings=64)  # fmt: skip
    return BertModel(config).eval()


def _batches(n: int = 4, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(0, 120, (4, 16), generator=gen)
        mask = torch.ones_like(ids)
        mask[0, 10:] = 0  # some padding: it must not enter the statistics
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _hidden(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model(**b).last_hidden_state for b in batches])


def test_walk_visits_every_linear_in_order_and_shares_qkv_hessians() -> None:
    model = _tiny_bert()
    reports = quantize_(model, GPTQConfig("int4/block16:absmax:bf16"), calibration=_batches())
    names = [r.name for r in reports]
    linears = [n for n, m in _tiny_bert().named_modules() if isinstance(m, nn.Linear)]
    assert sorted(names) == sorted(linears)
    assert names[:3] == [f"encoder.layer.0.attention.self.{p}" for p in ("query", "key", "value")]
    assert all(isinstance(model.get_submodule(n), QuantizedLinear) for n in names[:-1] if "pooler" not in n)
    layer0 = [r for r in reports if r.name.startswith("encoder.layer.0.attention.self")]
    assert len({r.tokens for r in layer0}) == 1 and layer0[0].tokens == 4 * (4 * 16 - 6)  # padding dropped
    assert all(r.output_error is not None and 0 < r.output_error < 0.1 for r in reports if r.tokens)
    assert model_bits(model).bits_per_param < 32


@pytest.mark.parametrize(
    "config",
    [
        GPTQConfig("nf4/block16:absmax:fp32"),
        NUPESConfig(bits=4, steps=5),
        RTNConfig("int4/block16", importance="hessian"),
    ],
)
def test_data_driven_walks_beat_rtn_on_the_tiny_model(config: object) -> None:
    ref = _tiny_bert()
    batches, held_out = _batches(6, seed=1), _batches(3, seed=2)
    target = _hidden(ref, held_out)
    rtn_model, ours = copy.deepcopy(ref), copy.deepcopy(ref)
    quantize_(rtn_model, "int4/block16")
    quantize_(ours, config, calibration=batches)
    e_rtn = float((_hidden(rtn_model, held_out) - target).square().mean())
    e_ours = float((_hidden(ours, held_out) - target).square().mean())
    assert e_ours < e_rtn


def test_bad_inputs_fail_clearly() -> None:
    model = _tiny_bert()
    with pytest.raises(ParameterError, match="needs calibration"):
        quantize_(model, GPTQConfig())
    with pytest.raises(ParameterError, match="empty"):
        quantize_(model, GPTQConfig(), calibration=[])
    with pytest.raises(ParameterError, match="nothing to quantize"):
        quantize_(model, QuantizeConfig(GPTQConfig(), include=("nothing*",)), calibration=_batches())
    model.embeddings.word_embeddings.weight.data[5] = float("nan")
    bad = [{"input_ids": torch.full((2, 8), 5), "attention_mask": torch.ones(2, 8, dtype=torch.long)}]
    with pytest.raises(TensorError, match="NaN"):
        quantize_(model, GPTQConfig(), calibration=bad)
    with pytest.raises(ParameterError, match="unknown"):
        config_for("no-such-algorithm", parse_spec("nf4"))
    assert isinstance(config_for("rtn-search", parse_spec("nf4")), RTNConfig)
    nupes = config_for("nupes", parse_spec("int3/block128:absmax:fp16"))
    assert nupes == NUPESConfig(bits=3, scaling="block128:absmax:fp16")


def test_calibration_windows_refuse_short_text_and_bad_counts() -> None:
    from transformers import BertTokenizerFast  # noqa: F401  (a real tokenizer comes with MiniLM)

    from wquant.models import load_tokenizer, resolve_model_dir

    tok = load_tokenizer(resolve_model_dir("minilm"))
    text = "the quick brown fox jumps over the lazy dog " * 20
    wins = calibration_windows(tok, text, nsamples=5, seqlen=16, seed=3, batch_size=2)
    assert [w.shape for w in wins] == [(2, 16), (2, 16), (1, 16)]
    assert torch.equal(torch.cat(wins), torch.cat(calibration_windows(tok, text, nsamples=5, seqlen=16, seed=3)))
    with pytest.raises(ParameterError, match="shorter than one window"):
        calibration_windows(tok, "too short", nsamples=4, seqlen=64)
    with pytest.raises(ParameterError, match="nsamples"):
        calibration_windows(tok, text, nsamples=0, seqlen=8)


def _minilm_case(ncal: int, neval: int, include: tuple[str, ...], configs: dict[str, object]) -> dict[str, float]:
    if not (CALIB.exists() and EVAL.exists()):
        pytest.skip("shared WikiText-2 data not present")
    from wquant.data import read_paragraphs
    from wquant.evaluate import compare_encoders
    from wquant.models import load_pretrained

    loaded = load_pretrained("minilm")
    paragraphs = read_paragraphs(CALIB, limit=400)
    sentences = [s.strip() + " ." for p in paragraphs for s in p.split(" . ") if len(s) > 40][:ncal]
    batches = sentence_batches(loaded.tokenizer, sentences, batch_size=32, max_length=64)
    texts = read_paragraphs(EVAL, limit=neval)
    out = {}
    for name, config in configs.items():
        model = copy.deepcopy(loaded.model)
        quantize_(model, QuantizeConfig(config, include=include), calibration=batches)
        out[name] = compare_encoders(loaded.model, model, loaded.tokenizer, texts, max_length=128).mean_cosine
    return out


def test_minilm_first_block_gptq_and_nupes_beat_rtn() -> None:
    fmt = "int3/block64:absmax:bf16"
    cos = _minilm_case(160, 32, ("encoder.layer.0.*",), {  # tokens must outnumber the 1536 FFN inputs
        "rtn": RTNConfig(fmt, search=False), "gptq": GPTQConfig(fmt),
        "nupes": NUPESConfig(bits=3, scaling="block64:absmax:bf16", steps=5),
    })  # fmt: skip
    assert cos["gptq"] > cos["rtn"] and cos["nupes"] > cos["rtn"], cos


@pytest.mark.slow
@pytest.mark.parametrize("bits", [4, 3])
def test_minilm_whole_model_gptq_and_nupes_beat_rtn(bits: int) -> None:
    fmt = f"int{bits}/block64:absmax:bf16"
    cos = _minilm_case(96, 64, ("*",), {
        "rtn": RTNConfig(fmt, search=False), "gptq": GPTQConfig(fmt),
        "nupes": NUPESConfig(bits=bits, scaling="block64:absmax:bf16", steps=10),
    })  # fmt: skip
    assert cos["gptq"] > cos["rtn"] and cos["nupes"] > cos["rtn"], cos


class _SameMemoryTwice(nn.Module):
    """Two same-shaped layers whose inputs share an address but not their values.

    `in_place`: one buffer overwritten between the layers. Otherwise the first input is freed before the second
    is made, so the allocator may hand the second the same memory (as it did to o_proj and gate/up in a Llama block).
    """

    def __init__(self, in_place: bool) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.first, self.second = nn.Linear(24, 24), nn.Linear(24, 24)
        self.in_place = in_place

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x * 1.0
        y = self.first(h)
        if self.in_place:
            h.mul_(-2.0).add_(torch.linspace(-1, 1, h.shape[-1]))
        else:
            del h
            h = x * -2.0 + torch.linspace(-1, 1, x.shape[-1])
        return y + self.second(h)


@pytest.mark.parametrize("in_place", [True, False])
def test_layers_at_one_address_with_different_inputs_keep_their_own_hessians(in_place: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(64, 24, generator=gen) for _ in range(3)]
    config = GPTQConfig("int3/block8:absmax:bf16")
    shared = _SameMemoryTwice(in_place)
    reports = quantize_(shared, config, calibration=batches)
    alone = _SameMemoryTwice(in_place)  # oracle: each layer in a call of its own, so no grouping can happen
    for name in ("first", "second"):
        quantize_(alone, QuantizeConfig(config, include=(name,)), calibration=batches)
    assert [r.name for r in reports] == ["first", "second"]
    for name in ("first", "second"):
        got = shared.get_submodule(name).weight
        want = alone.get_submodule(name).weight
        assert torch.equal(got, want), name


def test_per_module_configs_give_each_layer_its_own_format() -> None:
    batches = [torch.randn(64, 24, generator=torch.Generator().manual_seed(s)) for s in range(2)]
    model = _SameMemoryTwice(in_place=False)
    configs = {"first": GPTQConfig("int3/block8:absmax:bf16"), "second": GPTQConfig("int5/block8:absmax:bf16")}
    reports = quantize_(model, configs, calibration=batches)
    assert {r.name: r.format for r in reports} == {n: c.spec.to_string() for n, c in configs.items()}
    assert {r.name: r.bits_per_param for r in reports} == {"first": 3 + 16 / 8, "second": 5 + 16 / 8}
    partial = _SameMemoryTwice(False)
    quantize_(partial, {"first": configs["first"]}, calibration=batches)  # modules no glob names stay as they are
    assert isinstance(partial.second, nn.Linear) and isinstance(partial.first, QuantizedLinear)
    with pytest.raises(ParameterError, match="not a format spec or an algorithm config"):
        quantize_(_SameMemoryTwice(False), {"first": object()}, calibration=batches)


def _recorded_hessians(model: nn.Module, batches: list, block_cache: bool) -> dict[str, torch.Tensor]:
    """Run the walk with GPTQ as each layer's quantizer, recording the Hessian every layer was given."""
    from wquant.algorithms import LayerStatistics, gptq
    from wquant.models.layers import PackedWeight
    from wquant.models.sites import set_submodule

    seen: dict[str, torch.Tensor] = {}
    paths = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]

    def on_layer(path: str, stats: LayerStatistics | None) -> None:
        assert stats is not None
        hessian = stats.hessian()
        seen[path] = hessian.clone()
        layer = model.get_submodule(path)
        q = gptq(layer.weight.detach(), hessian, GPTQConfig("int3/block16:absmax:bf16")).quantized
        set_submodule(model, path, QuantizedLinear(PackedWeight(q), layer.bias))

    calibrate(model, paths, batches, on_layer, block_cache=block_cache)
    return seen


@pytest.mark.parametrize("make", ["llama", "bert"])
def test_block_wise_walk_gives_the_hessians_of_the_whole_model_walk(make: str) -> None:
    """Oracle: the reference walk runs the whole (partly quantized) model up to each layer group; caching block
    inputs must give every layer the same Hessian (to 1e-6 relative), quantizing in between included."""
    from tests.conftest import tiny_bert, tiny_llama

    build = (lambda: tiny_llama(tie=False)) if make == "llama" else tiny_bert
    vocab = build().config.vocab_size
    batches = [b if make == "bert" else b["input_ids"] for b in _batches_for(vocab)]
    cached = _recorded_hessians(build(), batches, block_cache=True)
    reference = _recorded_hessians(build(), batches, block_cache=False)
    assert list(cached) == list(reference) and len(cached) >= 8
    for path in reference:
        scale = float(reference[path].abs().max())
        assert float((cached[path] - reference[path]).abs().max()) <= 1e-6 * scale, path


def _batches_for(vocab: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    out = []
    for _ in range(3):
        ids = torch.randint(0, vocab, (3, 20), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, 15:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out
