"""Tensor-level adapters for the peer libraries: one 2-D fp32 weight in, (ŵ, all-in bits/param, label) out.

Each adapter calls the peer's own quantizer and dequantizer on CPU and counts the bits that peer stores for
the tensor: packed codes (as the peer packs them, padding included) plus every per-group scale, zero point
and nested statistic, at the dtype the call produces. Not counted, for any library (wquant does not count
them either): fixed code tables that are library constants (bnb's NF4/FP4 `quant_map`, its 256-entry nested
map) and shape/dtype metadata. Every docstring says what was counted. Peers are optional: `peer_status()`
tells which import, and why the others do not.

Each adapter is split into `*_quantize` (the peer's quantize call, returning what it stores) and
`*_dequantize` so the speed benchmark can time the two halves separately (`CODECS`).
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch


class PeerPoint(NamedTuple):
    """A peer's reconstruction of one weight, its exact stored bits/param, and a short label."""

    w_hat: torch.Tensor
    bits_per_param: float
    label: str


def _tensor_bits(t: torch.Tensor) -> int:
    return t.numel() * t.element_size() * 8


# ---------------------------------------------------------------- bitsandbytes


def bnb_quantize(w: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = False) -> Any:
    import bitsandbytes.functional as bnbf

    # bnb blocks the flattened tensor either way; handing it over as one row gives bit-identical codes and
    # absmax, and avoids a bnb 0.50.2 CPU dequantize_4bit bug: with blocksize 256 and a last dimension that is
    # not a multiple of 256 (MiniLM's 384) it returns wrong values (rel. MSE 0.04-0.3 instead of 0.0097)
    flat = w.reshape(1, -1)
    return bnbf.quantize_4bit(flat, blocksize=blocksize, quant_type=quant_type, compress_statistics=double_quant)


def bnb_dequantize(stored: Any) -> torch.Tensor:
    import bitsandbytes.functional as bnbf

    packed, state = stored
    return bnbf.dequantize_4bit(packed, state)


def bnb_4bit(w: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64, double_quant: bool = False) -> PeerPoint:
    """bitsandbytes `quantize_4bit` (NF4 or its FP4), blocks of `blocksize` over the flattened tensor.

    Bits: the packed uint8 codes (4 bits/param) + one fp32 absmax per block → 4 + 32/B (B=64: 4.5).
    With `double_quant` (bnb's `compress_statistics`, QLoRA's double quantization; off by default in
    `quantize_4bit` and `BitsAndBytesConfig`): uint8 absmax per block + one fp32 absmax per 256 blocks +
    one fp32 offset per tensor → 4 + 8/B + 32/(256·B) + 32/n (B=64: ≈4.127). The 16-entry code table and the
    256-entry nested code table are library constants and not counted. The tensor is passed flattened to one
    row (same blocks, same codes; see `bnb_quantize` for the CPU kernel bug this avoids).
    """
    packed, state = stored = bnb_quantize(w, quant_type, blocksize, double_quant)
    bits = _tensor_bits(packed) + _tensor_bits(state.absmax)
    if state.nested:
        bits += _tensor_bits(state.state2.absmax) + 32  # nested fp32 absmax + the fp32 offset
    w_hat = bnb_dequantize(stored).reshape(w.shape).float()
    dq = "+DQ" if double_quant else ""
    return PeerPoint(w_hat, bits / w.numel(), f"bnb {quant_type.upper()} b{blocksize}{dq}")


# ---------------------------------------------------------------- hqq


def hqq_quantize(
    w: torch.Tensor, nbits: int = 4, group_size: int = 64, meta_dtype: torch.dtype = torch.float16
) -> tuple[torch.Tensor, dict]:
    from hqq.core.quantize import Quantizer

    w_q, meta = Quantizer.quantize(
        w,
        nbits=nbits,
        group_size=group_size,
        optimize=True,
        round_zero=nbits == 4,
        axis=1,
        device="cpu",
        compute_dtype=torch.float32,
    )
    meta["scale"] = meta["scale"].to(meta_dtype)  # what HQQLinear keeps: Quantizer.to_inplace casts meta
    meta["zero"] = meta["zero"].to(meta_dtype)  # tensors to its compute_dtype (float16 by default)
    return w_q, meta


def hqq_dequantize(stored: tuple[torch.Tensor, dict]) -> torch.Tensor:
    from hqq.core.quantize import Quantizer

    w_q, meta = stored
    meta = dict(meta, scale=meta["scale"].float(), zero=meta["zero"].float())
    return Quantizer.dequantize(w_q, meta)


