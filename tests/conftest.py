"""Suite-wide settings and fixtures: hypothesis profiles ('default' for make test, 'fuzz' for make fuzz),
offline Hugging Face, two torch threads, and tiny in-memory models (no network, no files)."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")

settings.register_profile("default", deadline=None)
settings.register_profile(
    "fuzz", max_examples=20_000, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True)
def _two_threads() -> None:
    torch.set_num_threads(2)


def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=80,
        max_position_embeddings=64,
    )  # fmt: skip
    return BertModel(config).eval()


def tiny_llama(tie: bool = True):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=72, max_position_embeddings=128, tie_word_embeddings=tie,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=96, n_embd=32, n_layer=2, n_head=2, n_positions=64, bos_token_id=0, eos_token_id=0)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture
def bert():
    return tiny_bert()


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def gpt2():
    return tiny_gpt2()


#: A few lines of text for tiny character-level models and their CLI tests.
TINY_TEXT = "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 12


@pytest.fixture
def lm_dir(tmp_path):
    """A saved 1-layer character-level Llama folder (as `wquant quantize`/`qat` read it)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from wquant.evaluate import char_tokenizer

    tokenizer = char_tokenizer(TINY_TEXT)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64, architectures=["LlamaForCausalLM"],
    )  # fmt: skip
    folder = tmp_path / "lm"
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TINY_TEXT)
    return path
