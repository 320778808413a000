"""`--to gguf` on a tiny Llama and a tiny BERT: read back with gguf's own reader and dequantizer, every tensor
is wquant's (q/k rows in ggml's rope order), the metadata is what llama.cpp reads, and the vocabulary maps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from wquant.errors import ParameterError, SpecError  # noqa: E402
from wquant.evaluate.testbed import char_tokenizer  # noqa: E402
from wquant.export import Source, export  # noqa: E402
from wquant.export.gguf import INERT_MERGE, gguf_vocab  # noqa: E402
from wquant.models import QuantizeConfig, quantize_, save_quantized  # noqa: E402

TEXT = "to be or not to be, that is the question: whether tis nobler in the mind to suffer.\n" * 4


def _llama(tok, *, tie: bool = False, hidden: int = 256, kv_heads: int = 2):  # noqa: ANN001, ANN202
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, max_position_embeddings=64, tie_word_embeddings=tie, bos_token_id=None,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def _read(path):  # noqa: ANN001, ANN202
    reader = gguf.GGUFReader(str(path))
    tensors = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type)
        tensors[t.name] = (t.tensor_type.name, values.reshape([int(n) for n in reversed(t.shape)]))
    fields = {}
    for key, field in reader.fields.items():
        try:
            fields[key] = field.contents()
        except Exception:  # noqa: BLE001 - a field type contents() cannot show is irrelevant here
            continue
    return tensors, fields


def _unpermute(values: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of llama.cpp's converter permutation (HF rotate-half rows → ggml interleaved)."""
    rows = values.shape[0]
    order = np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)
    out = np.empty_like(values)
    out[order] = values
    return out


def test_llama_gguf_holds_wquant_weights_exactly(tmp_path) -> None:  # noqa: ANN001
    tok = char_tokenizer(TEXT)
    model = _llama(tok)
    mix = {"*v_proj": "q6_k", "*down_proj": "iq4_xs", "*up_proj": "q5_k", "*gate_proj": "q3_k", "lm_head": "q8_0",
           "*o_proj": "q2_k"}  # fmt: skip
    quantize_(model, QuantizeConfig("q4_k", targets=("linear", "embedding"), overrides=mix))
    report = export(Source(model, tok, tmp_path, True), "gguf", tmp_path / "m.gguf")
    tensors, fields = _read(tmp_path / "m.gguf")
    assert report.file_bytes == (tmp_path / "m.gguf").stat().st_size
    assert {"Q4_K", "Q6_K", "IQ4_XS", "Q5_K", "Q3_K", "Q8_0", "Q2_K", "F32"} == set(report.summary())
    expected = {
        "token_embd.weight": model.model.embed_tokens.weight, "output.weight": model.lm_head.weight,
        "output_norm.weight": model.model.norm.weight,
    }  # fmt: skip
    for i, layer in enumerate(model.model.layers):
        a, f = layer.self_attn, layer.mlp
        expected |= {
            f"blk.{i}.attn_q.weight": a.q_proj.weight, f"blk.{i}.attn_k.weight": a.k_proj.weight,
            f"blk.{i}.attn_v.weight": a.v_proj.weight, f"blk.{i}.attn_output.weight": a.o_proj.weight,
            f"blk.{i}.ffn_gate.weight": f.gate_proj.weight, f"blk.{i}.ffn_up.weight": f.up_proj.weight,
            f"blk.{i}.ffn_down.weight": f.down_proj.weight, f"blk.{i}.attn_norm.weight": layer.input_layernorm.weight,
            f"blk.{i}.ffn_norm.weight": layer.post_attention_layernorm.weight,
        }  # fmt: skip
    assert set(tensors) == set(expected)
    for name, weight in expected.items():
        values = tensors[name][1]
        if name.endswith(("attn_q.weight", "attn_k.weight")):
            values = _unpermute(values, 4 if "attn_q" in name else 2)
        assert np.array_equal(values, weight.detach().float().numpy()), name
    assert tensors["blk.0.attn_q.weight"][0] == "Q4_K" and tensors["output.weight"][0] == "Q8_0"
    assert fields["general.architecture"] == "llama"
    assert fields["llama.attention.head_count"] == 4 and fields["llama.attention.head_count_kv"] == 2
    assert fields["llama.block_count"] == 2 and fields["llama.rope.dimension_count"] == 64
    assert fields["llama.embedding_length"] == 256 and fields["llama.feed_forward_length"] == 512
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert fields["tokenizer.ggml.add_bos_token"] is False


def test_tied_embeddings_are_written_once(tmp_path) -> None:  # noqa: ANN001
    tok = char_tokenizer(TEXT)
    model = _llama(tok, tie=True)
    quantize_(model, QuantizeConfig("q8_0", targets=("linear", "embedding")))
    assert model.lm_head.qweight is model.model.embed_tokens.qweight
    export(Source(model, tok, tmp_path, True), "gguf", tmp_path / "tied.gguf")
    tensors, _ = _read(tmp_path / "tied.gguf")
    assert "output.weight" not in tensors and tensors["token_embd.weight"][0] == "Q8_0"