def hqq(w: torch.Tensor, nbits: int = 4, group_size: int = 64, meta_dtype: torch.dtype = torch.float16) -> PeerPoint:
    """hqq `Quantizer.quantize` with `BaseQuantizeConfig`'s defaults: optimize=True (half-quadratic solver),
    axis=1 (groups along the input dimension), round_zero for 4 bits only.

    Bits: the packed codes as hqq packs them (4 bit: 2 per uint8; 3 bit: 10 per int32, i.e. 3.2 bits/param
    plus row padding; 2 bit: 4 per uint8) + one scale and one zero per group at `meta_dtype`. `Quantizer`
    returns fp32 scale/zero; `HQQLinear` casts them to its compute_dtype, float16 by default → 4-bit g64:
    4 + 32/64 = 4.5 (fp16), 5.0 with fp32 meta. Meta quantization (quant_scale/quant_zero) is deprecated
    in hqq 0.2.8 and off.
    """
    w_q, meta = stored = hqq_quantize(w, nbits, group_size, meta_dtype)
    bits = _tensor_bits(w_q) + _tensor_bits(meta["scale"]) + _tensor_bits(meta["zero"])
    w_hat = hqq_dequantize(stored).reshape(w.shape).float()
    meta_name = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}[meta_dtype]
    return PeerPoint(w_hat, bits / w.numel(), f"hqq {nbits}b g{group_size} {meta_name}")


# ---------------------------------------------------------------- torchao


def torchao_quantize(w: torch.Tensor, bits: int = 4, group_size: int = 64, symmetric: bool = True) -> tuple:
    from torchao.quantization.quant_primitives import (
        _DTYPE_TO_QVALUE_BOUNDS,
        MappingType,
        choose_qparams_affine,
        quantize_affine,
    )

    qmin, qmax = _DTYPE_TO_QVALUE_BOUNDS[getattr(torch, f"int{bits}")]
    mapping = MappingType.SYMMETRIC if symmetric else MappingType.ASYMMETRIC
    block = (1, group_size)
    # the same calls as IntxUnpackedToInt8Tensor.from_hp (IntxWeightOnlyConfig, AFFINE qparams algorithm)
    scale, zero = choose_qparams_affine(
        w, mapping, block, torch.int8, quant_min=qmin, quant_max=qmax, zero_point_dtype=torch.int8, keepdim=True
    )
    codes = quantize_affine(w, block, scale, zero, output_dtype=torch.int8, quant_min=qmin, quant_max=qmax)
    return codes, scale, zero, block, qmin, qmax


def torchao_dequantize(stored: tuple) -> torch.Tensor:
    from torchao.quantization.quant_primitives import dequantize_affine

    codes, scale, zero, block, qmin, qmax = stored
    return dequantize_affine(
        codes, block, scale, zero, torch.int8, quant_min=qmin, quant_max=qmax, output_dtype=torch.float32
    )


def torchao_intx(w: torch.Tensor, bits: int = 4, group_size: int = 64, symmetric: bool = True) -> PeerPoint:
    """torchao `IntxWeightOnlyConfig(weight_dtype=torch.int<b>, granularity=PerGroup(g))` through its primitives
    (`choose_qparams_affine` / `quantize_affine` / `dequantize_affine`, as `IntxUnpackedToInt8Tensor.from_hp`
    calls them). Symmetric is the config's default mapping (scale = absmax/((qmax−qmin)/2), codes −2^(b−1)…
    2^(b−1)−1); asymmetric adds a min/max zero point.

    Bits: codes at b bits (as torchao's packed intx layouts store them; the default UNPACKED_TO_INT8 layout
    keeps each code in a whole int8, which is 8 bits/param and not what is counted here) + one scale per
    group at the dtype `choose_qparams_affine` returns for fp32 weights (fp32) + one int8 zero point per
    group, which the tensor stores even for the symmetric mapping (all zeros) → b + 40/g (int4 g64: 4.625).
    """
    codes, scale, zero, *_ = stored = torchao_quantize(w, bits, group_size, symmetric)
    total = codes.numel() * bits + _tensor_bits(scale) + _tensor_bits(zero)
    w_hat = torchao_dequantize(stored).reshape(w.shape).float()
    mode = "sym" if symmetric else "asym"
    return PeerPoint(w_hat, total / w.numel(), f"torchao int{bits} g{group_size} {mode}")


