"""Model-level bit accounting: what the whole model costs to store, not just its quantized layers.

Rule: every distinct parameter counts once (tied weights once). A quantized weight costs its format's exact
stored bits (codes, scales, offsets, tables, outliers: `QuantizedTensor.bits()`); every other parameter costs
numel × its dtype width (fp32 32, bf16 16, ...). Buffers (position ids, running statistics) are not parameters
and are not counted. bits/param = total bits / total parameter count.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from wquant.models.layers import packed_weights


@dataclass(frozen=True)
class TensorBits:
    """One stored tensor: its name, element count, stored bits and what it is stored as."""

    name: str
    numel: int
    bits: int
    stored_as: str  # a format spec string, or a dtype name for unquantized tensors
    quantized: bool

    @property
    def bits_per_param(self) -> float:
        return self.bits / self.numel


@dataclass(frozen=True)
class ModelBits:
    """Bits of a whole model, split into quantized and unquantized tensors."""

    tensors: tuple[TensorBits, ...]

    @property
    def bits(self) -> int:
        return sum(t.bits for t in self.tensors)

    @property
    def params(self) -> int:
        return sum(t.numel for t in self.tensors)

    @property
    def bits_per_param(self) -> float:
        return self.bits / self.params if self.params else 0.0

    @property
    def quantized_params(self) -> int:
        return sum(t.numel for t in self.tensors if t.quantized)

    @property
    def quantized_bits(self) -> int:
        return sum(t.bits for t in self.tensors if t.quantized)


def model_bits(model: nn.Module) -> ModelBits:
    """Exact stored bits of every distinct parameter of `model` (see the module docstring for the rule)."""
    rows: list[TensorBits] = []
    for name, packed in packed_weights(model):
        q = packed.quantized
        rows.append(TensorBits(name, q.numel, q.bits(), q.spec.to_string(), True))
    for name, param in model.named_parameters():  # named_parameters already drops tied duplicates
        rows.append(
            TensorBits(name, param.numel(), param.numel() * param.element_size() * 8, _dtype_name(param), False)
        )
    return ModelBits(tuple(rows))


def _dtype_name(param: nn.Parameter) -> str:
    return str(param.dtype).removeprefix("torch.")
