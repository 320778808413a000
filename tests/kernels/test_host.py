"""Quantized layers run their selected kernel; the runtime form is made once, never saved, and released on moves."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from wquant.cli.inference import parse_batches
from wquant.cli.main import app as wquant_app
from wquant.errors import ParameterError
from wquant.kernels import int4_cpu
from wquant.kernels.reference import reference_linear
from wquant.models import load_quantized, packed_weights, quantize_, save_quantized
from wquant.models.inference import forward_latency, prepare_inference, release_kernels, token_batch, weight_memory


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(128, 256), nn.GELU(), nn.Linear(256, 48, bias=False))


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items() if isinstance(v, torch.Tensor)}


@pytest.mark.parametrize(
    ("spec", "dtype", "kernel"),
    [("nf4", torch.float32, "table"), ("int4-g128", torch.bfloat16, "int4-cpu"),
     ("int8-channel", torch.bfloat16, "int8-cpu"), ("uniform@3/tensor:rms:bf16+coded", torch.float32, "coded")],
)  # fmt: skip
def test_layer_runs_the_selected_kernel_and_saves_the_canonical_fields(spec, dtype, kernel, tmp_path) -> None:
    if kernel == "int4-cpu" and int4_cpu.tile_block() is None:
        kernel = "table"
    if kernel == "int8-cpu" and not hasattr(torch.ops.aten, "_weight_int8pack_mm"):
        kernel = "table"
    model = _mlp()
    quantize_(model, spec)
    before = _state(model)
    memory_before = weight_memory(model)
    assert memory_before.kernels == {"—": 2}  # prepared lazily: nothing until the first forward
    x = torch.randn(3, 128).to(dtype)
    y = model(x)
    weights = [w for _, w in packed_weights(model)]
    assert {w.kernel for w in weights} == {kernel}
    first = model[0]
    expected = reference_linear(first.qweight.quantized, x, first.bias.to(dtype))
    assert torch.allclose(first(x).float(), expected.float(), rtol=0.02, atol=0.02 * expected.abs().max().item())
    after = _state(model)
    assert after.keys() == before.keys() and not any("kernel_" in k for k in after)  # runtime form not saved
    assert all(torch.equal(before[k], after[k]) for k in before)  # canonical bytes regenerated exactly
    memory = weight_memory(model)
    extra = memory.resident_bytes - memory.exact_bits / 8  # held beside the fields: one level table per weight
    assert extra <= 2 * (1 << 10) + 16 if kernel != "coded" else memory.ratio < 1.5
    save_quantized(model, tmp_path / "q")
    again = load_quantized(tmp_path / "q", model=_mlp(1))
    assert torch.equal(again(x), y)
    release_kernels(model)
    assert {w.kernel for w in weights} == {None} and all(torch.equal(before[k], v) for k, v in _state(model).items())


def test_moves_and_casts_release_the_runtime_state() -> None:
    model = _mlp()
    quantize_(model, "int4-g128")
    before, saved = _state(model), copy.deepcopy(model.state_dict())
    model(torch.randn(2, 128, dtype=torch.bfloat16))
    model.to(torch.float32)  # a cast leaves the exact bits alone and drops the runtime state
    assert all(w.kernel is None for _, w in packed_weights(model))
    assert all(torch.equal(before[k], v) for k, v in _state(model).items())
    y32 = model(torch.ones(1, 128))
    assert all(w.kernel == "table" for _, w in packed_weights(model))  # remade for the new input dtype
    model.load_state_dict(saved)
    assert torch.equal(model(torch.ones(1, 128)), y32)


def test_prepare_inference_and_latency() -> None:
    model = _mlp()
    quantize_(model, "nf4")
    prepare_inference(model)
    assert weight_memory(model).kernels == {"table": 2}

    class Wrap(nn.Module):
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.inner(input_ids.float().repeat(1, 8))

    times = forward_latency({"q": Wrap(model)}, token_batch(100, 2, 16), repeats=3)
    assert len(times["q"].times) == 3 and times["q"].median_s > 0


def test_bench_inference_cli(tmp_path) -> None:
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)  # fmt: skip
    base = tmp_path / "base"
    BertModel(config).save_pretrained(base)
    (base / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefgh")))
    model = BertModel.from_pretrained(base)
    quantize_(model, "nf4")
    save_quantized(model, tmp_path / "q")
    args = ["bench-inference", str(base), "--quantized", str(tmp_path / "q"), "--batch", "2x8", "--repeats", "2",
            "--threads", "1", "--json"]  # fmt: skip
    result = CliRunner().invoke(wquant_app, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["weights"]["kernels"] == {"table": 7} and data["weights"]["resident_over_exact"] >= 1.0
    assert data["latency"][0]["batch"] == 2 and data["latency"][0]["quantized_ms"] > 0
    with pytest.raises(ParameterError):
        parse_batches(["2by8"])