# ---------------------------------------------------------------- optimum-quanto


def quanto_group_size(in_features: int) -> int | None:
    """QModuleMixin's rule for qint2/qint4: 128, lowered by 32 (not below 32) until it divides the input
    dimension; None (per output channel) when the input dimension is ≤ 128 or nothing divides it."""
    group_size = 128
    if in_features <= group_size:
        return None
    while in_features % group_size != 0 and group_size > 32:
        group_size -= 32
    return group_size if in_features % group_size == 0 else None


def quanto_quantize(
    w: torch.Tensor, qtype: str = "qint4", group_size: int | None = -1, scale_dtype: torch.dtype | None = None
) -> Any:
    from optimum.quanto import qtypes
    from optimum.quanto.tensor.optimizers import MaxOptimizer
    from optimum.quanto.tensor.weights import quantize_weight

    qt = qtypes[qtype]
    group = quanto_group_size(w.shape[1]) if group_size == -1 else group_size
    scale, shift = MaxOptimizer()(w, qtype=qt, axis=0, group_size=group)  # QModuleMixin's default optimizer
    if scale_dtype is not None:  # what a model held in that dtype stores (scale and shift follow the weight)
        scale, shift = scale.to(scale_dtype).float(), shift.to(scale_dtype).float()
    return quantize_weight(w, qtype=qt, axis=0, scale=scale, shift=shift, group_size=group, optimized=False)


def quanto_dequantize(stored: Any) -> torch.Tensor:
    return stored.dequantize()


def quanto(
    w: torch.Tensor, qtype: str = "qint4", group_size: int | None = -1, scale_dtype: torch.dtype | None = None
) -> PeerPoint:
    """optimum-quanto's weight quantizer at tensor level: `MaxOptimizer` (min/max affine, quanto's default for
    qint2/qint4) then `quantize_weight(..., optimized=False)` → `WeightQBitsTensor` (its Python path; no C++
    extension is built). group_size=-1 applies quanto's own rule (128 for these shapes).

    Bits: the PackedTensor's uint8 storage (qint4: 2 codes per byte, qint2: 4) + one scale and one float shift
    per group at the weight's dtype (fp32 here; `scale_dtype=torch.bfloat16` models a bf16 checkpoint)
    → qint4 g128 fp32: 4 + 64/128 = 4.5, bf16: 4.25.
    """
    q = quanto_quantize(w, qtype, group_size, scale_dtype)
    width = 32 if scale_dtype is None else torch.finfo(scale_dtype).bits
    bits = _tensor_bits(q._data._data) + (q._scale.numel() + q._shift.numel()) * width
    w_hat = quanto_dequantize(q).reshape(w.shape).float()
    group = quanto_group_size(w.shape[1]) if group_size == -1 else group_size
    name = "fp32" if scale_dtype is None else str(scale_dtype).removeprefix("torch.").replace("float", "fp")
    name = {"bfp16": "bf16"}.get(name, name)
    return PeerPoint(w_hat, bits / w.numel(), f"quanto {qtype} g{group} {name}")


# ---------------------------------------------------------------- auto-round (optional)


def autoround_quantize(w: torch.Tensor, bits: int = 4, group_size: int = 128) -> Any:
    from auto_round.data_type.int import quant_tensor_asym

    return quant_tensor_asym(w, bits=bits, group_size=group_size)


def autoround_rtn(w: torch.Tensor, bits: int = 4, group_size: int = 128) -> PeerPoint:
    """auto-round's `quant_tensor_asym` (its RTN asymmetric int quantizer, v=0, no SignRound tuning; it returns
    the fake-quantized tensor with scale and zero point). W4G128 is auto-round's default scheme.

    Bits: b bits per code + one fp16 scale (its default `scale_dtype`) + one integer zero point in
    [0, 2^b−1] per group, stored at b bits as auto-round's GPTQ-style export packs `qzeros` → b + (16 + b)/g
    (4-bit g128: 4.15625).
    """
    w_hat, scale, zero = autoround_quantize(w, bits, group_size)
    groups = math.ceil(w.shape[1] / group_size) * w.shape[0]
    assert scale.dtype == torch.float16 and scale.numel() == groups and zero.numel() == groups
    total = w.numel() * bits + groups * (16 + bits)
    return PeerPoint(w_hat.reshape(w.shape).float(), total / w.numel(), f"auto-round int{bits} g{group_size}")


