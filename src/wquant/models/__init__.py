"""Quantize whole PyTorch / Hugging Face models, count their bits, save and reload them.

>>> from wquant import quantize_
>>> from wquant.models import QuantizeConfig, model_bits, save_quantized, load_quantized
>>> quantize_(model, QuantizeConfig("int4:unsigned/block64:minmax:bf16", exclude=("lm_head",)))
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
from wquant.models.layers import PackedWeight, QuantizedEmbedding, QuantizedLinear, packed_weights, quantized_modules
from wquant.models.quantize import KEEP, LayerReport, QuantizeConfig, quantize_
from wquant.models.sites import TARGET_KINDS, WeightSite, module_kind, weight_sites

__all__ = [
    "FORMAT_VERSION",
    "KEEP",
    "MANIFEST_FILE",
    "MINILM",
    "TARGET_KINDS",
    "TENSORS_FILE",
    "LayerReport",
    "LoadedModel",
    "ModelBits",
    "PackedWeight",
    "QuantizeConfig",
    "QuantizedEmbedding",
    "QuantizedLinear",
    "TensorBits",
    "WeightSite",
    "estimate_load_bytes",
    "load_pretrained",
    "load_quantized",
    "load_tokenizer",
    "mean_pooled",
    "model_bits",
    "module_kind",
    "packed_weights",
    "quantize_",
    "quantized_modules",
    "read_manifest",
    "resolve_model_dir",
    "save_quantized",
    "sentence_embeddings",
    "weight_sites",
]
