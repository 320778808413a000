"""The causal-LM testbed: character tokenizer, seeded reproducible training, standard HF folder."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from wquant.errors import ParameterError
from wquant.evaluate import TrainConfig, cached_testbed, char_tokenizer, perplexity, train_causal_lm
from wquant.models import load_pretrained

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20
TINY = TrainConfig(hidden_size=16, layers=1, heads=2, intermediate_size=32, context=16, batch_size=4, steps=3)


def test_char_tokenizer_round_trips_and_marks_unknown_characters() -> None:
    tokenizer = char_tokenizer(TEXT)
    ids = tokenizer("Speak,\n  all.", add_special_tokens=False)["input_ids"]
    assert len(ids) == len("Speak,\n  all.") and tokenizer.decode(ids) == "Speak,\n  all."
    assert tokenizer("é", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]
    assert len(tokenizer) == 3 + len(set(TEXT))


def test_training_is_reproducible_and_saves_a_standard_folder(tmp_path) -> None:
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    first = train_causal_lm(text, tmp_path / "a", TINY)
    second = train_causal_lm(text, tmp_path / "b", TINY)
    weights_a = load_file(str(first.path / "model.safetensors"))
    weights_b = load_file(str(second.path / "model.safetensors"))
    assert weights_a.keys() == weights_b.keys()
    assert all(weights_a[k].equal(weights_b[k]) for k in weights_a)
    record = json.loads((first.path / "wquant-training.json").read_text())
    assert record["heldout_from_char"] == int(len(TEXT) * 0.9) and record["config"]["steps"] == 3
    loaded = load_pretrained(first.path)
    assert loaded.task == "causal-lm"
    assert perplexity(loaded.model, loaded.tokenizer, TEXT[:200], window=16).perplexity < len(loaded.tokenizer) * 2


def test_cache_trains_once(tmp_path) -> None:
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    folder = cached_testbed(text, TINY, cache_dir=tmp_path / "cache")
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert cached_testbed(text, TINY, cache_dir=tmp_path / "cache") == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_bad_training_input(tmp_path) -> None:
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(ParameterError, match="training needs"):
        train_causal_lm(short, tmp_path / "out", TINY)
    with pytest.raises(ParameterError, match="multiple of heads"):
        TrainConfig(hidden_size=10, heads=3)


def test_existing_output_folder_is_replaced_only_with_force(tmp_path) -> None:
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    out = tmp_path / "lm"
    out.mkdir()
    (out / "stale.bin").write_bytes(b"an earlier run")
    with pytest.raises(ParameterError, match="exists and is not empty; pass --force"):
        train_causal_lm(text, out, TINY)
    assert [p.name for p in out.iterdir()] == ["stale.bin"]
    result = train_causal_lm(text, out, TINY, force=True)
    names = {p.name for p in result.path.iterdir()}
    assert "model.safetensors" in names and "stale.bin" not in names
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("lm.")] == []  # no staging folder left


def test_shape_options_are_checked_before_training() -> None:
    with pytest.raises(ParameterError, match="odd head size 7; rotary embeddings need an even one: use hidden_size 8"):
        TrainConfig(hidden_size=7, heads=1)
    with pytest.raises(ParameterError, match="odd head size 3.*use hidden_size 16"):
        TrainConfig(hidden_size=12, heads=4)
    assert TrainConfig(hidden_size=16, heads=4).hidden_size == 16
