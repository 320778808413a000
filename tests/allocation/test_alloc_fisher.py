"""Diagonal Fisher: per-token sums against closed forms, seeding, modes, storage and bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from alloc_helpers import TEXT
from torch import nn

from wquant.allocation import FisherConfig, FisherEstimate, accumulate_fisher, estimate_fisher, sampled_labels
from wquant.errors import ParameterError


def _softmax_regression(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 4, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.randn(4, 6, generator=g))
    x = torch.randn(4000, 6, generator=g)
    y = torch.randint(0, 4, (4000,), generator=g)
    return model, x, y


def test_empirical_mode_equals_the_closed_form_per_sample_fisher() -> None:
    """F_ij = mean_s (p_s − e_ys)_i² x_sj² exactly: the per-sample gradient of CE is (p − e_y) xᵀ."""
    model, x, y = _softmax_regression()
    batches = list(zip(x.split(500), y.split(500), strict=True))
    diag, count = accumulate_fisher(
        model, batches, lambda m, b: (F.cross_entropy(m(b[0]), b[1], reduction="sum"), b[0].shape[0])
    )
    p = torch.softmax(x @ model[0].weight.detach().T, dim=-1)
    residual = p - F.one_hot(y, 4).float()
    expected = (residual.square().T @ x.square()) / x.shape[0]
    assert count == 4000
    assert torch.allclose(diag["0.weight"], expected, rtol=1e-4, atol=1e-7)
    batch_squared = sum((r.T @ xb).square() for r, xb in zip(residual.split(500), x.split(500), strict=True)) / 4000
    assert not torch.allclose(diag["0.weight"], batch_squared, rtol=0.5)  # not the batch gradient squared


def test_true_mode_converges_to_the_model_fisher() -> None:
    """Labels sampled from the model: E_y[(p − e_y)_i²] = p_i(1 − p_i), so F_ij = mean_s p_si(1−p_si) x_sj²."""
    model, x, _ = _softmax_regression(1)
    gen = torch.Generator().manual_seed(3)

    def loss(m: nn.Module, xb: torch.Tensor) -> tuple[torch.Tensor, int]:
        logits = m(xb)
        return F.cross_entropy(logits, sampled_labels(logits.detach(), gen), reduction="sum"), xb.shape[0]

    diag, _ = accumulate_fisher(model, list(x.repeat(5, 1).split(1000)), loss)
    p = torch.softmax(x @ model[0].weight.detach().T, dim=-1)
    expected = ((p * (1 - p)).T @ x.square()) / x.shape[0]
    rel = (diag["0.weight"] - expected).abs() / expected
    assert float(rel.max()) < 0.08 and float(rel.mean()) < 0.03


class _Pooled(nn.Module):
    """Embedding → Linear → tanh → Linear, mean-pooled over tokens: one output per sample (an encoder)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(7, 5)
        self.a = nn.Linear(5, 6)
        self.b = nn.Linear(6, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(self.emb(ids)))).mean(dim=1)


def test_per_sample_mode_equals_brute_force_per_sample_gradients() -> None:
    """per_sample=True: Σ_s (∂ rᵀe_s/∂W)², with e_s pooled over the sample's tokens, by autograd one sample at a
    time; repeated token ids in a sample add up before squaring. Squaring per token instead is not it."""
    model = _Pooled()
    gen = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 7, (12, 9), generator=gen)  # 9 tokens from 7 ids: every sample repeats an id
    r = torch.randn(12, 3, generator=gen)
    batches = list(zip(ids.split(4), r.split(4), strict=True))

    def loss(m: nn.Module, b: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, int]:
        return (m(b[0]) * b[1]).sum(), b[0].shape[0]

    diag, count = accumulate_fisher(model, batches, loss, per_sample=True)
    weights = {"emb.weight": model.emb.weight, "a.weight": model.a.weight, "b.weight": model.b.weight}
    expected = {k: torch.zeros_like(w) for k, w in weights.items()}
    for s in range(12):
        grads = torch.autograd.grad((model(ids[s : s + 1]) * r[s]).sum(), list(weights.values()))
        for k, g in zip(weights, grads, strict=True):
            expected[k] += g.square() / 12
    assert count == 12
    for k in weights:
        assert torch.allclose(diag[k], expected[k], rtol=1e-5, atol=1e-9), k
    per_token, _ = accumulate_fisher(model, batches, loss)
    assert not torch.allclose(per_token["b.weight"], expected["b.weight"], rtol=0.2)


