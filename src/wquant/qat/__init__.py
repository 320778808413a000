"""Quantization-aware training: differentiable fake quantization for every format, LLM-QAT, PEQA and STE.

>>> from wquant.qat import QATConfig, train_qat
>>> result = train_qat(model, QATConfig("int3/block64:absmax:bf16", method="llm-qat", steps=200), tokenizer=tok)
>>> save_quantized(model, "out/")          # the same packed checkpoint as `wquant quantize` writes

Lower level: `prepare_qat(model, FakeQuantConfig(spec, learn_scales=True))` swaps Linear layers for
`FakeQuantLinear` (STE, LSQ scales, NUPES exponent) or `PEQALinear` (frozen codes); train them your way;
`convert_qat(model)` packs them.
"""

from wquant.qat.data import (
    Samples,
    batch_indices,
    batches_to_samples,
    generate_samples,
    samples_sha256,
    special_ids,
    token_samples,
)
from wquant.qat.fake_quant import (
    FakeQuantConfig,
    FakeQuantLinear,
    PEQALinear,
    convert_qat,
    count_trainable,
    prepare_qat,
    qat_modules,
    trainable_parameters,
)
from wquant.qat.train import (
    DEFAULT_LR,
    METHODS,
    QATConfig,
    QATResult,
    is_causal_lm,
    learning_rate,
    model_sha256,
    qat_loss,
    train_qat,
)

__all__ = [
    "DEFAULT_LR",
    "METHODS",
    "FakeQuantConfig",
    "FakeQuantLinear",
    "PEQALinear",
    "QATConfig",
    "QATResult",
    "Samples",
    "batch_indices",
    "batches_to_samples",
    "convert_qat",
    "count_trainable",
    "generate_samples",
    "is_causal_lm",
    "learning_rate",
    "model_sha256",
    "prepare_qat",
    "qat_loss",
    "qat_modules",
    "samples_sha256",
    "special_ids",
    "token_samples",
    "trainable_parameters",
    "train_qat",
]
