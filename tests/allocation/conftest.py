"""Fixtures of the allocation tests: a char tokenizer, a tiny char-level Llama and a small BERT."""

from __future__ import annotations

import pytest
import torch
from alloc_helpers import TEXT, make_llama


@pytest.fixture(scope="session")
def char_tok():  # noqa: ANN201 - a transformers tokenizer
    from wquant.evaluate import char_tokenizer

    return char_tokenizer(TEXT)


@pytest.fixture()
def tiny_llama(char_tok):  # noqa: ANN001, ANN201
    return make_llama(char_tok)


@pytest.fixture()
def tiny_bert(char_tok):  # noqa: ANN001, ANN201
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(char_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=128, pad_token_id=char_tok.pad_token_id,
    )  # fmt: skip
    return BertModel(config, add_pooling_layer=False).eval()
