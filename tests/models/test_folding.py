"""Scale folding: found by module structure on tiny Llama, BERT and GPT-2, exact in float32 (outputs unchanged to
1e-5 relative with random scales spanning e^±3), and refused where it would not be exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import tiny_bert, tiny_gpt2, tiny_llama
from wquant.errors import TensorError
from wquant.models.folding import Fold, apply_fold, find_fold, model_folds


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)  # tiny models: a second thread only adds OpenMP waits on the shared cores


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (3, 12), generator=torch.Generator().manual_seed(0))


def _fold_random_scales(model: nn.Module, folds: list[Fold], seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for fold in folds:
        consumer = model.get_submodule(fold.consumers[0])
        width = consumer.weight.shape[1] if isinstance(consumer, nn.Linear) else consumer.weight.shape[0]
        apply_fold(model, fold, torch.exp(torch.randn(width, generator=gen)))


def _outputs(model: nn.Module, ids: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        out = model(ids)
    return [t for t in out.values() if isinstance(t, torch.Tensor)]


def _assert_unchanged(before: list[torch.Tensor], after: list[torch.Tensor]) -> None:
    for a, b in zip(after, before, strict=True):
        assert float((a - b).norm() / b.norm()) < 1e-5


def test_llama_block_folds_are_found_by_structure_and_exact() -> None:
    model = tiny_llama(tie=False)
    ids = _ids(model.config.vocab_size)
    folds = model_folds(model, ids)
    found = {f.consumers: (f.producer, f.kind) for f in folds}
    expected = {("lm_head",): ("model.norm", "norm")}
    for i in range(model.config.num_hidden_layers):
        p = f"model.layers.{i}."
        expected |= {
            (p + "self_attn.q_proj", p + "self_attn.k_proj", p + "self_attn.v_proj"): (p + "input_layernorm", "norm"),
            (p + "self_attn.o_proj",): (p + "self_attn.v_proj", "linear"),
            (p + "mlp.gate_proj", p + "mlp.up_proj"): (p + "post_attention_layernorm", "norm"),
            (p + "mlp.down_proj",): (p + "mlp.up_proj", "linear"),
        }
    assert found == expected
    before = _outputs(model, ids)
    _fold_random_scales(model, folds)
    _assert_unchanged(before, _outputs(model, ids))


def test_bert_post_norms_feed_the_residual_so_only_o_after_v_folds() -> None:
    model = tiny_bert()
    ids = _ids(model.config.vocab_size)
    folds = model_folds(model, ids)
    assert {f.consumers: f.producer for f in folds} == {
        (f"encoder.layer.{i}.attention.output.dense",): f"encoder.layer.{i}.attention.self.value" for i in range(2)
    }
    before = _outputs(model, ids)  # last hidden state and pooler output
    _fold_random_scales(model, folds)
    _assert_unchanged(before, _outputs(model, ids))


def test_gpt2_conv1d_layout_folds_into_its_pre_norms() -> None:
    model = tiny_gpt2()
    ids = _ids(model.config.vocab_size)
    folds = model_folds(model, ids)
    found = {f.consumers: f.producer for f in folds}
    for i in range(2):
        assert found[(f"transformer.h.{i}.attn.c_attn",)] == f"transformer.h.{i}.ln_1"
        assert found[(f"transformer.h.{i}.mlp.c_fc",)] == f"transformer.h.{i}.ln_2"
    before = _outputs(model, ids)
    _fold_random_scales(model, folds)
    _assert_unchanged(before, _outputs(model, ids))


class _OffsetNorm(nn.Module):
    """Gemma-style RMSNorm, (1 + w)·x/rms(x): dividing w by s does not divide the output by s."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width, generator=torch.Generator().manual_seed(2)) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (1 + self.weight) * x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6)


class _Block(nn.Module):
    def __init__(self, act: str) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.norm, self.fc, self.fc2 = _OffsetNorm(16), nn.Linear(16, 24), nn.Linear(24, 16)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(self.norm(x))
        return self.fc2(F.gelu(h) if self.act == "gelu" else F.relu(h))


def test_probe_refuses_offset_norms_nonlinearities_and_tied_heads() -> None:
    x = torch.randn(4, 8, 16, generator=torch.Generator().manual_seed(4))
    gelu, relu = _Block("gelu"), _Block("relu")
    assert find_fold(gelu, ["fc"], lambda: gelu(x)) is None  # (1 + w/s) ≠ (1 + w)/s
    assert find_fold(gelu, ["fc2"], lambda: gelu(x)) is None  # GELU(h/s) ≠ GELU(h)/s
    fold = find_fold(relu, ["fc2"], lambda: relu(x))  # ReLU commutes with positive scales
    assert fold == Fold("fc", "linear", ("fc2",))
    tied = tiny_llama(tie=True)  # lm_head shares the embedding: scaling its columns would scale the embedding
    assert all("lm_head" not in f.consumers for f in model_folds(tied, _ids(tied.config.vocab_size)))
    with pytest.raises(TensorError, match="positive"):
        apply_fold(relu, fold, -torch.ones(24))
