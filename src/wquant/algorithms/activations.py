"""Activation formats: a layer's input quantized on the fly, on the same element grids as weights.

Spec: `ELEMENT[/GRANULARITY[:RULE][:SCALE_FORMAT][:static|:dynamic]]`, e.g. `int8/token` (W8A8's per-token
dynamic int8), `int8/tensor:static` (one calibrated scale), `e4m3/token`, `mxfp8` (`e4m3/block32:absmax:e8m0`,
one power-of-two scale per 32 inputs of a token), `int4/channel:static`. A bare element means
`<element>/token:absmax:fp32:dynamic`.

* granularity: `token` (one scale per row of the (tokens, in) input), `tensor`, `block<B>` (B consecutive input
  channels of one token: the MX activation layout) or `channel` (one scale per input channel; static only — a
  dynamic per-channel scale could not be factored out of a GEMM).
* rule: `absmax` (symmetric, default), `minmax` (scale + zero offset, pair it with an unsigned grid) or
  `zeropoint` (integer zero point); static scales are absmax only.
* scale format: `fp32` (default), `fp16`, `bf16`, `e8m0` (MX), any ExMy, as for weights.
* `dynamic` scales are computed from each input as it arrives (the default; `token` and `block<B>` are always
  dynamic); `static` scales are calibrated once from the largest |x| each channel saw (`tensor` or `channel`)
  and stored with the model.

Arithmetic: the model computes y = Q_a(x)·Q_w(W)ᵀ in floating point ("fake quantization"). For int8 activations
per token (scale a_t) and int8 weights per output channel (scale w_o) that equals the integer GEMM
y[t, o] = a_t·w_o·Σ_k qx[t, k]·qw[o, k], whose int32 sum is exact while in·127² < 2³¹ (in < 133,000); grouped
weights (scale w_{o,g}) need one integer sum per group, y[t, o] = a_t·Σ_g w_{o,g}·Σ_{k∈g} qx·qw. The float result
differs from the integer one only by the fp32 rounding of the sums.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import torch

from wquant.errors import SpecError
from wquant.formats import Codebook, ElementGrid, ScaleFormat, Scaling, parse_element
from wquant.formats.grouping import decode_values

#: Named activation formats. MX presets are the OCP block formats applied to each token's input channels.
ACTIVATION_PRESETS: dict[str, str] = {
    "mxfp8": "e4m3/block32:absmax:e8m0",
    "mxfp8-e5m2": "e5m2/block32:absmax:e8m0",
    "mxfp6": "e2m3/block32:absmax:e8m0",
    "mxfp4": "e2m1/block32:absmax:e8m0",
    "mxint8": "int8/block32:absmax:e8m0",
    "fp8": "e4m3/token:absmax:fp32",
}
ACTIVATION_GRANULARITIES = ("token", "tensor", "channel", "block<B>")
_RULES = ("absmax", "minmax", "zeropoint")


@dataclass(frozen=True)
class ActivationSpec:
    """How a layer's input is quantized: element grid, granularity, scale rule and format, static or dynamic."""

    element: ElementGrid
    granularity: str = "token"  # token | tensor | channel | block
    block_size: int | None = None
    rule: str = "absmax"
    scale_format: ScaleFormat = ScaleFormat("fp32")
    static: bool = False

    def __post_init__(self) -> None:
        if getattr(self.element, "data_dependent", False) or not hasattr(self.element, "codebook"):
            raise SpecError(f"activation element {self.element.token} needs a table fitted to data; activations "
                            "change with every input: use a fixed grid (int8, e4m3, nf4, ...)")  # fmt: skip
        if self.granularity not in ("token", "tensor", "channel", "block"):
            raise SpecError(f"activation granularity {self.granularity!r} unknown; valid: "
                            f"{', '.join(ACTIVATION_GRANULARITIES)}")  # fmt: skip
        if (self.granularity == "block") != (self.block_size is not None):
            raise SpecError("activation blocks need a size (block32); other granularities take none")
        if self.rule not in _RULES:
            raise SpecError(f"activation scale rule {self.rule!r} unknown; valid: {', '.join(_RULES)}")
        if self.granularity in ("token", "block") and self.static:
            raise SpecError(f"{self.granularity} activation scales follow each input, so they are dynamic; a "
                            "static (calibrated) scale is per tensor or per channel")  # fmt: skip
        if self.granularity == "channel" and not self.static:
            raise SpecError("a per-channel activation scale must be static (calibrated): a dynamic one could not be "
                            "factored out of the matrix product; write channel:static")  # fmt: skip
        if self.static and self.rule != "absmax":
            raise SpecError(f"static activation scales are absmax; {self.rule} needs dynamic scales")
        Scaling(self.formats_granularity, self.block_size, self.rule, self.scale_format)  # the same checks as weights

    @property
    def formats_granularity(self) -> str:
        """The weight-format granularity of the (tokens, in) view: a token is a row ("channel" there)."""
        return {"token": "channel", "tensor": "tensor", "block": "block", "channel": "tensor"}[self.granularity]

    @property
    def scaling(self) -> Scaling:
        return Scaling(self.formats_granularity, self.block_size, self.rule, self.scale_format)  # type: ignore[arg-type]

    @property
    def book(self) -> Codebook:
        return _codebook(self.element, self.rule)

    @property
    def element_bits(self) -> int:
        """Bits of one activation code (8 for int8, e4m3)."""
        return self.book.code_bits

    def bits_per_element(self, in_features: int) -> float:
        """Code bits plus each element's share of the dynamic scales (and offsets) computed with it."""
        if self.static or self.granularity == "tensor":
            return float(self.element_bits)
        group = in_features if self.granularity == "token" else int(self.block_size)  # type: ignore[arg-type]
        sc = self.scaling
        extra = self.scale_format.bits + (sc.offset_bits(self.book) if sc.has_offsets else 0)
        return self.element_bits + extra / group

    def to_string(self) -> str:
        gran = f"block{self.block_size}" if self.granularity == "block" else self.granularity
        mode = "static" if self.static else "dynamic"
        return f"{self.element.token}/{gran}:{self.rule}:{self.scale_format.name}:{mode}"

    def __str__(self) -> str:
        return self.to_string()


