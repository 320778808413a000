"""wquant's GGUF-exact formats and their GGUF block layouts: the stored codes and scales, rearranged, never re-rounded.

Each GGUF type is a wquant preset (`wquant.formats.spec.PRESETS`) whose fields are exactly a GGUF block's:
packing a `QuantizedTensor` into blocks only moves bits (and re-biases integer codes), so a file written from
it dequantizes, in llama.cpp or `gguf.quants.dequantize`, to exactly wquant's `dequantize()`. Layouts are those
of ggml's block structs (gguf-py's `quants.py` reads them the same way); they are written here from those
layouts with numpy, one vectorised pass per type.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from wquant.errors import SpecError
from wquant.formats import FormatSpec, QuantizedTensor, parse_spec
from wquant.formats.grouping import nominal_codebook, view_2d
from wquant.formats.spec import FALLBACKS, PRESETS

#: E2M1 value → its GGUF MXFP4 nibble (ggml's kvalues_mxfp4: 0..7 positive magnitudes, 8..15 negative).
_E2M1_MAGNITUDES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)


@dataclass(frozen=True)
class GGUFType:
    """One GGUF tensor type that a wquant preset stores exactly."""

    name: str  # ggml's name, e.g. "Q4_K"
    preset: str  # the wquant preset, e.g. "q4_k"
    block: int  # values per GGUF block (a super-block for k-quants)
    type_size: int  # bytes per GGUF block
    pack: Callable[[QuantizedTensor], np.ndarray]  # → (rows, row bytes) uint8

    @property
    def spec(self) -> FormatSpec:
        return parse_spec(self.preset)

    @property
    def bits_per_weight(self) -> float:
        return 8 * self.type_size / self.block


# ----------------------------------------------------------------------------------------------- field access


def _blocks(q: QuantizedTensor, block: int) -> np.ndarray:
    """Element codes as (GGUF blocks, block) int64, rows in order."""
    return q.codes.cpu().numpy().astype(np.int64).reshape(-1, block)


def _per_block(codes: np.ndarray | None, n: int) -> np.ndarray:
    assert codes is not None
    return np.asarray(codes, dtype=np.int64).reshape(n, -1)


def _u16(codes: np.ndarray | None, n: int) -> np.ndarray:
    """16-bit codes (fp16 bit patterns) as (n, 2) little-endian bytes."""
    return _per_block(codes, n).astype("<u2").view(np.uint8).reshape(n, 2)


def _nibbles_halves(q: np.ndarray) -> np.ndarray:
    """(n, 2m) 4-bit values → (n, m) bytes: value j in the low nibble of byte j, value j+m in the high one."""
    m = q.shape[1] // 2
    return ((q[:, :m] & 15) | ((q[:, m:] & 15) << 4)).astype(np.uint8)


def _crumbs(q: np.ndarray) -> np.ndarray:
    """(n, 256) 2-bit values → (n, 64) bytes: value 128c + 32s + j at bits 2s of byte 32c + j."""
    parts = (q.reshape(-1, 2, 4, 32) & 3) << (2 * np.arange(4)).reshape(1, 1, 4, 1)
    return parts.sum(axis=2).astype(np.uint8).reshape(-1, 64)


def _bitplane(bits: np.ndarray, width: int) -> np.ndarray:
    """(n, 8·width) single bits → (n, width) bytes: value s·width + j at bit s of byte j."""
    planes = (bits.reshape(-1, 8, width) & 1) << np.arange(8).reshape(1, 8, 1)
    return planes.sum(axis=1).astype(np.uint8)


def _cat(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate([p.astype(np.uint8) for p in parts], axis=1)


def _rows(q: QuantizedTensor, blocks: np.ndarray) -> np.ndarray:
    return blocks.reshape(view_2d(q.shape)[0], -1)


# ------------------------------------------------------------------------------------------------ per type


def _q4_0(q: QuantizedTensor) -> np.ndarray:  # also IQ4_NL: [d fp16][16 B nibbles]
    codes = _blocks(q, 32)
    return _rows(q, _cat(_u16(q.scale_codes, len(codes)), _nibbles_halves(codes)))


def _q4_1(q: QuantizedTensor) -> np.ndarray:  # [d][m][16 B nibbles]
    codes = _blocks(q, 32)
    n = len(codes)
    return _rows(q, _cat(_u16(q.scale_codes, n), _u16(q.offset_codes, n), _nibbles_halves(codes)))


def _q5_high(codes: np.ndarray) -> np.ndarray:
    return np.packbits((codes >> 4).astype(np.uint8), axis=1, bitorder="little")  # uint32: bit j = value j's 5th


def _q5_0(q: QuantizedTensor) -> np.ndarray:  # [d][qh 4 B][16 B low nibbles]
    codes = _blocks(q, 32)
    return _rows(q, _cat(_u16(q.scale_codes, len(codes)), _q5_high(codes), _nibbles_halves(codes)))


def _q5_1(q: QuantizedTensor) -> np.ndarray:  # [d][m][qh][qs]
    codes = _blocks(q, 32)
    n = len(codes)
    return _rows(q, _cat(_u16(q.scale_codes, n), _u16(q.offset_codes, n), _q5_high(codes), _nibbles_halves(codes)))


def _q8_0(q: QuantizedTensor) -> np.ndarray:  # [d][32 int8]; wquant int8 codes are level + 127
    codes = _blocks(q, 32)
    return _rows(q, _cat(_u16(q.scale_codes, len(codes)), (codes - 127) & 0xFF))


def _mxfp4(q: QuantizedTensor) -> np.ndarray:  # [e8m0][16 B nibbles of kvalues_mxfp4 indices]
    levels = nominal_codebook(q.spec).levels
    magnitude = np.searchsorted(np.array(_E2M1_MAGNITUDES), np.abs(levels))
    nibble = np.where(levels < 0, 8 + magnitude, magnitude)
    codes = nibble[_blocks(q, 32)]
    return _rows(q, _cat(_per_block(q.scale_codes, len(codes)), _nibbles_halves(codes)))


def _tq2_0(q: QuantizedTensor) -> np.ndarray:  # [64 B 2-bit codes (q + 1)][d]
    codes = _blocks(q, 256)
    return _rows(q, _cat(_crumbs(codes), _u16(q.scale_codes, len(codes))))


def _q2_k(q: QuantizedTensor) -> np.ndarray:  # [16 B scale | min << 4][64 B 2-bit codes][d][dmin]
    codes = _blocks(q, 256)
    n = len(codes)
    scales = _per_block(q.scale_codes, n) | (_per_block(q.offset_codes, n) << 4)
    return _rows(q, _cat(scales, _crumbs(codes), _u16(q.super_codes, n), _u16(q.super_offset_codes, n)))


def _six_bit_16(codes: np.ndarray) -> np.ndarray:
    """16 six-bit scale codes → Q3_K's 12 bytes: low nibbles (i, i+8) in byte i, top crumbs in bytes 8..11."""
    low = codes & 15
    high = codes >> 4
    lows = low[:, :8] | (low[:, 8:] << 4)
    highs = sum(high[:, 4 * t : 4 * t + 4] << (2 * t) for t in range(4))
    return _cat(lows, highs)


