"""Tiny in-memory models shared by the allocation tests (a char-level Llama and a small BERT)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXT = (
    "to be or not to be, that is the question: whether tis nobler in the mind to suffer the slings and "
    "arrows of outrageous fortune, or to take arms against a sea of troubles and by opposing end them.\n"
) * 12
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def char_tok():  # noqa: ANN201 - a transformers tokenizer
    from wquant.evaluate import char_tokenizer

    return char_tokenizer(TEXT)


def make_llama(char_tok):  # noqa: ANN001, ANN201
    """A fresh 2-layer char Llama; seeded, so every call gives the same weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(char_tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128, tie_word_embeddings=False,
        bos_token_id=None, eos_token_id=char_tok.eos_token_id, pad_token_id=char_tok.pad_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


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