def test_causal_estimate_is_seeded_and_summarised(tiny_llama, char_tok) -> None:  # noqa: ANN001
    config = FisherConfig(window=32, max_windows=12, batch_size=4)
    a = estimate_fisher(tiny_llama, char_tok, TEXT, "causal-lm", config)
    b = estimate_fisher(tiny_llama, char_tok, TEXT, "causal-lm", config)
    c = estimate_fisher(tiny_llama, char_tok, TEXT, "causal-lm", FisherConfig(window=32, max_windows=12, seed=1))
    names = [t.name for t in a.tensors]
    assert names[0] == "model.embed_tokens.weight" and names[-1] == "lm_head.weight" and len(names) == 2 * 7 + 2
    assert a.mode == "true" and a.samples == 12 * 31
    for name in names:
        assert torch.equal(a.diagonal[name], b.diagonal[name])
        assert a.tensor(name).fisher_mean == pytest.approx(float(a.diagonal[name].double().mean()))
    assert any(not torch.equal(a.diagonal[n], c.diagonal[n]) for n in names)
    emp = estimate_fisher(tiny_llama, char_tok, TEXT, "causal-lm", FisherConfig(mode="empirical", window=32))
    assert emp.mode == "empirical" and all(t.fisher_mean > 0 for t in emp.tensors)


def test_save_and_load_round_trip(tiny_llama, char_tok, tmp_path: Path) -> None:  # noqa: ANN001
    est = estimate_fisher(tiny_llama, char_tok, TEXT, "causal-lm", FisherConfig(window=32, max_windows=10))
    est.save(tmp_path / "f")
    back = FisherEstimate.load(tmp_path / "f")
    assert back.tensors == est.tensors and back.mode == est.mode and back.samples == est.samples
    assert all(torch.equal(back.diagonal[k], v) for k, v in est.diagonal.items())
    assert not list((tmp_path / "f").glob("*.tmp"))


def test_bf16_model_is_estimated_in_fp32_and_left_alone(tiny_llama, char_tok) -> None:  # noqa: ANN001
    config = FisherConfig(window=32, max_windows=10)
    ref = estimate_fisher(tiny_llama, char_tok, TEXT, "causal-lm", config)
    half = tiny_llama.to(torch.bfloat16)
    est = estimate_fisher(half, char_tok, TEXT, "causal-lm", config)
    assert next(half.parameters()).dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in est.diagonal.values())
    for a, b in zip(ref.tensors, est.tensors, strict=True):
        assert b.fisher_mean == pytest.approx(a.fisher_mean, rel=0.5)  # bf16-rounded weights, same scale


def test_encoder_embedding_mode(tiny_bert, char_tok) -> None:  # noqa: ANN001
    est = estimate_fisher(tiny_bert, char_tok, TEXT, "encoder", FisherConfig(window=64, max_windows=8))
    assert est.mode == "embedding" and est.samples == 8 * 4  # texts × projections
    assert est.tensor("embeddings.word_embeddings.weight").fisher_mean > 0
    with pytest.raises(ParameterError, match="no labels"):
        estimate_fisher(tiny_bert, char_tok, TEXT, "encoder", FisherConfig(mode="true"))


def test_bad_input_is_refused(tiny_llama, char_tok) -> None:  # noqa: ANN001
    with pytest.raises(ParameterError, match="at least 256"):
        estimate_fisher(tiny_llama, char_tok, TEXT[:200], "causal-lm", FisherConfig(window=32))
    with pytest.raises(ParameterError, match="no Linear"):
        accumulate_fisher(nn.Sequential(nn.LayerNorm(4)), [torch.zeros(1, 4)], lambda m, b: (m(b).sum(), 1))
    with pytest.raises(ParameterError, match="empty"):
        estimate_fisher(tiny_llama, char_tok, "  ", "causal-lm")
    with pytest.raises(ParameterError, match="mode"):
        FisherConfig(mode="fancy")  # type: ignore[arg-type]
