"""Same inputs and seed → bit-identical stored codes, coded streams and checkpoints (each made twice here)."""

from __future__ import annotations

import hashlib

import pytest
import torch

from wquant.formats import quantize

SPECS = [
    "int4/block64:absmax:bf16+search",
    "lloydmax:3/tensor:rms:bf16",
    "uniform@3.3/tensor:rms:bf16+coded",
    "crd-t5:4/tensor:rms:bf16+outliers0.001+coded:g4096",
    "nvfp4",
]


def weights(seed: int) -> torch.Tensor:
    return torch.randn(96, 200, generator=torch.Generator().manual_seed(seed)) * torch.linspace(0.1, 2, 200)


@pytest.mark.parametrize("spec", SPECS)
def test_quantizing_twice_gives_the_same_bytes(spec):
    first = quantize(weights(1), spec)
    second = quantize(weights(1), spec)
    assert first.spec == second.spec  # a budget resolves to the same step
    assert first.to_bytes() == second.to_bytes()
    assert quantize(weights(2), spec).to_bytes() != first.to_bytes()  # and the bytes do depend on the data


def test_saving_a_quantized_model_twice_gives_identical_files(tmp_path):
    from transformers import BertConfig, BertModel

    from wquant.models import QuantizeConfig, quantize_, save_quantized

    digests = []
    for run in range(2):
        torch.manual_seed(0)
        net = BertModel(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                   intermediate_size=64, max_position_embeddings=32))  # fmt: skip
        quantize_(net, QuantizeConfig("uniform@4/tensor:rms:bf16+coded", targets=("linear",)))
        out = save_quantized(net, tmp_path / f"run{run}")
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())})
    assert digests[0] == digests[1]
