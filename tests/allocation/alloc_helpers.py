"""Shared data and model builders of the allocation tests (a uniquely named module: the root tests/ has its
own conftest, so `from conftest import ...` would be ambiguous)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TEXT = (
    "to be or not to be, that is the question: whether tis nobler in the mind to suffer the slings and "
    "arrows of outrageous fortune, or to take arms against a sea of troubles and by opposing end them.\n"
) * 12
DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


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
