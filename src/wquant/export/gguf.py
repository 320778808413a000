"""`--to gguf`: a llama.cpp GGUF file from a model wquant quantized, for Llama causal LMs and BERT encoders.

Quantized weights go in as their GGUF blocks (`gguf_types`: wquant's own codes and scales, rearranged, so
llama.cpp dequantizes exactly what wquant measured); every other parameter as F32 (norms, biases) or, for
unquantized matrices, F32/F16/BF16 (`float_type`). The container, metadata keys, tensor names and token types
come from the `gguf` package (GGUFWriter, TensorNameMap, constants); the per-architecture metadata follows
what llama.cpp reads for `llama` and `bert`. Llama's q/k rows are permuted from Hugging Face's rotate-half
order into ggml's interleaved rope order (whole rows move, so packed rows move losslessly); a tied embedding
is written once (llama.cpp then uses token_embd as the output matrix).

Tokenizers: byte-level BPE (`gpt2` in GGUF), character vocabularies such as the causal testbed's (written as a
byte-level BPE whose tokens are the characters and whose merges build multi-byte characters, so llama.cpp
tokenizes text into the same ids), and WordPiece (`bert`). Others are refused with what to use instead.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from wquant.errors import ParameterError, SpecError
from wquant.export import ExportedTensor, ExportReport, Source, register_exporter
from wquant.export.gguf_types import pack_gguf
from wquant.formats import QuantizedTensor
from wquant.io import atomic_write
from wquant.models import quantized_modules

FloatType = Literal["f32", "f16", "bf16"]
FLOAT_TYPES = ("f32", "f16", "bf16")
#: A merge that can never fire (bytes 0x00 and 0x01 side by side): llama.cpp needs a merges list for BPE
#: vocabularies, and a character vocabulary of single-byte characters has none of its own.
INERT_MERGE = "\u0100 \u0101"


@dataclass(frozen=True)
class Arch:
    """What llama.cpp needs of one architecture: its GGUF name, metadata, tensors to skip, rows to permute."""

    name: str
    metadata: Callable[[Any, Any], None]  # (writer, HF config)
    skip: tuple[str, ...] = ()  # parameter-name prefixes llama.cpp has no tensor for
    permute_qk: bool = False


def _llama_metadata(writer: Any, config: Any) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    rope = _rope_parameters(config)
    if rope.get("rope_type", "default") not in ("default", None):
        raise ParameterError(f"rope scaling {rope!r} is not exported; use llama.cpp's convert_hf_to_gguf.py")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or heads)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != config.hidden_size // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_vocab_size(config.vocab_size)


def _rope_parameters(config: Any) -> dict[str, Any]:
    """transformers ≥ 5 keeps rope_theta and the scaling type in rope_parameters (older: rope_scaling)."""
    return dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})


def _rope_theta(config: Any) -> float:
    theta = getattr(config, "rope_theta", None)
    return float(theta if theta is not None else _rope_parameters(config).get("rope_theta", 10000.0))


def _bert_metadata(writer: Any, config: Any) -> None:
    import gguf

    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_layer_norm_eps(float(config.layer_norm_eps))
    writer.add_causal_attention(False)
    writer.add_pooling_type(gguf.PoolingType.MEAN)  # sentence-transformers' mean pooling
    writer.add_token_type_count(getattr(config, "type_vocab_size", 1))


ARCHS: dict[str, Arch] = {
    "llama": Arch("llama", _llama_metadata, permute_qk=True),
    "bert": Arch("bert", _bert_metadata, skip=("pooler.",)),
}


# ------------------------------------------------------------------------------------------------ tokenizer


@lru_cache(maxsize=1)
def _byte_chars() -> dict[int, str]:
    """GPT-2's byte → printable character map (the byte-level BPE alphabet llama.cpp decodes)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def _byte_level(text: str) -> str:
    table = _byte_chars()
    return "".join(table[b] for b in text.encode("utf-8"))


@dataclass(frozen=True)
class Vocab:
    model: str  # tokenizer.ggml.model: "gpt2" or "bert"
    pre: str
    tokens: list[str]
    types: list[int]
    merges: list[str]