# ---------------------------------------------------------------- registry


@dataclass(frozen=True)
class Peer:
    """One peer setting: the library it needs, whether it is that library's default, and how to run it."""

    library: str
    run: Callable[[torch.Tensor], PeerPoint]
    default: bool = False


def _p(library: str, fn: Callable[..., PeerPoint], default: bool = False, **kw: Any) -> Peer:
    return Peer(library, lambda w: fn(w, **kw), default)


PEERS: list[Peer] = [
    _p("bitsandbytes", bnb_4bit, True, quant_type="nf4", blocksize=64),
    _p("bitsandbytes", bnb_4bit, quant_type="nf4", blocksize=64, double_quant=True),
    _p("bitsandbytes", bnb_4bit, quant_type="nf4", blocksize=128),
    _p("bitsandbytes", bnb_4bit, quant_type="nf4", blocksize=256),
    _p("bitsandbytes", bnb_4bit, quant_type="fp4", blocksize=64),
    _p("bitsandbytes", bnb_4bit, quant_type="fp4", blocksize=64, double_quant=True),
    _p("bitsandbytes", bnb_4bit, quant_type="fp4", blocksize=128),
    _p("bitsandbytes", bnb_4bit, quant_type="fp4", blocksize=256),
    _p("hqq", hqq, True, nbits=4, group_size=64),
    _p("hqq", hqq, nbits=4, group_size=64, meta_dtype=torch.float32),
    _p("hqq", hqq, nbits=4, group_size=128),
    _p("hqq", hqq, nbits=3, group_size=64),
    _p("hqq", hqq, nbits=2, group_size=64),
    _p("torchao", torchao_intx, True, bits=4, group_size=64, symmetric=True),
    _p("torchao", torchao_intx, bits=4, group_size=64, symmetric=False),
    _p("torchao", torchao_intx, bits=3, group_size=64, symmetric=True),
    _p("torchao", torchao_intx, bits=3, group_size=64, symmetric=False),
    _p("torchao", torchao_intx, bits=8, group_size=64, symmetric=True),
    _p("torchao", torchao_intx, bits=8, group_size=64, symmetric=False),
    _p("optimum.quanto", quanto, True, qtype="qint4"),
    _p("optimum.quanto", quanto, qtype="qint4", scale_dtype=torch.bfloat16),
    _p("optimum.quanto", quanto, qtype="qint2"),
    _p("auto_round", autoround_rtn, True, bits=4, group_size=128),
    _p("auto_round", autoround_rtn, bits=4, group_size=64),
    _p("auto_round", autoround_rtn, bits=3, group_size=128),
    _p("auto_round", autoround_rtn, bits=2, group_size=128),
]

#: Each peer's 4-bit block/group-64 format as (label, library, quantize, dequantize or None) for the speed table.
CODECS: list[tuple[str, str, Callable[[torch.Tensor], Any], Callable[[Any], torch.Tensor] | None]] = [
    ("bnb NF4 b64", "bitsandbytes", lambda w: bnb_quantize(w, "nf4", 64), bnb_dequantize),
    ("bnb FP4 b64", "bitsandbytes", lambda w: bnb_quantize(w, "fp4", 64), bnb_dequantize),
    ("hqq 4b g64 fp16", "hqq", lambda w: hqq_quantize(w, 4, 64), hqq_dequantize),
    ("torchao int4 g64 sym", "torchao", lambda w: torchao_quantize(w, 4, 64, True), torchao_dequantize),
    ("quanto qint4 g64 fp32", "optimum.quanto", lambda w: quanto_quantize(w, "qint4", 64), quanto_dequantize),
    ("auto-round int4 g64 (returns ŵ)", "auto_round", lambda w: autoround_quantize(w, 4, 64), None),
]

_DISTRIBUTIONS = {"optimum.quanto": "optimum-quanto", "auto_round": "auto-round"}


def peer_status() -> dict[str, str | None]:
    """library → None when it imports, else the reason it does not (the rows for it are then skipped)."""
    status: dict[str, str | None] = {}
    for library in dict.fromkeys(p.library for p in PEERS):
        try:
            importlib.import_module(library)
            status[library] = None
        except Exception as exc:  # noqa: BLE001 - any import failure means "skip this peer"
            status[library] = f"{type(exc).__name__}: {exc}"
    return status


def peer_version(library: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(_DISTRIBUTIONS.get(library, library))
    except PackageNotFoundError:
        return "absent"
