"""Quantize whole PyTorch / Hugging Face models, count their bits, save and reload them.

>>> from wquant.models import QuantizeConfig, quantize_model, model_bits, save_quantized, load_quantized
>>> quantize_model(model, QuantizeConfig("int4:unsigned/block64:minmax:bf16", targets=("linear",)))
>>> model_bits(model).bits_per_param
>>> save_quantized(model, "out/", tokenizer=tok); same = load_quantized("out/")
"""

from wquant.models.bits import ModelBits, TensorBits, model_bits
from wquant.models.checkpoint import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    TENSORS_FILE,
    load_quantized,
    read_manifest,
    save_quantized,
)
from wquant.models.hf import (
    MINILM,
    LoadedModel,
    estimate_load_bytes,
    load_pretrained,
    load_tokenizer,
    mean_pooled,
    resolve_model_dir,
    sentence_embeddings,
)
from wquant.models.layers import QuantizedEmbedding, QuantizedLinear, QuantizedWeight, quantized_modules
from wquant.models.quantize import DEFAULT_FORMAT, TARGET_KINDS, QuantizeConfig, module_kind, quantize_model

__all__ = [
    "DEFAULT_FORMAT",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "MINILM",
    "TARGET_KINDS",
    "TENSORS_FILE",
    "LoadedModel",
    "ModelBits",
    "QuantizeConfig",
    "QuantizedEmbedding",
    "QuantizedLinear",
    "QuantizedWeight",
    "TensorBits",
    "estimate_load_bytes",
    "load_pretrained",
    "load_quantized",
    "load_tokenizer",
    "mean_pooled",
    "model_bits",
    "module_kind",
    "quantize_model",
    "quantized_modules",
    "read_manifest",
    "resolve_model_dir",
    "save_quantized",
    "sentence_embeddings",
]
