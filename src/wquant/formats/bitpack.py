"""The one bit packer: unsigned integer fields of 1..32 bits, least significant bit first, no alignment.

Bit i of a packed stream is bit (i mod w) of value ⌊i/w⌋, and bit i sits in byte ⌊i/8⌋ at position i mod 8
(LSB first), so 4-bit codes put element 2j in the low nibble of byte j. A packed field is exactly
ceil(n·w/8) bytes: the invariant that makes `QuantizedTensor.bits()` checkable against real storage, and the
layout the quantized modules keep in memory. `pack_bits`/`unpack_bits` are torch (any device, any width);
`BitWriter`/`BitReader` concatenate fields of different widths into one stream (fixed or per-field widths)
for `QuantizedTensor.to_bytes` and the entropy coder's tables.
"""

from __future__ import annotations

import numpy as np
import torch

from wquant.errors import CorruptDataError, ParameterError

_WORD_WIDTHS = {8: torch.uint8, 16: torch.int16, 32: torch.int32}


def _check_width(width: int) -> None:
    if not isinstance(width, int) or isinstance(width, bool) or not 1 <= width <= 32:
        raise ParameterError(f"bit width must be an integer in [1, 32], got {width!r}")


def _as_int64(values: torch.Tensor | np.ndarray, width: int) -> torch.Tensor:
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "ui":
            raise ParameterError(f"only integer arrays can be bit-packed, got dtype {values.dtype}")
        values = torch.from_numpy(np.ascontiguousarray(values).astype(np.int64, copy=False))
    if values.is_floating_point() or values.is_complex() or values.dtype == torch.bool:
        raise ParameterError(f"only integer tensors can be bit-packed, got dtype {values.dtype}")
    flat = values.reshape(-1).to(torch.int64)
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= 2**width):
        raise ParameterError(f"values must lie in [0, 2^{width}) to be packed in {width} bits")
    return flat


