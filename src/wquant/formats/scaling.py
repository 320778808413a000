"""Scaling: how a tensor is cut into groups, how each group's scale is chosen, and how scales are stored.

A 2-D view (out, in) is used for every tensor: dim 0 is the output channel, the rest is flattened into the
input dimension. Blocks of B run along the input dimension; a ragged last block is padded for computation
only (its padding is never stored and never changes a block statistic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch

from wquant.errors import CorruptDataError, SpecError
from wquant.formats.codebook import Codebook
from wquant.formats.floats import FloatFormat, float_format
from wquant.validation import check_int_range

ScaleRule = Literal["absmax", "signmax", "span", "rms", "minmax", "zeropoint"]
Granularity = Literal["tensor", "channel", "block"]
SCALE_RULES = ("absmax", "signmax", "span", "rms", "minmax", "zeropoint")
#: Rules that store a second field per group: a real-valued offset (minmax) or an integer zero point.
OFFSET_RULES = ("minmax", "zeropoint")
_IEEE_SCALES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_E8M0_RULES = {"e8m0": "floor", "e8m0-floor": "floor", "e8m0-rceil": "rceil"}
E8M0_BIAS = 127


@lru_cache(maxsize=64)
def _exmy_book(name: str) -> Codebook:
    return Codebook.from_levels(float_format(name).values())


@dataclass(frozen=True)
class ScaleFormat:
    """How one scale is stored: fp32/fp16/bf16 (round to nearest), E8M0 (OCP floor or RCEIL rule) or ExMy.

    Narrow ExMy scales (at most 4 exponent bits, e.g. e4m3 for NVFP4) keep one fp32 per-tensor factor so
    their small range covers the tensor's scales; those 32 bits are counted. Wider ones need none.
    """

    name: str = "bf16"

    def __post_init__(self) -> None:
        if self.name in _IEEE_SCALES or self.name in _E8M0_RULES:
            return
        float_format(self.name)  # raises SpecError listing the accepted forms

    @property
    def bits(self) -> int:
        if self.name in _IEEE_SCALES:
            return torch.finfo(_IEEE_SCALES[self.name]).bits
        if self.name in _E8M0_RULES:
            return 8
        return float_format(self.name).bits

    @property
    def signed(self) -> bool:
        if self.name in _E8M0_RULES:
            return False
        return self.name in _IEEE_SCALES or float_format(self.name).signed

    @property
    def tensor_scale_bits(self) -> int:
        return 32 if self._needs_tensor_factor else 0

    @property
    def _needs_tensor_factor(self) -> bool:
        fmt = self._exmy
        return fmt is not None and fmt.exponent_bits <= 4

    @property
    def _exmy(self) -> FloatFormat | None:
        return None if self.name in _IEEE_SCALES or self.name in _E8M0_RULES else float_format(self.name)

    def quantize(
        self, raw: torch.Tensor, grid_max: float, *, factor: float | None = None
    ) -> tuple[torch.Tensor, np.ndarray, float | None]:
        """Round raw fp32 scales to this format: (scale values, stored codes, per-tensor factor or None).

        grid_max is the element grid's absmax target; the OCP floor rule needs its exponent. A narrow ExMy
        format's per-tensor factor is fitted to these scales unless `factor` fixes it (scales chosen a few
        groups at a time must share the factor chosen once for the whole tensor).
        """
        raw = raw.to(torch.float32)
        if self.name in _IEEE_SCALES:
            dtype = _IEEE_SCALES[self.name]
            finfo = torch.finfo(dtype)
            stored = raw.clamp(-finfo.max, finfo.max).to(dtype)
            int_view = {32: torch.int32, 16: torch.int16}[finfo.bits]
            codes = stored.view(int_view).numpy().astype(np.int64) & (2**finfo.bits - 1)
            return stored.to(torch.float32), codes, None
        if self.name in _E8M0_RULES:
            safe = raw.clamp(min=2.0**-E8M0_BIAS)
            if _E8M0_RULES[self.name] == "floor":
                exponent = torch.floor(torch.log2(safe * grid_max)) - math.floor(math.log2(grid_max))
            else:
                exponent = torch.ceil(torch.log2(safe))
            exponent = exponent.clamp(-E8M0_BIAS, E8M0_BIAS)
            codes = (exponent + E8M0_BIAS).to(torch.int64).numpy()
            return torch.exp2(exponent), codes, None
        fmt = self._exmy
        assert fmt is not None
        if factor is None or not self._needs_tensor_factor:
            peak = float(raw.abs().max())
            factor = float(np.float32(peak / fmt.max_value)) if peak > 0 and self._needs_tensor_factor else 1.0
        book = self._book
        codes_t = book.encode((raw / factor).clamp(book.lo, book.hi))
        values = book.decode(codes_t) * factor
        return values, codes_t.to(torch.int64).numpy(), factor if self._needs_tensor_factor else None

    @property
    def _book(self) -> Codebook:
        fmt = self._exmy
        assert fmt is not None
        return _exmy_book(self.name)

    def decode(self, codes: np.ndarray, factor: float | None) -> torch.Tensor:
        """Scale values from stored codes (inverse of `quantize`); codes no encoder makes are refused."""
        values = self._decode(np.asarray(codes, dtype=np.int64), factor)
        if not bool(torch.isfinite(values).all()):
            raise CorruptDataError(f"stored {self.name} values include NaN/Inf codes; the stream is damaged")
        return values

    def _decode(self, codes: np.ndarray, factor: float | None) -> torch.Tensor:
        if self.name in _IEEE_SCALES:
            dtype = _IEEE_SCALES[self.name]
            bits = torch.finfo(dtype).bits
            signed = np.where(codes >= 2 ** (bits - 1), codes - 2**bits, codes)
            int_view = {32: torch.int32, 16: torch.int16}[bits]
            return torch.as_tensor(signed).to(int_view).view(dtype).to(torch.float32)
        if self.name in _E8M0_RULES:
            if codes.size and int(codes.max()) > 2 * E8M0_BIAS:  # 0xFF is E8M0's NaN
                raise CorruptDataError("stored e8m0 scale is the NaN code 0xFF; the stream is damaged")
            return torch.exp2(torch.as_tensor(codes, dtype=torch.float32) - E8M0_BIAS)
        fmt = self._exmy
        assert fmt is not None
        table = fmt.values()
        if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= table.size):
            raise CorruptDataError(f"stored {self.name} code out of range (the format has {table.size} values)")
        return torch.as_tensor(table[codes], dtype=torch.float32) * (1.0 if factor is None else factor)


@dataclass(frozen=True)
class Scaling:
    """Granularity (tensor / channel / block of `block_size`), scale rule, scale storage, optional search."""

    granularity: Granularity = "block"
    block_size: int | None = 64
    rule: ScaleRule = "absmax"
    scale_format: ScaleFormat = ScaleFormat("bf16")
    search: bool = False

    def __post_init__(self) -> None:
        if self.granularity not in ("tensor", "channel", "block"):
            raise SpecError(f"granularity {self.granularity!r} unknown; valid: block<B>, channel, tensor")
        if self.granularity == "block":
            check_int_range(self.block_size, "block size", 1, 2**24, error=SpecError)
        elif self.block_size is not None:
            raise SpecError(f"{self.granularity} scaling takes no block size (got {self.block_size})")
        if self.rule not in SCALE_RULES:
            raise SpecError(f"scale rule {self.rule!r} unknown; valid: {', '.join(SCALE_RULES)}")
        if self.rule == "signmax" and not self.scale_format.signed:
            raise SpecError(f"signmax gives negative scales; {self.scale_format.name} is unsigned, use bf16/fp16/fp32")
        if self.rule == "minmax" and self.scale_format.name not in _IEEE_SCALES:
            raise SpecError("minmax stores a zero offset beside the scale; use an fp32, fp16 or bf16 scale format")

    @property
    def token(self) -> str:
        gran = f"block{self.block_size}" if self.granularity == "block" else self.granularity
        return f"{gran}:{self.rule}:{self.scale_format.name}"

    @property
    def has_offsets(self) -> bool:
        return self.rule in OFFSET_RULES

    def offset_bits(self, book: Codebook) -> int:
        """Width of the second field: a scale-format number (minmax) or an element code (zeropoint)."""
        return book.code_bits if self.rule == "zeropoint" else self.scale_format.bits

    def store_offsets(
        self, mins: torch.Tensor, scales: torch.Tensor, book: Codebook
    ) -> tuple[torch.Tensor, np.ndarray]:
        """Offsets added after scaling, and their stored codes, from each group's minimum and stored scale.

        minmax stores min − scale·lo as a number. zeropoint stores the index z of the grid level that real 0
        maps to (the nearest level to lo − min/scale), so 0 stays exact and the offset is −level[z]·scale:
        the integer zero point of GPTQ/AWQ checkpoints, counted at the element code width.
        """
        if self.rule == "minmax":
            offsets, codes, _ = self.scale_format.quantize(mins - scales * book.lo, book.absmax_target)
            return offsets, codes
        safe = torch.where(scales == 0, torch.ones_like(scales), scales)
        zero_points = book.encode(book.lo - mins.to(safe.dtype) / safe)
        return -book.decode(zero_points, scales.dtype) * scales, zero_points.to(torch.int64).numpy()

    def decode_offsets(self, codes: np.ndarray, scales: torch.Tensor, book: Codebook) -> torch.Tensor:
        """Offsets from stored codes (inverse of `store_offsets`), shaped like `scales`."""
        codes = np.asarray(codes, dtype=np.int64).reshape(-1)
        if self.rule == "minmax":
            return self.scale_format.decode(codes, None).reshape(scales.shape).to(scales.dtype)
        if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= book.size):
            raise CorruptDataError(f"stored zero point {int(codes.max())} out of range for {book.size} levels")
        return -book.decode(torch.as_tensor(codes), scales.dtype).reshape(scales.shape) * scales

    def blocks(self, x2d: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(rows, groups, group length) view of the 2-D tensor and the number of padded columns."""
        rows, cols = x2d.shape
        if self.granularity == "tensor":
            return x2d.reshape(1, 1, rows * cols), 0
        if self.granularity == "channel":
            return x2d.reshape(rows, 1, cols), 0
        size = int(self.block_size)  # type: ignore[arg-type]
        pad = (-cols) % size
        if pad:  # replicate the last column: max, min and signed extremes of the block are unchanged
            x2d = torch.cat([x2d, x2d[:, -1:].expand(rows, pad)], dim=1)
        return x2d.reshape(rows, -1, size), pad

    def raw_scales(self, blocks: torch.Tensor, book: Codebook, pad: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Unquantized fp32 scales per group (and the minimum per group for minmax and zeropoint).

        span maps [−absmax, absmax] onto the grid's whole width [lo, hi] (GPTQ's sym=True convention: on
        an asymmetric grid such as −8…7 the top value then clips by half a step). zeropoint widens the
        range to include 0, so the zero point is a level of the grid.
        """
        if self.rule in ("absmax", "signmax", "span"):
            lo_val, hi_val = blocks.amin(dim=-1), blocks.amax(dim=-1)  # 2× faster than aminmax on CPU
        if self.rule == "absmax":
            return torch.maximum(hi_val, -lo_val) / book.absmax_target, None
        if self.rule == "span":
            return torch.maximum(hi_val, -lo_val) * (2.0 / (book.hi - book.lo)), None
        if self.rule == "signmax":
            extreme = torch.where(hi_val >= -lo_val, hi_val, lo_val)  # ties go to the positive side
            endpoint = book.lo if -book.lo > book.hi else book.hi
            return extreme / endpoint, None
        if self.rule == "rms":
            # Squares of float32 values below ~1e-19 or above ~1e19 leave float32's range: such tensors are
            # brought near 1 by a power of two first (exact), so their RMS scales stay exact too.
            peak = float(blocks.abs().max()) if blocks.numel() else 0.0
            shift = 0 if peak == 0 or 2.0**-40 <= peak <= 2.0**40 else math.frexp(peak)[1]
            sq = (blocks if shift == 0 else blocks * 2.0**-shift).square()
            if pad:
                sq = sq.clone()
                sq[:, -1, blocks.shape[-1] - pad :] = 0
            counts = torch.full(blocks.shape[:2], float(blocks.shape[-1]), dtype=blocks.dtype)
            counts[:, -1] -= pad
            mean_sq = sq.sum(dim=-1) / counts
            return mean_sq.sqrt() * 2.0**shift / book.rms_target, None
        lo_val, hi_val = blocks.amin(dim=-1), blocks.amax(dim=-1)  # 2× faster than aminmax on CPU
        if self.rule == "zeropoint":
            lo_val, hi_val = lo_val.clamp(max=0), hi_val.clamp(min=0)
        return (hi_val - lo_val) / (book.hi - book.lo), lo_val
