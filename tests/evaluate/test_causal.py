"""Perplexity and KL on a tiny causal LM, against direct computations with transformers' own loss."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from wquant.data import token_windows
from wquant.errors import ParameterError
from wquant.evaluate import char_tokenizer, compare_causal, kl_terms, perplexity
from wquant.models import QuantizeConfig, model_bits, quantize_

TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 6


@pytest.fixture
def lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = char_tokenizer(TEXT)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval(), tokenizer


def test_windows_cover_the_text_once(lm) -> None:
    _, tokenizer = lm
    windows = token_windows(tokenizer, TEXT, 50)
    assert [w.numel() for w in windows] == [50] * (len(TEXT) // 50) + [len(TEXT) % 50]
    assert torch.equal(torch.cat(windows), torch.as_tensor(tokenizer(TEXT, add_special_tokens=False)["input_ids"]))


def test_perplexity_equals_transformers_loss_on_the_same_windows(lm) -> None:
    model, tokenizer = lm
    ids = torch.as_tensor(tokenizer(TEXT, add_special_tokens=False)["input_ids"])
    window = 48
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, ids.numel(), window):
            chunk = ids[start : start + window].unsqueeze(0)
            if chunk.shape[1] < 2:
                continue
            loss = model(input_ids=chunk, labels=chunk).loss  # mean over chunk length - 1 predictions
            total += float(loss) * (chunk.shape[1] - 1)
            count += chunk.shape[1] - 1
    result = perplexity(model, tokenizer, TEXT, window=window, batch_size=3)
    assert result.predicted_tokens == count
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-5)
    assert result.bits_per_param == 32.0


def test_kl_against_torch_kl_div() -> None:
    gen = torch.Generator().manual_seed(0)
    ref, quant = torch.randn(7, 30, generator=gen), torch.randn(7, 30, generator=gen)
    full, top, agree = kl_terms(ref, quant, top_k=5)
    oracle = F.kl_div(F.log_softmax(quant, -1), F.log_softmax(ref, -1), log_target=True, reduction="none").sum(-1)
    assert torch.allclose(full.float(), oracle, atol=1e-6)
    assert bool((top <= full + 1e-12).all()) and bool((top >= 0).all())
    full_k, top_k, _ = kl_terms(ref, quant, top_k=30)  # k = vocab: the rest bucket is empty, top-k KL = KL
    assert torch.allclose(top_k, full_k, atol=1e-9)
    assert torch.equal(agree, (ref.argmax(-1) == quant.argmax(-1)).double())


def test_compare_causal_self_is_zero_and_quantized_is_worse(lm) -> None:
    model, tokenizer = lm
    same = compare_causal(model, copy.deepcopy(model), tokenizer, TEXT, window=40, top_k=4)
    assert same.kl == 0 and same.top_k_kl == 0 and same.top1_agreement == 1
    assert same.reference.perplexity == same.quantized.perplexity
    quantized = copy.deepcopy(model)
    quantize_(quantized, QuantizeConfig("int2/block16:absmax:bf16"))
    result = compare_causal(model, quantized, tokenizer, TEXT, window=40, top_k=4)
    assert result.kl > 1e-3 and 0 < result.top_k_kl <= result.kl
    assert result.bits_per_param == model_bits(quantized).bits_per_param < 32
    direct = perplexity(quantized, tokenizer, TEXT, window=40)
    assert result.quantized.perplexity == pytest.approx(direct.perplexity, rel=1e-6)


def test_bad_windows_are_refused(lm) -> None:
    model, tokenizer = lm
    with pytest.raises(ParameterError, match="64 positions"):
        perplexity(model, tokenizer, TEXT, window=65)
    with pytest.raises(ParameterError, match="window"):
        perplexity(model, tokenizer, TEXT, window=1)
    with pytest.raises(ParameterError, match="at least 2"):
        perplexity(model, tokenizer, "T", window=8)