def pack_bits(values: torch.Tensor | np.ndarray, width: int) -> torch.Tensor:
    """Unsigned integers < 2^width → ceil(n·width/8) uint8 (LSB first), on the values' device."""
    _check_width(width)
    flat = _as_int64(values, width)
    n = flat.numel()
    if width in _WORD_WIDTHS:  # whole little-endian bytes: the two's-complement word of the same bits, viewed
        signed = flat - ((flat >> (width - 1)) << width) if width > 8 else flat
        return signed.to(_WORD_WIDTHS[width]).contiguous().view(torch.uint8).clone()
    if width < 8:  # 8 values fill `width` bytes exactly; gather them in one int64 and split it
        groups = -(-n // 8)
        padded = torch.zeros(groups * 8, dtype=torch.int64, device=flat.device)
        padded[:n] = flat
        shifts = torch.arange(8, device=flat.device) * width
        acc = (padded.view(groups, 8) << shifts).sum(dim=1, keepdim=True)
        parts = (acc >> (torch.arange(width, device=flat.device) * 8)) & 0xFF
        return parts.to(torch.uint8).reshape(-1)[: -(-n * width // 8)].contiguous()
    bits = (flat.unsqueeze(1) >> torch.arange(width, device=flat.device)) & 1  # (n, width), LSB first
    return _bytes_from_bit_array(bits.reshape(-1))


def unpack_bits(
    data: torch.Tensor | np.ndarray | bytes, width: int, count: int, dtype: torch.dtype = torch.int64
) -> torch.Tensor:
    """The first `count` values of `width` bits from packed bytes (inverse of `pack_bits`), as `dtype`."""
    _check_width(width)
    buf = _as_bytes(data)
    needed = -(-count * width // 8)
    if buf.numel() < needed:
        raise CorruptDataError(f"packed data holds {buf.numel()} bytes, {needed} are needed for {count}×{width} bits")
    buf = buf[:needed]
    if width == 8:
        return buf.to(dtype)
    if width in (16, 32):
        if buf.storage_offset() % (width // 8):  # a view needs aligned storage
            buf = buf.clone()
        word = buf.contiguous().view(_WORD_WIDTHS[width]).to(torch.int64)
        return (word & (2**width - 1)).to(dtype)
    if width in (1, 2, 4):  # whole values per byte: shift lanes
        per_byte = 8 // width
        shifts = torch.arange(per_byte, device=buf.device, dtype=torch.uint8) * width
        lanes = (buf.unsqueeze(1) >> shifts) & (2**width - 1)
        return lanes.reshape(-1)[:count].to(dtype)
    if width < 8:
        groups = -(-count // 8)
        padded = torch.zeros(groups * width, dtype=torch.int64, device=buf.device)
        padded[:needed] = buf
        acc = (padded.view(groups, width) << (torch.arange(width, device=buf.device) * 8)).sum(dim=1, keepdim=True)
        values = (acc >> (torch.arange(8, device=buf.device) * width)) & (2**width - 1)
        return values.reshape(-1)[:count].to(dtype)
    bits = _bit_array(buf)[: count * width].view(count, width).to(torch.int64)
    return (bits << torch.arange(width, device=buf.device)).sum(dim=1).to(dtype)


def packed_bytes(count: int, width: int) -> int:
    """Bytes `pack_bits` uses for `count` values of `width` bits."""
    return -(-count * width // 8)


def _as_bytes(data: torch.Tensor | np.ndarray | bytes) -> torch.Tensor:
    if isinstance(data, bytes | bytearray | memoryview):
        return torch.frombuffer(bytearray(data), dtype=torch.uint8) if len(data) else torch.zeros(0, dtype=torch.uint8)
    if isinstance(data, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(data, dtype=np.uint8))
    if data.dtype != torch.uint8:
        raise ParameterError(f"packed data must be uint8, got {data.dtype}")
    return data.reshape(-1)


def _bit_array(buf: torch.Tensor) -> torch.Tensor:
    """uint8 bytes → one uint8 0/1 per bit, LSB first."""
    return ((buf.unsqueeze(1) >> torch.arange(8, device=buf.device, dtype=torch.uint8)) & 1).reshape(-1)


def _bytes_from_bit_array(bits: torch.Tensor) -> torch.Tensor:
    pad = -bits.numel() % 8
    if pad:
        bits = torch.cat([bits, bits.new_zeros(pad)])
    weights = 1 << torch.arange(8, device=bits.device, dtype=torch.int64)
    return (bits.view(-1, 8).to(torch.int64) * weights).sum(dim=1).to(torch.uint8)


class BitWriter:
    """Concatenates fields into one contiguous bit stream (LSB first), exactly as `pack_bits` lays out one."""

    def __init__(self) -> None:
        self._chunks: list[torch.Tensor] = []  # whole bytes
        self._pending = torch.zeros(0, dtype=torch.uint8)  # bits not yet forming a whole byte
        self.bits = 0

    def write(self, values: torch.Tensor | np.ndarray, width: int) -> None:
        """Append values of one width (packed straight into bytes while the stream is byte-aligned)."""
        _check_width(width)
        flat = _as_int64(values, width)
        if flat.numel() == 0:
            return
        self.bits += flat.numel() * width
        if self._pending.numel() == 0:
            packed = pack_bits(flat, width)
            whole = flat.numel() * width // 8
            self._chunks.append(packed[:whole])
            self._pending = _bit_array(packed[whole:])[: flat.numel() * width - 8 * whole]
            return
        bits = ((flat.unsqueeze(1) >> torch.arange(width)) & 1).to(torch.uint8).reshape(-1)
        self._push_bits(torch.cat([self._pending, bits]))

    def write_fields(self, values: np.ndarray, widths: np.ndarray) -> None:
        """Append values each with its own width (0..63 bits; a width-0 field writes nothing)."""
        values = np.asarray(values, dtype=np.uint64).reshape(-1)
        widths = np.asarray(widths, dtype=np.int64).reshape(-1)
        total = int(widths.sum())
        if total == 0:
            return
        field = np.repeat(np.arange(widths.size), widths)
        offset = np.arange(total) - np.repeat(np.cumsum(widths) - widths, widths)
        bits = (values[field] >> offset.astype(np.uint64)) & np.uint64(1)
        self.bits += total
        self._push_bits(torch.cat([self._pending, torch.from_numpy(bits.astype(np.uint8))]))

    def _push_bits(self, stream: torch.Tensor) -> None:
        whole = stream.numel() // 8
        self._chunks.append(_bytes_from_bit_array(stream[: 8 * whole]))
        self._pending = stream[8 * whole :]

    def getvalue(self) -> bytes:
        tail = [_bytes_from_bit_array(self._pending)] if self._pending.numel() else []
        return b"".join(chunk.numpy().tobytes() for chunk in self._chunks + tail)


class BitReader:
    """Reads fields back, in order, from a stream written by `BitWriter` (overruns mean damaged data)."""

    def __init__(self, data: bytes | torch.Tensor) -> None:
        self._data = _as_bytes(data)
        self._bits: torch.Tensor | None = None
        self.position = 0

    @property
    def size_bits(self) -> int:
        return 8 * self._data.numel()

    def read(self, width: int, count: int, dtype: type | torch.dtype = np.int64) -> np.ndarray:
        """`count` values of `width` bits (0..64; width 0 gives zeros), as a numpy array of `dtype`."""
        if not isinstance(width, int | np.integer) or not 0 <= width <= 64:
            raise CorruptDataError(f"stream asks for a field of {width} bits; fields are 0..64 bits wide")
        width = int(width)
        if width == 0 or count == 0:
            return np.zeros(count, dtype=dtype)
        end = self.position + width * count
        if end > self.size_bits:
            raise CorruptDataError(f"stream too short: field needs bits {self.position}..{end}, stream has "
                                   f"{self.size_bits}")  # fmt: skip
        if self.position % 8 == 0 and width <= 32:
            out = unpack_bits(self._data[self.position // 8 :], width, count).numpy()
        else:
            if self._bits is None:
                self._bits = _bit_array(self._data)
            chunk = self._bits[self.position : end].numpy().reshape(count, width).astype(np.uint64)
            out = (chunk << np.arange(width, dtype=np.uint64)).sum(axis=1, dtype=np.uint64)
        self.position = end
        return out.astype(dtype, copy=False)