def test_character_vocabulary_becomes_byte_level_bpe() -> None:
    tok = char_tokenizer(TEXT + "é")
    vocab = gguf_vocab(tok)
    byte_level = {" ": "\u0120", "\n": "\u010a", "é": "\u00c3\u00a9"}  # GPT-2's byte → character map
    for token, index in tok.get_vocab().items():
        assert vocab.tokens[index] == byte_level.get(token, token)
    assert vocab.merges == ["\u00c3 \u00a9"] and vocab.model == "gpt2"
    assert vocab.types[tok.eos_token_id] == gguf.TokenType.CONTROL
    assert gguf_vocab(char_tokenizer(TEXT)).merges == [] and INERT_MERGE.split(" ")[0] not in vocab.tokens


def test_unquantized_float_types(tmp_path) -> None:  # noqa: ANN001
    tok = char_tokenizer(TEXT)
    model = _llama(tok)
    quantize_(model, QuantizeConfig("q4_0", include=("*mlp*",)))
    export(Source(model, tok, tmp_path, True), "gguf", tmp_path / "f16.gguf", float_type="f16")
    tensors, _ = _read(tmp_path / "f16.gguf")
    assert tensors["blk.0.attn_v.weight"][0] == "F16" and tensors["blk.0.attn_norm.weight"][0] == "F32"
    assert tensors["blk.0.ffn_up.weight"][0] == "Q4_0"
    v = model.model.layers[0].self_attn.v_proj.weight.detach()
    assert np.array_equal(tensors["blk.0.attn_v.weight"][1], v.half().float().numpy())


def test_refusals_name_the_tensor_and_what_to_do(tmp_path) -> None:  # noqa: ANN001
    tok = char_tokenizer(TEXT)
    model = _llama(tok)
    quantize_(model, QuantizeConfig("nf4", include=("*q_proj",)))
    with pytest.raises(SpecError, match=r"blk\.0\.attn_q\.weight.*q4_k"):
        export(Source(model, tok, tmp_path, True), "gguf", tmp_path / "x.gguf")
    assert not (tmp_path / "x.gguf").exists()
    with pytest.raises(ParameterError, match="--to"):
        export(Source(model, tok, tmp_path, True), "onnx", tmp_path / "x.onnx")


def _wordpiece_bert():  # noqa: ANN202
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "##s", "a", "##t"]
    core = Tokenizer(models.WordPiece({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.normalizer = normalizers.BertNormalizer(lowercase=True)
    core.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    core.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]")  # fmt: skip
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(words), hidden_size=64, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=256, max_position_embeddings=32)  # fmt: skip
    return BertModel(config).eval(), tok


def test_bert_gguf(tmp_path) -> None:  # noqa: ANN001
    model, tok = _wordpiece_bert()
    mix = {"*intermediate*": "iq4_nl", "encoder.layer.0.output.dense": "q4_k"}
    quantize_(model, QuantizeConfig("q8_0", overrides=mix))
    save_quantized(model, tmp_path / "q", tokenizer=tok)
    report = export(tmp_path / "q", "gguf", tmp_path / "bert.gguf")  # from the saved folder, as the CLI does
    tensors, fields = _read(tmp_path / "bert.gguf")
    assert any("pooler" in note for note in report.notes)
    assert fields["general.architecture"] == "bert" and fields["bert.attention.causal"] is False
    assert fields["bert.pooling_type"] == int(gguf.PoolingType.MEAN)
    assert fields["tokenizer.ggml.model"] == "bert"
    assert fields["tokenizer.ggml.tokens"][:3] == ["[PAD]", "[UNK]", "[CLS]"]
    assert fields["tokenizer.ggml.tokens"][5] == "\u2581the" and fields["tokenizer.ggml.tokens"][10] == "s"
    assert fields["tokenizer.ggml.bos_token_id"] == 2 and fields["tokenizer.ggml.seperator_token_id"] == 3
    layer = model.encoder.layer[0]
    assert tensors["blk.0.ffn_up.weight"][0] == "IQ4_NL" and tensors["blk.0.ffn_down.weight"][0] == "Q4_K"
    assert np.array_equal(tensors["blk.0.ffn_up.weight"][1], layer.intermediate.dense.weight.detach().numpy())
    assert np.array_equal(tensors["blk.0.attn_q.bias"][1], layer.attention.self.query.bias.detach().numpy())
    positions = model.embeddings.position_embeddings.weight.detach().numpy()
    assert np.array_equal(tensors["position_embd.weight"][1], positions)
    assert {"token_types.weight", "token_embd_norm.weight", "blk.0.layer_output_norm.bias"} <= set(tensors)