def _q3_k(q: QuantizedTensor) -> np.ndarray:  # [hmask 32][qs 64][scales 12][d]; codes are level + 4
    codes = _blocks(q, 256)
    n = len(codes)
    scales = _six_bit_16(_per_block(q.scale_codes, n))  # i6 codes are value + 32, as Q3_K stores them
    return _rows(q, _cat(_bitplane(codes >> 2, 32), _crumbs(codes & 3), scales, _u16(q.super_codes, n)))


def _scale_min_k4(scales: np.ndarray, mins: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins → Q4_K/Q5_K's 12 bytes (the first four whole, the last four split)."""
    first = scales[:, :4] | ((scales[:, 4:] >> 4) << 6)
    second = mins[:, :4] | ((mins[:, 4:] >> 4) << 6)
    third = (scales[:, 4:] & 15) | ((mins[:, 4:] & 15) << 4)
    return _cat(first, second, third)


def _nibbles_k(codes: np.ndarray) -> np.ndarray:
    """(n, 256) → (n, 128): value 64c + 32h + j in nibble h of byte 32c + j."""
    parts = codes.reshape(-1, 4, 2, 32) & 15
    return (parts[:, :, 0] | (parts[:, :, 1] << 4)).reshape(-1, 128).astype(np.uint8)


def _q4_k(q: QuantizedTensor) -> np.ndarray:  # [d][dmin][12 B scales+mins][128 B nibbles]
    codes = _blocks(q, 256)
    n = len(codes)
    sm = _scale_min_k4(_per_block(q.scale_codes, n), _per_block(q.offset_codes, n))
    return _rows(q, _cat(_u16(q.super_codes, n), _u16(q.super_offset_codes, n), sm, _nibbles_k(codes)))


def _q5_k(q: QuantizedTensor) -> np.ndarray:  # [d][dmin][12 B][qh 32][qs 128]
    codes = _blocks(q, 256)
    n = len(codes)
    sm = _scale_min_k4(_per_block(q.scale_codes, n), _per_block(q.offset_codes, n))
    return _rows(q, _cat(_u16(q.super_codes, n), _u16(q.super_offset_codes, n), sm, _bitplane(codes >> 4, 32),
                         _nibbles_k(codes)))  # fmt: skip


def _q6_k(q: QuantizedTensor) -> np.ndarray:  # [ql 128][qh 64][16 int8 scales][d]; codes are level + 32
    codes = _blocks(q, 256)
    n = len(codes)
    low = codes.reshape(-1, 2, 2, 64) & 15
    ql = (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(n, 128)
    qh = _crumbs(codes >> 4)
    scales = _per_block(q.scale_codes, n) ^ 0x80  # i8 codes are value + 128; GGUF stores two's complement
    return _rows(q, _cat(ql, qh, scales, _u16(q.super_codes, n)))


def _iq4_xs(q: QuantizedTensor) -> np.ndarray:  # [d][scales_h u16][scales_l 4 B][8 × 16 B nibbles]
    codes = _blocks(q, 256)
    n = len(codes)
    sub = _per_block(q.scale_codes, n)  # i6 codes are value + 32, as IQ4_XS stores them
    low = (sub & 15).reshape(n, 4, 2)
    scales_l = low[:, :, 0] | (low[:, :, 1] << 4)
    scales_h = ((sub >> 4) << (2 * np.arange(8))).sum(axis=1).astype("<u2").view(np.uint8).reshape(n, 2)
    qs = _nibbles_halves(codes.reshape(-1, 32)).reshape(n, 128)
    return _rows(q, _cat(_u16(q.super_codes, n), scales_h, scales_l, qs))


GGUF_TYPES: dict[str, GGUFType] = {
    t.name: t
    for t in (
        GGUFType("Q4_0", "q4_0", 32, 18, _q4_0),
        GGUFType("Q4_1", "q4_1", 32, 20, _q4_1),
        GGUFType("Q5_0", "q5_0", 32, 22, _q5_0),
        GGUFType("Q5_1", "q5_1", 32, 24, _q5_1),
        GGUFType("Q8_0", "q8_0", 32, 34, _q8_0),
        GGUFType("IQ4_NL", "iq4_nl", 32, 18, _q4_0),
        GGUFType("MXFP4", "mxfp4", 32, 17, _mxfp4),
        GGUFType("TQ2_0", "tq2_0", 256, 66, _tq2_0),
        GGUFType("Q2_K", "q2_k", 256, 84, _q2_k),
        GGUFType("Q3_K", "q3_k", 256, 110, _q3_k),
        GGUFType("Q4_K", "q4_k", 256, 144, _q4_k),
        GGUFType("Q5_K", "q5_k", 256, 176, _q5_k),
        GGUFType("Q6_K", "q6_k", 256, 210, _q6_k),
        GGUFType("IQ4_XS", "iq4_xs", 256, 136, _iq4_xs),
    )
}
_SCALE_ONLY = ("absmax", "signmax", "span", "rms")


def _storage_key(spec: FormatSpec) -> tuple[object, ...] | None:
    """What a spec stores, whatever chose it: grid levels, block, scale storage, offsets, super-block; None if
    it stores something GGUF has no place for (outliers, entropy coding, zero points, per-tensor factors)."""
    sc = spec.scaling
    if spec.outliers is not None or spec.coding is not None or spec.element.data_dependent:
        return None
    if sc.granularity != "block" or sc.rule == "zeropoint" or sc.scale_format.tensor_scale_bits:
        return None
    kind = "scale" if sc.rule in _SCALE_ONLY else sc.rule
    scale = "e8m0" if sc.scale_format.name.startswith("e8m0") else sc.scale_format.name
    levels = tuple(float(v) for v in nominal_codebook(replace(spec, scaling=replace(sc, search=False))).levels)
    return levels, sc.block_size, kind, scale, sc.super_size, sc.super_format.name if sc.two_level else None


_BY_KEY: dict[tuple[object, ...], GGUFType] = {}


def gguf_type_of(spec: FormatSpec | str) -> GGUFType | None:
    """The GGUF type that stores `spec`'s fields exactly (the rule that chose the scales does not matter)."""
    if not _BY_KEY:
        for t in GGUF_TYPES.values():
            key = _storage_key(t.spec)
            assert key is not None
            _BY_KEY[key] = t
    key = _storage_key(parse_spec(spec))
    return None if key is None else _BY_KEY.get(key)


def exportable_specs() -> str:
    return ", ".join(f"{t.preset} ({t.spec.to_string()})" for t in GGUF_TYPES.values())


def pack_gguf(q: QuantizedTensor, name: str = "tensor") -> tuple[GGUFType, np.ndarray]:
    """(GGUF type, (rows, row bytes) uint8 blocks) of a stored tensor; refuses formats GGUF cannot hold."""
    gtype = gguf_type_of(q.spec)
    if gtype is None:
        raise SpecError(f"{name}: {q.spec.to_string()} has no GGUF type; GGUF stores these wquant formats "
                        f"exactly: {exportable_specs()}")  # fmt: skip
    cols = view_2d(q.shape)[1]
    if len(q.shape) > 2 or cols % gtype.block:
        fallback = FALLBACKS.get(gtype.preset)
        hint = f"quantize it as {fallback} ({PRESETS[fallback]})" if fallback and cols % 32 == 0 else (
            "leave it unquantized (F16/F32)")  # fmt: skip
        raise SpecError(f"{name}: rows of {cols} values do not hold whole {gtype.block}-value {gtype.name} blocks; "
                        f"{hint}, as llama.cpp does")  # fmt: skip
    data = gtype.pack(q)
    assert data.shape == (view_2d(q.shape)[0], cols // gtype.block * gtype.type_size), data.shape
    return gtype, data