def gguf_vocab(tokenizer: Any) -> Vocab:
    """The tokenizer as GGUF token lists (see the module docstring for what is supported)."""
    import gguf

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ParameterError("only fast (tokenizers-backed) tokenizers are exported; save it with tokenizer.json")
    spec = json.loads(backend.to_str())
    kind = spec["model"]["type"]
    vocab = tokenizer.get_vocab()
    by_id = sorted(vocab.items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise ParameterError("tokenizer ids are not 0..n-1 without gaps; GGUF lists tokens by position")
    special = set(tokenizer.all_special_tokens) | {t["content"] for t in spec.get("added_tokens", []) if t["special"]}
    added = {t["content"] for t in spec.get("added_tokens", [])}
    control, normal, user = gguf.TokenType.CONTROL, gguf.TokenType.NORMAL, gguf.TokenType.USER_DEFINED

    def token_type(token: str) -> int:
        return int(control if token in special else user if token in added else normal)

    if kind == "WordPiece":
        tokens = [t if t in special or (t.startswith("[") and t.endswith("]")) else
                  t[2:] if t.startswith("##") else "\u2581" + t for t, _ in by_id]  # fmt: skip
        return Vocab("bert", "default", tokens, [token_type(t) for t, _ in by_id], [])
    if kind == "WordLevel":  # one token per character (the testbed): byte-level tokens, merges build characters
        tokens, merges = [], []
        for token, _ in by_id:
            if token in special or token in added:
                tokens.append(token)
                continue
            if len(token) != 1:
                raise ParameterError(f"word-level token {token!r} is not one character; only character vocabularies "
                                     "map onto GGUF's byte-level BPE")  # fmt: skip
            mapped = _byte_level(token)
            tokens.append(mapped)
            merges += [f"{mapped[:k]} {mapped[k]}" for k in range(1, len(mapped))]
        return Vocab("gpt2", "gpt-2", tokens, [token_type(t) for t, _ in by_id], list(dict.fromkeys(merges)))
    if kind == "BPE" and _byte_level_pre(spec):
        raw = spec["model"].get("merges") or []
        merges = [m if isinstance(m, str) else " ".join(m) for m in raw]
        return Vocab("gpt2", "gpt-2", [t for t, _ in by_id], [token_type(t) for t, _ in by_id], merges)
    raise ParameterError(
        f"tokenizer model {kind} (pre-tokenizer {(spec.get('pre_tokenizer') or {}).get('type')}) has no GGUF form "
        "here; wquant exports byte-level BPE, character and WordPiece tokenizers (SentencePiece and others: use "
        "llama.cpp's convert_hf_to_gguf.py for the vocabulary)"
    )


def _byte_level_pre(spec: dict[str, Any]) -> bool:
    pre = spec.get("pre_tokenizer") or {}
    return pre.get("type") == "ByteLevel" and pre.get("use_regex", True)


def _write_vocab(writer: Any, tokenizer: Any, vocab: Vocab, arch: str) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.model == "gpt2":
        writer.add_token_merges(vocab.merges or [INERT_MERGE])
    ids = {name: getattr(tokenizer, f"{name}_token_id", None) for name in ("bos", "eos", "unk", "pad", "sep",
                                                                           "cls", "mask")}  # fmt: skip
    if arch == "bert":
        ids["bos"] = ids["cls"]  # llama.cpp's BERT starts a sequence with BOS = [CLS] and ends it with [SEP]
        writer.add_add_bos_token(True)
        writer.add_add_sep_token(True)
    else:
        writer.add_add_bos_token(bool(getattr(tokenizer, "add_bos_token", False)) and ids["bos"] is not None)
        writer.add_add_eos_token(False)
    for name, value in ids.items():
        if value is not None and name != "cls":
            getattr(writer, f"add_{name}_token_id")(int(value))


# -------------------------------------------------------------------------------------------------- tensors


def _permute_rows(rows: int, heads: int) -> np.ndarray:
    """Row order that turns Hugging Face's rotate-half q/k rows into ggml's interleaved rope pairs."""
    if rows % (2 * heads):
        raise ParameterError(f"{rows} q/k rows do not split into {heads} heads of rotary pairs")
    return np.arange(rows).reshape(heads, 2, rows // heads // 2).swapaxes(1, 2).reshape(-1)


def _model_tensors(model: nn.Module) -> list[tuple[str, QuantizedTensor | torch.Tensor]]:
    """(HF name, stored tensor) of every quantized weight (a tied one once) and every parameter."""
    out: list[tuple[str, QuantizedTensor | torch.Tensor]] = []
    seen: set[int] = set()
    for path, module in quantized_modules(model):
        if id(module.qweight) in seen:
            continue
        seen.add(id(module.qweight))
        if module.layout == "transposed":
            raise ParameterError(f"{path} is a transposed (Conv1D) layer; GGUF export supports Llama and BERT")
        out.append((f"{path}.weight", module.qweight.quantized))
    out += [(name, p.detach()) for name, p in model.named_parameters()]
    return out


def _float_array(tensor: torch.Tensor, float_type: FloatType) -> tuple[np.ndarray, Any, str]:
    import gguf

    t = tensor.detach().cpu()
    if t.ndim < 2 or float_type == "f32":
        return t.float().numpy(), None, "F32"
    if float_type == "f16":
        return t.half().numpy(), None, "F16"
    return t.bfloat16().view(torch.int16).numpy().view(np.uint8), gguf.GGMLQuantizationType.BF16, "BF16"


def write_gguf(
    source: Source, out: Path, *, force: bool = False, float_type: FloatType = "f32", name: str | None = None
) -> ExportReport:
    """Write `source` as one GGUF file at `out` (atomically); see the module docstring."""
    import gguf

    if float_type not in FLOAT_TYPES:
        raise ParameterError(f"float type {float_type!r} unknown; valid: {', '.join(FLOAT_TYPES)}")
    model, config = source.model, getattr(source.model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHS:
        raise ParameterError(f"GGUF export supports {', '.join(ARCHS)} models; {source.path} is {model_type!r}")
    arch = ARCHS[model_type]
    n_blocks = config.num_hidden_layers
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA if arch.name == "llama" else gguf.MODEL_ARCH.BERT,
                                     n_blocks)  # fmt: skip
    vocab = gguf_vocab(source.tokenizer)
    if len(vocab.tokens) != _embedding_rows(model):
        raise ParameterError(f"tokenizer has {len(vocab.tokens)} tokens, the embedding {_embedding_rows(model)} rows; "
                             "GGUF needs one token per row")  # fmt: skip
    planned: list[tuple[str, np.ndarray, Any, str, tuple[int, ...]]] = []
    notes: list[str] = []
    for hf_name, stored in _model_tensors(model):
        if any(hf_name.startswith(prefix) for prefix in arch.skip):
            notes.append(f"{hf_name}: not used by llama.cpp, left out")
            continue
        gguf_name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ParameterError(f"{hf_name} has no GGUF tensor name for {arch.name}; is this a standard model?")
        if isinstance(stored, QuantizedTensor):
            try:
                gtype, data = pack_gguf(stored, gguf_name)
            except SpecError as exc:
                raise SpecError(f"{exc} (HF name {hf_name})") from None
            raw_dtype, kind, shape = getattr(gguf.GGMLQuantizationType, gtype.name), gtype.name, stored.shape
        else:
            data, raw_dtype, kind = _float_array(stored, float_type)
            shape = tuple(stored.shape)
        if arch.permute_qk and gguf_name.endswith(("attn_q.weight", "attn_k.weight", "attn_q.bias", "attn_k.bias")):
            heads = config.num_attention_heads
            if ".attn_k." in gguf_name:
                heads = getattr(config, "num_key_value_heads", None) or heads
            data = data[_permute_rows(data.shape[0], heads)]
        planned.append((gguf_name, np.ascontiguousarray(data), raw_dtype, kind, tuple(int(s) for s in shape)))

    def write(tmp: Path) -> None:
        writer = gguf.GGUFWriter(str(tmp), arch.name)
        writer.add_name(name or source.path.name)
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_string("general.quantized_by", "wquant")
        arch.metadata(writer, config)
        _write_vocab(writer, source.tokenizer, vocab, arch.name)
        for gguf_name, data, raw_dtype, _, _ in planned:
            writer.add_tensor(gguf_name, data, raw_dtype=raw_dtype)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()

    atomic_write(out, write)
    tensors = tuple(ExportedTensor(n, kind, shape, int(d.nbytes)) for n, d, _, kind, shape in planned)
    return ExportReport(out, "gguf", tensors, out.stat().st_size, tuple(notes))


def _embedding_rows(model: nn.Module) -> int:
    embeddings = model.get_input_embeddings()
    weight = embeddings.qweight.shape if hasattr(embeddings, "qweight") else embeddings.weight.shape
    return int(weight[0])


register_exporter("gguf", write_gguf, summary="llama.cpp GGUF file (Llama, BERT): wquant's codes in GGUF blocks")