@lru_cache(maxsize=64)
def _codebook(element: ElementGrid, rule: str) -> Codebook:
    """Grids are frozen: one codebook (and its look-up tables) per grid and rule, not one per forward pass."""
    return element.codebook(rule, None)  # type: ignore[attr-defined]


def parse_activations(text: str | ActivationSpec) -> ActivationSpec:
    """An `ActivationSpec` from its string form (or returned unchanged); see the module docstring."""
    if isinstance(text, ActivationSpec):
        return text
    if not isinstance(text, str) or not text.strip():
        raise SpecError(f"an activation spec must be a non-empty string, got {text!r}")
    raw = text.strip().lower()
    raw = ACTIVATION_PRESETS.get(raw, raw)
    element_tok, _, rest = raw.partition("/")
    element = parse_element(element_tok)
    if not rest:
        return ActivationSpec(element)
    parts = rest.split(":")
    gran, options = parts[0], parts[1:]
    block = None
    if m := re.fullmatch(r"block(\d+)", gran):
        gran, block = "block", int(m.group(1))
    elif gran not in ("token", "tensor", "channel"):
        raise SpecError(f"activation granularity {gran!r} unknown; valid: {', '.join(ACTIVATION_GRANULARITIES)}")
    rule, scale, static = "absmax", "fp32", gran == "channel"
    for opt in options:
        if opt in ("static", "dynamic"):
            static = opt == "static"
        elif opt in _RULES:
            rule = opt
        else:
            try:
                ScaleFormat(opt)
            except SpecError:
                raise SpecError(f"activation spec part {opt!r} is neither a rule ({', '.join(_RULES)}), a scale format "
                                "(fp32, fp16, bf16, e8m0, ExMy) nor static/dynamic") from None  # fmt: skip
            scale = opt
    return ActivationSpec(element, gran, block, rule, ScaleFormat(scale), static)


def static_scale(spec: ActivationSpec, abs_max: torch.Tensor) -> torch.Tensor:
    """Stored static scale(s) from each input channel's largest |x|: shape (1,) per tensor, (in,) per channel."""
    peak = abs_max.detach().float().reshape(-1)
    raw = peak.max().reshape(1) if spec.granularity == "tensor" else peak
    raw = raw / spec.book.absmax_target
    stored, _, _ = spec.scale_format.quantize(raw, spec.book.absmax_target)
    return stored.reshape(-1).to(torch.float32)


def fake_quantize(x: torch.Tensor, spec: ActivationSpec, scale: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., in) rounded onto the activation grid and back, in x's dtype (static specs take their stored `scale`)."""
    shape, dtype = x.shape, x.dtype
    x2 = x.detach().reshape(-1, shape[-1]).to(torch.float32)
    book = spec.book
    if spec.static:
        if scale is None:
            raise SpecError(f"{spec.to_string()} needs its calibrated scale; quantize with calibration data")
        s = scale.to(torch.float32).reshape(1, -1)
        safe = torch.where(s == 0, torch.ones_like(s), s)
        codes = book.encode((x2 / safe).clamp(book.lo, book.hi))
        values = book.decode(codes, torch.float32) * s
        return values.reshape(shape).to(dtype)
    sc = spec.scaling
    blocks, pad = sc.blocks(x2)
    raw, mins = sc.raw_scales(blocks, book, pad)
    scales, _, _ = sc.scale_format.quantize(raw, book.absmax_target)
    offsets = None if mins is None else sc.store_offsets(mins, scales, book)[0]
    codes = book.encode_blocks(blocks, scales, offsets)
    rows = x2.shape[0]
    codes = codes.reshape(blocks.shape[0], -1)[:, : blocks.shape[1] * blocks.shape[2] - pad].reshape(rows, -1)
    values = decode_values(codes, book, scales, offsets, sc, torch.float32)
    return values.reshape(shape).to(dtype)
