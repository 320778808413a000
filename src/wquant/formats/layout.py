"""Format primitives that quantizers are built from: fix a tensor's layout, choose group scales, encode, decode.

`quantize` is these steps in a row; an algorithm (GPTQ fixing a group's scale when it reaches it, a clip
search per group, HQQ moving zeros, learned codes) runs the same steps in its own order and assembles a
genuine `QuantizedTensor`, so bits, storage and `dequantize()` stay exact whatever decided the codes.

    layout = prepare_layout(w, "int4/block64:absmax:bf16")   # table, outliers, per-tensor factor: fixed
    x = layout.without_outliers(as_2d(w).float())
    scales = layout.choose_scales(x)                          # GroupScales, (scale rows, groups)
    codes = layout.encode(x, scales)
    q = layout.assemble(codes, scales)                        # == quantize(w, spec)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from wquant.errors import ScaleRangeError, TensorError
from wquant.formats.codebook import Codebook
from wquant.formats.fit import FIT_MULTIPLIERS, fit_block_scales
from wquant.formats.grids import UniformGrid
from wquant.formats.grouping import (
    as_2d,
    codebook_of,
    compute_dtype,
    decode_values,
    group_length,
    group_shape,
    nominal_codebook,
    view_2d,
)
from wquant.formats.quantized import QuantizedTensor
from wquant.formats.spec import FALLBACKS, PRESETS, FormatSpec, parse_spec, preset_name
from wquant.validation import NanPolicy, check_tensor


@dataclass(frozen=True, eq=False)
class GroupScales:
    """Stored scale (and offset) values and codes of a run of group columns, shape (scale rows, groups)."""

    scales: torch.Tensor  # float32, as the scale format stores them
    scale_codes: torch.Tensor  # int64
    offsets: torch.Tensor | None = None  # float32: added after scaling (minmax offset, zeropoint −level·scale)
    offset_codes: torch.Tensor | None = None  # int64
    tensor_scale: float | None = None  # the per-tensor factor the scale codes are relative to
    super_codes: torch.Tensor | None = None  # int64 (scale rows, super-blocks): two-level scale's super numbers
    super_offset_codes: torch.Tensor | None = None  # int64: the minmax offsets' super numbers (dmin)

    @property
    def groups(self) -> int:
        return int(self.scales.shape[1])

    def where(self, take: torch.Tensor, other: GroupScales) -> GroupScales:
        """Per group: `other`'s fields where `take` (scale rows, groups) is True, these elsewhere."""
        if self.tensor_scale != other.tensor_scale:
            raise ValueError("scales relative to different per-tensor factors cannot be mixed")
        if self.super_codes is not None:
            raise ValueError("two-level block scales depend on their super-block's number; choose them per "
                             "super-block (TensorLayout.choose_scales fits them), not per block")  # fmt: skip

        def pick(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
            return None if a is None or b is None else torch.where(take, b, a)

        return GroupScales(
            pick(self.scales, other.scales), pick(self.scale_codes, other.scale_codes),  # type: ignore[arg-type]
            pick(self.offsets, other.offsets), pick(self.offset_codes, other.offset_codes), self.tensor_scale,
        )  # fmt: skip

    @staticmethod
    def cat(parts: list[GroupScales]) -> GroupScales:
        """Group columns side by side (GPTQ fixes them one at a time)."""
        if len({p.tensor_scale for p in parts}) > 1:
            raise ValueError("scales relative to different per-tensor factors cannot be joined")

        def join(name: str) -> torch.Tensor | None:
            fields = [getattr(p, name) for p in parts]
            return None if fields[0] is None else torch.cat(fields, dim=1)

        return GroupScales(join("scales"), join("scale_codes"), join("offsets"), join("offset_codes"),  # type: ignore[arg-type]
                           parts[0].tensor_scale, join("super_codes"), join("super_offset_codes"))  # fmt: skip

    def columns(self, start: int, stop: int, per: int = 1) -> GroupScales:
        """Group columns start:stop (and, for two-level scales, their super-block columns start/per:stop/per)."""

        def part(t: torch.Tensor | None, a: int, b: int) -> torch.Tensor | None:
            return None if t is None else t[:, a:b]

        return GroupScales(
            part(self.scales, start, stop), part(self.scale_codes, start, stop),  # type: ignore[arg-type]
            part(self.offsets, start, stop), part(self.offset_codes, start, stop), self.tensor_scale,
            part(self.super_codes, start // per, stop // per), part(self.super_offset_codes, start // per, stop // per),
        )  # fmt: skip


@dataclass(frozen=True, eq=False)
class TensorLayout:
    """Everything fixed for one tensor before any group is scaled.

    spec (a budget spec comes back with its step resolved), shape and dtype; `book`, the codebook codes index
    (a fitted table for Lloyd–Max and uniform grids); `scale_book`, the nominal grid scales are chosen
    against; the per-tensor factor of narrow ExMy scale formats; the sparse outliers.
    """

    spec: FormatSpec
    shape: tuple[int, ...]
    dtype: torch.dtype
    book: Codebook
    scale_book: Codebook
    table: np.ndarray | None
    tensor_scale: float | None
    outlier_index: torch.Tensor  # int64, flat, ascending
    outlier_codes: np.ndarray  # int64 value-format codes

    @property
    def rows(self) -> int:
        return view_2d(self.shape)[0]

    @property
    def cols(self) -> int:
        return view_2d(self.shape)[1]

    @property
    def scale_rows(self) -> int:
        return group_shape(self.spec.scaling, self.shape)[0]

    @property
    def groups(self) -> int:
        return group_shape(self.spec.scaling, self.shape)[1]

    @property
    def group_len(self) -> int:
        return group_length(self.spec.scaling, self.shape)

    def group_cols(self, g: int) -> slice:
        return slice(g * self.group_len, min((g + 1) * self.group_len, self.cols))

    @property
    def unit_len(self) -> int:
        """Columns whose scales are chosen together: a super-block under two-level scaling, else a group."""
        sc = self.spec.scaling
        return int(sc.super_size) if sc.two_level else self.group_len  # type: ignore[arg-type]

    @property
    def units(self) -> int:
        return -(-self.cols // self.unit_len)

    @property
    def groups_per_unit(self) -> int:
        return self.spec.scaling.blocks_per_super

    def unit_cols(self, u: int) -> slice:
        return slice(u * self.unit_len, min((u + 1) * self.unit_len, self.cols))

    def unit_scales(self, scales: GroupScales, u: int) -> GroupScales:
        """The group columns of unit u (one super-block, or one group)."""
        per = self.groups_per_unit
        return scales.columns(u * per, (u + 1) * per, per)

    def outlier_mask(self) -> torch.Tensor | None:
        """(rows, cols) True where a value is stored exactly as an outlier; None without outliers."""
        if not self.outlier_index.numel():
            return None
        mask = torch.zeros(self.rows * self.cols, dtype=torch.bool)
        mask[self.outlier_index] = True
        return mask.view(self.rows, self.cols)

    def outlier_values(self, dtype: torch.dtype) -> torch.Tensor | None:
        """(rows, cols) stored outlier values, 0 elsewhere; None without outliers."""
        if not self.outlier_index.numel():
            return None
        assert self.spec.outliers is not None
        flat = torch.zeros(self.rows * self.cols, dtype=dtype)
        flat[self.outlier_index] = self.spec.outliers.value_format.decode(self.outlier_codes, None).to(dtype)
        return flat.view(self.rows, self.cols)

    def without_outliers(self, x: torch.Tensor) -> torch.Tensor:
        """Outlier positions read as 0 for scales and codes (their code is that of 0)."""
        mask = self.outlier_mask()
        return x if mask is None else x.masked_fill(mask, 0.0)

    def choose_scales(
        self, x: torch.Tensor, multiplier: float | torch.Tensor = 1.0, *, fit_factor: bool = False,
        importance: torch.Tensor | None = None, candidates: Sequence[float] = FIT_MULTIPLIERS,
    ) -> GroupScales:  # fmt: skip
        """Stored scales (and offsets) of the group columns `x` covers, by the spec's rule, times `multiplier`.

        x: (rows, k) values with outliers zeroed, starting on a group boundary (the whole tensor, or some of
        its group columns). multiplier: a clip factor, scalar or (scale rows, groups). Narrow ExMy scale
        formats store codes relative to one per-tensor factor: the layout's, or (fit_factor) one fitted to
        these scales, as `quantize` does for the whole tensor. Two-level scales (x covering whole
        super-blocks) are fitted per block (`formats.fit`: the rule's scale times each of `candidates`, each
        refitted by least squares weighted by `importance` (rows, k), or plain MSE), then stored as integers
        under their super-block's number.
        """
        sc = self.spec.scaling
        blocks, pad = sc.blocks(x)
        raw, mins = sc.raw_scales(blocks, self.scale_book, pad)
        raw = raw * multiplier
        mins = None if mins is None else mins * multiplier
        if sc.two_level:
            if pad or x.shape[1] % self.unit_len:
                raise ValueError(f"two-level scales are chosen for whole super-blocks of {self.unit_len} columns")
            weights = None if importance is None else sc.blocks(importance.to(blocks.dtype))[0]
            offsets = None if mins is None else mins - raw * self.scale_book.lo
            raw, offsets = fit_block_scales(blocks, self.book, raw, offsets, weights, candidates,
                                            signed=sc.scale_format.signed)  # fmt: skip
            scales, codes, super_codes = sc.quantize_two_level(raw)
            if offsets is None:
                return GroupScales(scales, codes, super_codes=super_codes)
            stored, offset_codes, super_offsets = sc.quantize_two_level_offsets(offsets)
            return GroupScales(scales, codes, stored, offset_codes, None, super_codes, super_offsets)
        factor = None if fit_factor else self.tensor_scale
        scales, codes, factor = sc.scale_format.quantize(raw, self.scale_book.absmax_target, factor=factor)
        offsets = offset_codes = None
        if mins is not None:
            offsets, offset_np = sc.store_offsets(mins, scales, self.scale_book)
            offset_codes = torch.as_tensor(offset_np).reshape(scales.shape)
        return GroupScales(scales, torch.as_tensor(codes).reshape(scales.shape), offsets, offset_codes, factor)

    def with_offsets(self, scales: GroupScales, mins: torch.Tensor) -> GroupScales:
        """`scales` with the offsets of group minima `mins` (stored as the spec's rule stores them)."""
        offsets, codes = self.spec.scaling.store_offsets(mins, scales.scales, self.scale_book)
        return replace(scales, offsets=offsets, offset_codes=torch.as_tensor(codes).reshape(scales.scales.shape))

    def encode(self, x: torch.Tensor, scales: GroupScales) -> torch.Tensor:
        """Codes (rows, k) of the group columns `x` covers, rounded to nearest on `scales`."""
        blocks, pad = self.spec.scaling.blocks(x)
        codes = self.book.encode_blocks(blocks, scales.scales, scales.offsets)
        rows, k = x.shape
        return codes.reshape(blocks.shape[0], -1)[:, : blocks.shape[1] * blocks.shape[2] - pad].reshape(rows, k)

    def decode(self, codes: torch.Tensor, scales: GroupScales, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Values (rows, k) of codes on `scales`, outliers not restored (see `restore_outliers`)."""
        return decode_values(codes, self.book, scales.scales, scales.offsets, self.spec.scaling, dtype)

    def restore_outliers(self, values: torch.Tensor) -> torch.Tensor:
        """The full (rows, cols) `values` with the stored outliers written back."""
        mask = self.outlier_mask()
        if mask is None:
            return values
        return torch.where(mask, self.outlier_values(values.dtype), values)  # type: ignore[arg-type]

    def round(self, x: torch.Tensor, scales: GroupScales) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes, reconstructed values) of the whole (rows, cols) tensor; outliers come back exact."""
        codes = self.encode(self.without_outliers(x), scales)
        return codes, self.restore_outliers(self.decode(codes, scales, x.dtype))

    def per_element(self, values: torch.Tensor) -> torch.Tensor:
        """(scale rows, groups) → (rows, cols): the value of each element's group."""
        out = values.repeat_interleave(self.group_len, dim=1)[:, : self.cols]
        return out.expand(self.rows, self.cols)

    def group_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of a (rows, cols) tensor over each group → (scale rows, groups); ragged blocks pad with zeros."""
        gran = self.spec.scaling.granularity
        if gran == "tensor":
            return x.sum().reshape(1, 1)
        if gran == "channel":
            return x.sum(dim=1, keepdim=True)
        pad = self.groups * self.group_len - self.cols
        return F.pad(x, (0, pad)).reshape(self.rows, self.groups, self.group_len).sum(dim=-1)

    def assemble(self, codes: torch.Tensor, scales: GroupScales) -> QuantizedTensor:
        """The stored tensor from (rows, cols) codes and every group's scales (entropy-coded if the spec says)."""
        if scales.groups != self.groups:
            raise ValueError(f"scales cover {scales.groups} group columns, the tensor has {self.groups}")
        return QuantizedTensor.pack(
            self.spec, self.shape, self.dtype, codes.reshape(-1).to(self.book.code_dtype()),
            scales.scale_codes.numpy(), None if scales.offset_codes is None else scales.offset_codes.numpy(),
            scales.tensor_scale, self.table, self.outlier_index.numpy(), self.outlier_codes,
            super_codes=None if scales.super_codes is None else scales.super_codes.numpy(),
            super_offset_codes=None if scales.super_offset_codes is None else scales.super_offset_codes.numpy(),
        )  # fmt: skip


def prepare_layout(
    x: torch.Tensor,
    spec: FormatSpec | str,
    *,
    weights: torch.Tensor | None = None,
    nan_policy: NanPolicy = "raise",
    name: str = "tensor",
) -> TensorLayout:
    """Fix what the whole tensor decides: a budget's step, the outliers, a fitted table, the per-tensor factor.

    `weights` (same shape, ≥ 0) weight the squared error a fitted table minimises. A budget spec
    (`uniform@3.5/...+coded`) is resolved first: the step whose plain rounding meets the budget.
    """
    spec = parse_spec(spec)
    x = check_tensor(x, name, nan_policy=nan_policy)
    check_whole_super_blocks(spec, tuple(x.shape), name)
    if isinstance(spec.element, UniformGrid) and spec.element.target_bits is not None:
        from wquant.formats.budget import quantize_to_budget

        spec = quantize_to_budget(x, spec, weights=weights, name=name).spec
    work = as_2d(x.detach()).to(compute_dtype(x.dtype))
    w2d = None
    if weights is not None:
        weights = check_tensor(weights, f"{name} weights")
        if weights.shape != x.shape or bool((weights < 0).any()):
            raise TensorError(f"{name} weights must have shape {tuple(x.shape)} and be >= 0")
        w2d = as_2d(weights.detach()).to(work.dtype)

    outlier_index = torch.zeros(0, dtype=torch.int64)
    outlier_codes = np.zeros(0, dtype=np.int64)
    if spec.outliers is not None and (k := spec.outliers.count(work.numel())) > 0:
        flat = work.reshape(-1)
        outlier_index = torch.topk(flat.abs(), k, sorted=False).indices.sort().values
        _, outlier_codes, _ = spec.outliers.value_format.quantize(flat[outlier_index], 1.0)
        work = work.clone()
        work.view(-1)[outlier_index] = 0.0

    nominal = nominal_codebook(spec)
    layout = TensorLayout(spec, tuple(x.shape), x.dtype, nominal, nominal, None, None, outlier_index, outlier_codes)
    check_scale_range(layout, work, name)
    sc = spec.scaling
    if sc.scale_format.tensor_scale_bits or spec.element.data_dependent:
        scales = layout.choose_scales(work, fit_factor=True)
        layout = replace(layout, tensor_scale=scales.tensor_scale)
        if spec.element.data_dependent:  # scales from the nominal range; the table adapts to the scaled data
            table = _fit_table(layout, work, w2d, scales)
            layout = replace(layout, table=table, book=codebook_of(spec, table))
    return layout


#: A stored scale this far (either way) from the scale asked for means the scale format ran out of range.
SCALE_RANGE_RATIO = 4.0
#: ... which matters when such a group is at least this large relative to the tensor's largest.
SCALE_RANGE_RELEVANCE = 1e-3


def check_scale_range(layout: TensorLayout, x: torch.Tensor, name: str) -> None:
    """Refuse a tensor whose magnitude the scale format cannot store (fp16 scales of weights near 1e-9 round to
    0, so every value would decode to 0; near 1e30 they saturate and clip everything): a silent wrong answer
    otherwise. Groups far below the tensor's largest (a dead row) may lose their scale; they hardly matter."""
    sc = layout.spec.scaling
    blocks, pad = sc.blocks(x)
    raw, _ = sc.raw_scales(blocks, layout.scale_book, pad)
    raw = raw.abs().to(torch.float64)
    if not bool((raw > 0).any()):
        return
    stored = layout.choose_scales(x, fit_factor=True).scales.abs().to(torch.float64)
    ratio = stored / raw.clamp(min=torch.finfo(torch.float64).tiny)
    bad = (raw > 0) & ((ratio < 1 / SCALE_RANGE_RATIO) | (ratio > SCALE_RANGE_RATIO) | ~torch.isfinite(ratio))
    peak = float(raw.max())
    if bool(bad.any()) and float(raw[bad].max()) >= SCALE_RANGE_RELEVANCE * peak:
        fmt = sc.scale_format.name
        worst = float(raw[bad].max())
        raise ScaleRangeError(
            f"{name}: {int(bad.sum())} of {raw.numel()} group scales (up to {worst:.3g}) are out of the range of "
            f"{fmt} scales and would store as {float(stored[bad].max()):.3g}, wrecking those groups; use a wider "
            "scale format (bf16 or fp32 cover 1e-38..3e38) or rescale the tensor"
        )


def check_whole_super_blocks(spec: FormatSpec, shape: tuple[int, ...], name: str) -> None:
    """Two-level formats need rows of whole super-blocks (as GGUF does); refuse others with the fallback to use."""
    sc = spec.scaling
    cols = view_2d(shape)[1]
    if not sc.two_level or cols % int(sc.super_size) == 0:  # type: ignore[arg-type]
        return
    preset = preset_name(spec)
    fallback = FALLBACKS.get(preset or "")
    hint = f"use {fallback} ({PRESETS[fallback]}) for it, as llama.cpp does" if fallback else (
        "use a single-level format for it")  # fmt: skip
    raise TensorError(
        f"{name}: rows of {cols} values are not a multiple of the {sc.super_size}-value super-block of "
        f"{preset or spec.to_string()}; {hint} (e.g. an override for this module)"
    )


def _fit_table(layout: TensorLayout, work: torch.Tensor, w2d: torch.Tensor | None, scales: GroupScales) -> np.ndarray:
    """A data-dependent grid's levels, fitted to the tensor's values in grid units (weighted by `w2d`)."""
    safe = torch.where(scales.scales == 0, torch.ones_like(scales.scales), scales.scales)
    shift = 0.0 if scales.offsets is None else layout.per_element(scales.offsets)
    normalized = (work - shift) / layout.per_element(safe).to(work.dtype)
    weights = None if w2d is None else w2d.reshape(-1).double().numpy()
    return layout.spec.element.fit(normalized.reshape(-1).double().numpy(), weights)  # type: ignore[union-attr]


def reconstruct(layout: TensorLayout, x: torch.Tensor, scales: GroupScales) -> torch.Tensor:
    """Round-trip values of `x` (outliers zeroed) on `scales`, without outliers restored."""
    return layout.decode(layout.encode(x, scales), scales, x.dtype)
