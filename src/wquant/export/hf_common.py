"""What the Hugging Face-side exporters (compressed-tensors, GPTQ) share: which wquant specs are plain integer
schemes they can carry exactly, the codes and scales of one stored tensor in those terms, and writing a model
folder (config.json with its quantization_config, model.safetensors, tokenizer) atomically."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from wquant.errors import ParameterError, SpecError
from wquant.export import Source
from wquant.formats import FormatSpec, IntGrid, QuantizedTensor
from wquant.formats.grouping import view_2d
from wquant.io import check_output_folder, replace_folder, staging_folder
from wquant.models import quantized_modules

_SCALE_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
_SCALE_ONLY = ("absmax", "signmax", "span", "rms")


@dataclass(frozen=True)
class IntScheme:
    """An integer weight scheme both HF layouts describe: w = scale·(q − zero), q signed two's complement."""

    bits: int
    symmetric: bool  # zero = 0 (wquant int<b>:asym with a scale-only rule); else an integer zero per group
    group_size: int | None  # None: one scale per output channel
    scale_dtype: torch.dtype

    @property
    def key(self) -> tuple[int, bool, int | None, torch.dtype]:
        return self.bits, self.symmetric, self.group_size, self.scale_dtype


def int_scheme(spec: FormatSpec) -> IntScheme | None:
    """The integer scheme `spec` stores exactly, or None: int<b>:asym with absmax/signmax/span/rms scales
    (symmetric), or int<b>:unsigned with integer zero points (asymmetric); per block or per channel; fp16, bf16
    or fp32 scales; no outliers, entropy coding or two-level scales."""
    el, sc = spec.element, spec.scaling
    if not isinstance(el, IntGrid) or spec.outliers is not None or spec.coding is not None or sc.two_level:
        return None
    if sc.scale_format.name not in _SCALE_DTYPES or sc.granularity == "tensor" or not 2 <= el.bits <= 8:
        return None
    group = sc.block_size if sc.granularity == "block" else None
    if el.variant == "asym" and sc.rule in _SCALE_ONLY:
        return IntScheme(el.bits, True, group, _SCALE_DTYPES[sc.scale_format.name])
    if el.variant == "unsigned" and sc.rule == "zeropoint":
        return IntScheme(el.bits, False, group, _SCALE_DTYPES[sc.scale_format.name])
    return None


@dataclass(frozen=True)
class IntFields:
    """One tensor's fields in scheme terms: q (rows, cols) in −2^(b−1) … 2^(b−1)−1, per-group scale and zero."""

    q: torch.Tensor  # int32 (rows, cols)
    scale: torch.Tensor  # (rows, groups) in the scheme's scale dtype, exactly the stored values
    zero: torch.Tensor | None  # int32 (rows, groups), same range as q; None when symmetric


def int_fields(q: QuantizedTensor, scheme: IntScheme) -> IntFields:
    rows, cols = view_2d(q.shape)
    half = 2 ** (scheme.bits - 1)
    codes = q.codes.to(torch.int32).reshape(rows, cols) - half  # both grids: code − 2^(b−1) is the signed value
    scales = q.scales().to(scheme.scale_dtype)  # exact: stored in that dtype
    zero = None
    if not scheme.symmetric:
        zero = torch.as_tensor(q.offset_codes, dtype=torch.int32).reshape(scales.shape) - half
    return IntFields(codes, scales, zero)


def check_scheme(q: QuantizedTensor, name: str, accepts: Callable[[IntScheme], bool], exportable: str) -> IntScheme:
    """The tensor's scheme, refused (naming what the target takes) when it has none or the target lacks it."""
    scheme = int_scheme(q.spec)
    if scheme is None or not accepts(scheme):
        raise SpecError(f"{name}: {q.spec.to_string()} is not exportable here; exportable specs: {exportable}")
    cols = view_2d(q.shape)[1]
    if len(q.shape) != 2 or (scheme.group_size and cols % scheme.group_size):
        raise SpecError(f"{name}: rows of {cols} values do not hold whole groups of {scheme.group_size}; "
                        "use a block size that divides them, or channel scaling")  # fmt: skip
    return scheme


def linear_weights(model: nn.Module) -> dict[str, QuantizedTensor]:
    """{module path: stored weight} of the quantized linear layers; refuses quantized embeddings and ties."""
    out: dict[str, QuantizedTensor] = {}
    seen: dict[int, str] = {}
    for path, module in quantized_modules(model):
        if module.layout != "linear":
            raise ParameterError(
                f"{path} is a quantized {module.layout} layer; these formats carry quantized Linear layers only: "
                "quantize with --target linear (embeddings stay unquantized)"
            )
        if id(module.qweight) in seen:
            raise ParameterError(f"{path} shares its quantized weight with {seen[id(module.qweight)]}; untie them")
        seen[id(module.qweight)] = path
        out[path] = module.qweight.quantized
    return out


def float_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter that is not a quantized weight (those are buffers), by its Hugging Face name."""
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters()}


def unquantized_linears(model: nn.Module) -> list[str]:
    """Linear layers left in floating point (the `ignore` list of a quantization config)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]


def write_folder(
    source: Source, out: Path, tensors: dict[str, torch.Tensor], quantization_config: dict[str, Any],
    extra_files: dict[str, str], force: bool,
) -> list[Path]:  # fmt: skip
    """config.json (the model's, plus `quantization_config`), model.safetensors, tokenizer and extra JSON files,
    written into a staging folder and swapped in whole."""
    from safetensors.torch import save_file

    final = check_output_folder(out, force=force)
    staging = staging_folder(final)
    config = source.model.config.to_dict()
    config["quantization_config"] = quantization_config
    config.pop("dtype", None)
    (staging / "config.json").write_text(json.dumps(config, indent=1, default=str), encoding="utf-8")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(staging / "model.safetensors"),
              metadata={"format": "pt"})  # fmt: skip
    for name, text in extra_files.items():
        (staging / name).write_text(text, encoding="utf-8")
    if source.tokenizer is not None:
        source.tokenizer.save_pretrained(str(staging))
    replace_folder(staging, final)
    return sorted(final.iterdir())


def pack_dense(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned b-bit values along the last axis → int32 words, element i at bits i·b (little-endian, may
    straddle words), as compressed-tensors ≥ 0.20 packs `weight_packed` (4- and 8-bit: whole words)."""
    rows, n = values.shape
    words = -(-n * bits // 32)
    flat_bits = ((values.astype(np.uint64)[..., None] >> np.arange(bits, dtype=np.uint64)) & 1).reshape(rows, -1)
    padded = np.zeros((rows, words * 32), dtype=np.uint64)
    padded[:, : flat_bits.shape[1]] = flat_bits
    packed = (padded.reshape(rows, words, 32) << np.arange(32, dtype=np.uint64)).sum(axis=2)
    return packed.astype(np.uint32).view(np.int32)
