"""save_quantized / load_quantized: bit-identical round trip, and damaged checkpoints refused."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from torch import nn

import wquant
from wquant.errors import CorruptDataError, ParameterError
from wquant.models import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    TENSORS_FILE,
    QuantizeConfig,
    load_quantized,
    model_bits,
    quantize_,
    read_manifest,
    save_quantized,
)

MIXED = QuantizeConfig(
    "int4:unsigned/block64:minmax:bf16",
    targets=("linear", "embedding"),
    overrides=(("*.query", "nf4"), ("*word_embeddings", "int8/channel:absmax:fp16"), ("*.key", "mxfp4")),
)


def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, 13), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("which", ["bert", "llama", "gpt2"])
def test_round_trip_is_bit_identical(which, request, tmp_path) -> None:
    model = request.getfixturevalue(which)
    quantize_(model, MIXED)
    ids = _ids(model.config.vocab_size)
    with torch.inference_mode():
        before = model(input_ids=ids)[0]
    save_quantized(model, tmp_path)
    loaded = load_quantized(tmp_path)
    with torch.inference_mode():
        after = loaded(input_ids=ids)[0]
    assert type(loaded) is type(model)
    assert (after - before).abs().max().item() == 0.0
    assert model_bits(loaded) == model_bits(model)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MANIFEST_FILE, TENSORS_FILE])


def test_tie_survives_reload(llama, tmp_path) -> None:
    quantize_(llama, QuantizeConfig(targets=("linear", "embedding")))
    save_quantized(llama, tmp_path)
    loaded = load_quantized(tmp_path)
    assert loaded.lm_head.qweight is loaded.model.embed_tokens.qweight


def test_unquantized_ties_and_dtypes_survive(tmp_path) -> None:
    model = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10, bias=False), nn.LayerNorm(8).to(torch.bfloat16))
    model[1].weight = model[0].weight
    save_quantized(model, tmp_path)
    fresh = nn.Sequential(nn.Embedding(10, 8), nn.Linear(8, 10, bias=False), nn.LayerNorm(8))
    loaded = load_quantized(tmp_path, model=fresh)
    assert loaded[1].weight is loaded[0].weight
    assert torch.equal(loaded[0].weight, model[0].weight)
    assert loaded[2].weight.dtype == torch.bfloat16


def test_manifest_records_formats_versions_and_hashes(bert, tmp_path) -> None:
    quantize_(bert, MIXED)
    save_quantized(bert, tmp_path)
    body = read_manifest(tmp_path)
    assert body["format_version"] == FORMAT_VERSION == 2 and body["wquant_version"] == wquant.__version__
    entry = body["packed"]["encoder.layer.0.attention.self.query.qweight"]
    assert (
        entry["spec"] == "nf4/block64:absmax:fp32"
        and entry["shape"] == [32, 32]
        and entry["dtype"] == "float32"
        and entry["name"] == "encoder.layer.0.attention.self.query.weight"
    )
    assert body["modules"]["encoder.layer.0.attention.self.query"]["layout"] == "linear"
    assert body["base_config"]["model_type"] == "bert"
    from safetensors.torch import load_file

    stored = load_file(str(tmp_path / TENSORS_FILE))
    codes = stored["encoder.layer.0.attention.self.query.qweight.codes"]
    assert codes.dtype == torch.uint8 and codes.numel() == 32 * 32 // 2  # 4-bit codes: half a byte each
    packed = sum(t.numel() for n, t in stored.items() if n.startswith("encoder.layer.0.attention.self.query.qweight"))
    assert abs(packed - entry["bits"] / 8) <= 8
    for name, tensor in stored.items():  # independent hash of the raw bytes
        raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        assert body["tensors"][name]["sha256"] == hashlib.sha256(raw).hexdigest()


def _saved(bert, tmp_path):
    quantize_(bert, MIXED)
    save_quantized(bert, tmp_path)
    return tmp_path


@pytest.mark.parametrize("where", [0.5, 0.999, 0.001])
def test_flipped_byte_in_tensors_is_refused(bert, tmp_path, where) -> None:
    folder = _saved(bert, tmp_path)
    path = folder / TENSORS_FILE
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptDataError, match="sha256"):
        load_quantized(folder)


def test_truncated_file_is_refused(bert, tmp_path) -> None:
    folder = _saved(bert, tmp_path)
    path = folder / TENSORS_FILE
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CorruptDataError, match="truncated"):
        load_quantized(folder)
    manifest = folder / MANIFEST_FILE
    manifest.write_bytes(manifest.read_bytes()[:-50])
    with pytest.raises(CorruptDataError, match="truncated"):
        load_quantized(folder)


def test_edited_manifest_is_refused(bert, tmp_path) -> None:
    folder = _saved(bert, tmp_path)
    manifest = folder / MANIFEST_FILE
    text = manifest.read_text()
    manifest.write_text(text.replace("nf4/block64:absmax:fp32", "nf4/block64:absmax:fp16", 1))
    with pytest.raises(CorruptDataError, match="checksum"):
        load_quantized(folder)


@pytest.mark.parametrize("version, message", [(3, "format version 3"), (1, "Re-create it from the base model")])
def test_other_format_version_is_refused(bert, tmp_path, version: int, message: str) -> None:
    folder = _saved(bert, tmp_path)
    manifest = folder / MANIFEST_FILE
    data = json.loads(manifest.read_text())
    data["body"]["format_version"] = version
    canonical = json.dumps(data["body"], sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    data["sha256"] = hashlib.sha256(canonical).hexdigest()
    manifest.write_text(json.dumps(data))
    with pytest.raises(CorruptDataError, match=message):
        load_quantized(folder)


def test_not_a_checkpoint_and_remote_code_are_refused(bert, tmp_path) -> None:
    with pytest.raises(ParameterError, match="no wquant-manifest"):
        load_quantized(tmp_path)
    bert.config.auto_map = {"AutoModel": "evil.Model"}
    save_quantized(bert, tmp_path)
    with pytest.raises(ParameterError, match="custom code"):
        load_quantized(tmp_path)


def test_save_refuses_a_non_empty_folder_and_force_replaces_it_whole(bert, tmp_path) -> None:
    _saved(bert, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(ParameterError, match="--force"):
        save_quantized(bert, tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    (tmp_path / "stale.txt").write_text("from an earlier run")
    save_quantized(bert, tmp_path, force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MANIFEST_FILE, TENSORS_FILE])
    assert not [p for p in tmp_path.parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]
    load_quantized(tmp_path)


def test_round_trip_with_tensors_computed_at_init(tmp_path) -> None:
    """Dynamic RoPE keeps a plain tensor attribute from __init__; long inputs make the model use it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=96, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=64, max_position_embeddings=64, rope_scaling={"rope_type": "dynamic", "factor": 2.0},
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    quantize_(model, QuantizeConfig())
    ids = torch.randint(0, 96, (1, 100), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        before = model(input_ids=ids).logits
        save_quantized(model, tmp_path)
        after = load_quantized(tmp_path)(input_ids=ids).logits
    assert torch.equal(before, after)


def test_cpu_build_fallback_gives_the_same_model(bert, tmp_path, monkeypatch) -> None:
    import wquant.models.checkpoint as checkpoint

    quantize_(bert, MIXED)
    save_quantized(bert, tmp_path)
    calls = []
    monkeypatch.setattr(checkpoint, "_has_stray_meta_tensors", lambda net: not calls.append(net))
    loaded = load_quantized(tmp_path)
    assert len(calls) == 1 and loaded is not calls[0]
    assert not any(t.is_meta for t in [*loaded.parameters(), *loaded.buffers()])
    ids = _ids(bert.config.vocab_size)
    with torch.inference_mode():
        assert torch.equal(loaded(input_ids=ids)[0], bert(input_ids=ids)[0])
