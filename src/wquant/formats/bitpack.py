"""Bit packing of unsigned integer fields, LSB first, with exact round trip for widths 1..32.

Fields are concatenated without byte alignment, so a packed tensor is exactly ceil(bits/8) bytes: the
invariant that makes `QuantizedTensor.bits()` checkable against real storage.
"""

from __future__ import annotations

import numpy as np

from wquant.errors import CorruptDataError, ParameterError

_FAST_WIDTHS = (1, 2, 4, 8)


def _check_width(width: int) -> None:
    if not isinstance(width, int) or not 1 <= width <= 32:
        raise ParameterError(f"bit width must be an integer in [1, 32], got {width!r}")


def _as_unsigned(values: np.ndarray, width: int) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind not in "ui":
        raise ParameterError(f"only integer arrays can be bit-packed, got dtype {values.dtype}")
    values = values.reshape(-1)
    if values.size and (int(values.min()) < 0 or int(values.max()) >= 2**width):
        raise ParameterError(f"values must lie in [0, 2^{width}) to be packed in {width} bits")
    return values


def to_bit_array(values: np.ndarray, width: int) -> np.ndarray:
    """Each value as `width` bits (uint8 0/1), LSB first, flattened."""
    _check_width(width)
    values = _as_unsigned(values, width)
    if values.size == 0:
        return np.zeros(0, dtype=np.uint8)
    container = np.uint8 if width <= 8 else (np.uint16 if width <= 16 else np.uint32)
    as_bytes = values.astype(np.dtype(container).newbyteorder("<")).view(np.uint8)
    bits = np.unpackbits(as_bytes.reshape(values.size, -1), axis=1, bitorder="little")
    return np.ascontiguousarray(bits[:, :width]).reshape(-1)


def from_bit_array(bits: np.ndarray, width: int, count: int) -> np.ndarray:
    """Inverse of `to_bit_array`: `count` values of `width` bits (returned as uint32 or int64)."""
    _check_width(width)
    if bits.size < width * count:
        raise CorruptDataError(f"bit stream holds {bits.size} bits, {width * count} are needed")
    matrix = bits[: width * count].reshape(count, width)
    padded = np.zeros((count, 32), dtype=np.uint8)
    padded[:, :width] = matrix
    return np.packbits(padded, axis=1, bitorder="little").view("<u4").reshape(-1).astype(np.int64)


def pack_bits(values: np.ndarray, width: int) -> np.ndarray:
    """Pack unsigned integers < 2^width into ceil(n·width/8) bytes (LSB first)."""
    _check_width(width)
    values = _as_unsigned(values, width)
    if width == 8:
        return values.astype(np.uint8)
    if width in _FAST_WIDTHS:
        per_byte = 8 // width
        padded = np.zeros(-(-values.size // per_byte) * per_byte, dtype=np.uint8)
        padded[: values.size] = values
        lanes = padded.reshape(-1, per_byte)
        out = lanes[:, 0].copy()
        for lane in range(1, per_byte):  # at most 8 lanes: a loop over bit positions, not elements
            out |= lanes[:, lane] << np.uint8(lane * width)
        return out
    return np.packbits(to_bit_array(values, width), bitorder="little")


def unpack_bits(data: np.ndarray | bytes, width: int, count: int, dtype: type = np.int64) -> np.ndarray:
    """Inverse of `pack_bits`: the first `count` values (int64, or a narrower `dtype` that holds `width` bits)."""
    _check_width(width)
    buf = np.frombuffer(data, dtype=np.uint8) if isinstance(data, bytes | bytearray | memoryview) else data
    needed = -(-count * width // 8)
    if buf.size < needed:
        raise CorruptDataError(f"packed data holds {buf.size} bytes, {needed} are needed for {count}×{width} bits")
    if width == 8:
        return buf[:count].astype(dtype)
    if width in _FAST_WIDTHS:
        per_byte = 8 // width
        mask = np.uint8(2**width - 1)
        lanes = np.empty((needed, per_byte), dtype=np.uint8)
        for lane in range(per_byte):  # at most 8 lanes: a loop over bit positions, not elements
            np.bitwise_and(buf[:needed] >> np.uint8(lane * width), mask, out=lanes[:, lane])
        return lanes.reshape(-1)[:count].astype(dtype, copy=False)
    return from_bit_array(np.unpackbits(buf[:needed], bitorder="little"), width, count).astype(dtype, copy=False)


class BitWriter:
    """Concatenates fields of different widths into one contiguous bit stream."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._pending = np.zeros(0, dtype=np.uint8)  # bits not yet forming a whole byte
        self.bits = 0

    def write(self, values: np.ndarray, width: int) -> None:
        values = np.asarray(values).reshape(-1)
        if values.size == 0:
            return
        self.bits += values.size * width
        if self._pending.size == 0:
            packed = pack_bits(values, width)
            whole = values.size * width // 8
            self._chunks.append(packed[:whole])
            rest = values.size * width - 8 * whole
            self._pending = np.unpackbits(packed[whole:], bitorder="little")[:rest] if rest else self._pending[:0]
            return
        stream = np.concatenate([self._pending, to_bit_array(values, width)])
        whole = stream.size // 8
        self._chunks.append(np.packbits(stream[: 8 * whole], bitorder="little"))
        self._pending = stream[8 * whole :]

    def getvalue(self) -> bytes:
        tail = [np.packbits(self._pending, bitorder="little")] if self._pending.size else []
        return b"".join(chunk.tobytes() for chunk in self._chunks + tail)


class BitReader:
    """Reads fields back from a stream written by `BitWriter`."""

    def __init__(self, data: bytes) -> None:
        self._data = np.frombuffer(data, dtype=np.uint8)
        self._bits: np.ndarray | None = None
        self.position = 0

    def read(self, width: int, count: int, dtype: type = np.int64) -> np.ndarray:
        if count == 0:
            return np.zeros(0, dtype=dtype)
        end = self.position + width * count
        if end > 8 * self._data.size:
            raise CorruptDataError(
                f"stream too short: field needs bits {self.position}..{end}, stream has {8 * self._data.size}"
            )
        if self.position % 8 == 0 and width in _FAST_WIDTHS:
            out = unpack_bits(self._data[self.position // 8 :], width, count, dtype)
        elif self.position % 8 == 0 and width in (16, 32):  # whole little-endian words: a view, no bit array
            start = self.position // 8
            out = self._data[start : start + count * width // 8].view(f"<u{width // 8}").astype(dtype)
        else:
            if self._bits is None:
                self._bits = np.unpackbits(self._data, bitorder="little")
            out = from_bit_array(self._bits[self.position : end], width, count).astype(dtype, copy=False)
        self.position = end
        return out
