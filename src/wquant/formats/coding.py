"""Real entropy coding of integer code streams, with every stored bit counted.

Peers report the *ideal* size −Σ log2 p(k) of a quantized tensor and leave out the probability table.
This module produces the actual bitstream instead: a self-describing container holding the frequency
tables, the ANS words written by `constriction` and a checksum, so the size a format reports is the size
a file would have on disk.

Container layout (all multi-byte integers are LEB128 varints unless noted, stored in this order):

    magic "WQAC" | version u8 | dtype code u8 | ndim u8 | dims... | base (zigzag) | alphabet size − 1
    | alphabet listed? u8 | group_size (0: one model)
    | table bit count | ANS word count | table bits (LSB first, formats.bitpack; zero-padded to a byte)
    | ANS words (u32 little endian) | crc32 of everything before it (u32 little endian)

Symbols are coded as ranks in the stream's alphabet (its sorted distinct values). A contiguous alphabet
costs nothing; otherwise the table section starts with it: a gap width (7 bits) and the gaps − 1 between
consecutive values. Then each group (one group for a whole-stream model) stores one `FrequencyModel` over
ranks: its lowest rank and its alphabet size − 1 (both `range_field_bits` = bit_length(alphabet size − 1)
wide), then, only when more than one symbol is possible, the precision P (5 bits), the count width w
(5 bits) and K counts of w bits each. Counts sum to 2^P, so the decoder rebuilds the encoder's model
exactly.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import constriction
import numpy as np

from wquant.errors import CorruptDataError, ParameterError, TensorError
from wquant.formats.bitpack import BitReader, BitWriter

__all__ = [
    "CodedSize",
    "FrequencyModel",
    "coded_bits",
    "coded_size",
    "decode_codes",
    "encode_codes",
    "MAX_ALPHABET_SPAN",
    "MAX_DISTINCT_SYMBOLS",
]

MAGIC = b"WQAC"
FORMAT_VERSION = 2  # 2: table section fields packed LSB first by formats.bitpack (1: MSB first)
MAX_ALPHABET_SPAN = 1 << 24
"""Largest hi − lo a standalone FrequencyModel accepts: it stores one count per value of its range."""
MAX_DISTINCT_SYMBOLS = 1 << 22
"""Most distinct values one stream may hold (each occurring symbol needs a count ≥ 1 of 2^24)."""
GAP_WIDTH_FIELD_BITS = 7

MAX_PRECISION_BITS = 24  # constriction's default ANS coder resolves probabilities to 2^-24
MIN_PRECISION_BITS = 1
DEFAULT_MAX_PRECISION_BITS = 16
PRECISION_FIELD_BITS = 5
COUNT_WIDTH_FIELD_BITS = 5
CHECKSUM_BITS = 32
ANS_WORD_BITS = 32

_DTYPES: tuple[np.dtype, ...] = tuple(
    np.dtype(name) for name in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
)
_GROUP_CHUNK_ENTRIES = 1 << 22  # bound on groups × alphabet entries held in memory at once


# --------------------------------------------------------------------------------------------------------
# Frequency model
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class FrequencyModel:
    """Integer symbol counts over the alphabet [lo, lo + K), summing to exactly 2^precision_bits.

    Integer counts (not floats) are what the container stores, so encoder and decoder derive
    bit-identical probabilities from the table alone.
    """

    lo: int
    precision_bits: int
    counts: np.ndarray

    def __post_init__(self) -> None:
        counts = np.asarray(self.counts, dtype=np.int64)
        if counts.ndim != 1 or counts.size == 0:
            raise ParameterError("FrequencyModel.counts must be a non-empty 1-D array of integer counts")
        if not MIN_PRECISION_BITS <= self.precision_bits <= MAX_PRECISION_BITS and counts.size > 1:
            raise ParameterError(
                f"precision_bits={self.precision_bits} is outside [{MIN_PRECISION_BITS}, "
                f"{MAX_PRECISION_BITS}]; pick a precision the ANS coder can represent"
            )
        if counts.size > 1 and (counts.min() < 0 or int(counts.sum()) != 1 << self.precision_bits):
            raise ParameterError(
                f"counts must be non-negative and sum to 2^{self.precision_bits}; got sum {int(counts.sum())}"
            )
        if counts[0] == 0 or counts[-1] == 0:
            raise ParameterError("counts must be trimmed: the first and last symbol of the alphabet must occur")
        counts.setflags(write=False)
        object.__setattr__(self, "counts", counts)

    @classmethod
    def from_codes(cls, codes: np.ndarray, *, max_precision_bits: int = DEFAULT_MAX_PRECISION_BITS) -> FrequencyModel:
        """Fit the quantized empirical model that `encode_codes` would store for these codes."""
        flat = _validated_codes(codes).reshape(-1)
        lo = int(flat.min())
        span = int(flat.max()) - lo
        _check_span(span)
        hist = np.bincount((flat - lo).astype(np.int64), minlength=span + 1)[None, :]
        quantized, precision = _quantize_counts(hist, max_precision_bits)
        return cls(lo=lo, precision_bits=int(precision[0]), counts=quantized[0])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FrequencyModel):
            return NotImplemented
        return (
            self.lo == other.lo
            and self.precision_bits == other.precision_bits
            and np.array_equal(self.counts, other.counts)
        )

    def __hash__(self) -> int:
        return hash((self.lo, self.precision_bits, self.counts.tobytes()))

    @property
    def alphabet_size(self) -> int:
        return int(self.counts.size)

    @property
    def hi(self) -> int:
        """Largest symbol of the alphabet (inclusive)."""
        return self.lo + self.alphabet_size - 1

    @property
    def count_width(self) -> int:
        """Bits per stored count: wide enough for the largest count, no wider."""
        return 0 if self.alphabet_size == 1 else int(self.counts.max()).bit_length()

    @property
    def probabilities(self) -> np.ndarray:
        """Exact model probabilities over [lo, hi] (zero for symbols that cannot occur)."""
        if self.alphabet_size == 1:
            return np.ones(1)
        return self.counts / float(1 << self.precision_bits)

    def table_bits(self, range_field_bits: int = 64) -> int:
        """Exact bits this model occupies in a container whose range fields are `range_field_bits` wide."""
        bits = 2 * range_field_bits
        if self.alphabet_size > 1:
            bits += PRECISION_FIELD_BITS + COUNT_WIDTH_FIELD_BITS + self.alphabet_size * self.count_width
        return bits

    def cross_entropy_bits(self, codes: np.ndarray) -> float:
        """Ideal payload −Σ log2 p(code) under this model (what an ideal coder would spend)."""
        flat = _validated_codes(codes).reshape(-1).astype(np.int64)
        if flat.min() < self.lo or flat.max() > self.hi:
            raise TensorError(f"codes fall outside the model alphabet [{self.lo}, {self.hi}]")
        probs = self.probabilities[flat - self.lo]
        if np.any(probs == 0):
            raise TensorError("codes contain a symbol the model gives probability 0; refit the model")
        return float(-np.log2(probs).sum())


def _check_span(span: int) -> None:
    if span >= MAX_ALPHABET_SPAN:
        raise ParameterError(
            f"code range max − min = {span} exceeds {MAX_ALPHABET_SPAN - 1}; the table stores one count per"
            " value of the range, so remap the codes to a dense range (np.unique(..., return_inverse=True))"
        )


def _precision_for(n_symbols: np.ndarray, n_distinct: np.ndarray, max_precision_bits: int) -> np.ndarray:
    """Table precision per group: about log2 of the group size (finer adds table bits, not payload gain),
    at least 2 × the distinct symbols so every occurring symbol keeps a count ≥ 1."""
    by_size = np.ceil(np.log2(np.maximum(n_symbols, 2))).astype(np.int64)
    by_alphabet = np.ceil(np.log2(np.maximum(n_distinct, 1))).astype(np.int64) + 1
    precision = np.maximum(np.minimum(by_size, max_precision_bits), by_alphabet)
    return np.clip(precision, MIN_PRECISION_BITS, MAX_PRECISION_BITS)


def _quantize_counts(hist: np.ndarray, max_precision_bits: int) -> tuple[np.ndarray, np.ndarray]:
    """Scale each row of a histogram to integers summing to 2^P, every occurring symbol ≥ 1.

    Rounding is fixed greedily by the marginal change of the code length Σ hist·log2(q), which keeps the
    payload within a hair of N·H(p̂). Vectorised over rows (groups); stable sorts make it deterministic.
    """
    hist = hist.astype(np.int64)
    occurs = hist > 0
    n = hist.sum(axis=1)
    precision = _precision_for(n, occurs.sum(axis=1), max_precision_bits)
    total = np.left_shift(np.int64(1), precision)
    target = hist * (total / n)[:, None]
    q = np.where(occurs, np.maximum(np.floor(target), 1), 0).astype(np.int64)
    for _ in range(64):
        diff = total - q.sum(axis=1)
        if not diff.any():
            return q, precision
        with np.errstate(divide="ignore", invalid="ignore"):
            gain = np.where(occurs, hist * np.log2((q + 1) / q), -np.inf)  # add one count
            loss = np.where(occurs & (q > 1), hist * np.log2(q / (q - 1)), np.inf)  # remove one count
        add_rank = np.argsort(np.argsort(-gain, axis=1, kind="stable"), axis=1, kind="stable")
        drop_rank = np.argsort(np.argsort(loss, axis=1, kind="stable"), axis=1, kind="stable")
        add = (diff[:, None] > 0) & (add_rank < diff[:, None]) & occurs
        drop = (diff[:, None] < 0) & (drop_rank < -diff[:, None]) & np.isfinite(loss)
        q = q + add - drop
    raise AssertionError("count quantization did not converge")  # unreachable: each pass shrinks |diff|


# --------------------------------------------------------------------------------------------------------
# Size breakdown
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CodedSize:
    """Where the bits of a container go; the fields add up to 8 × its byte length."""

    n_symbols: int
    header_bits: int
    table_bits: int
    padding_bits: int
    payload_bits: int
    checksum_bits: int

    @property
    def total_bits(self) -> int:
        return self.header_bits + self.table_bits + self.padding_bits + self.payload_bits + self.checksum_bits


# --------------------------------------------------------------------------------------------------------
# Byte and bit helpers
# --------------------------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for shift in range(0, 70, 7):
        if pos >= len(data):
            raise CorruptDataError("entropy-coded stream is truncated inside its header; re-read the source")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
    raise CorruptDataError("entropy-coded stream has a malformed header field")


def _zigzag(value: int) -> int:
    return value * 2 if value >= 0 else -value * 2 - 1


def _unzigzag(value: int) -> int:
    return value // 2 if value % 2 == 0 else -(value + 1) // 2


# --------------------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------------------


def _validated_codes(codes: np.ndarray) -> np.ndarray:
    array = np.asarray(codes)
    if array.size == 0:
        raise TensorError("codes are empty; entropy coding needs at least one symbol")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise TensorError("codes contain NaN or Inf; quantize to integers before entropy coding")
    if array.dtype.kind not in "iu":
        raise TensorError(f"codes have dtype {array.dtype}; pass an integer array (e.g. np.rint(x).astype(np.int64))")
    if array.dtype.kind == "u" and array.dtype.itemsize == 8 and int(array.max()) > np.iinfo(np.int64).max:
        raise TensorError("uint64 codes above 2^63 − 1 are not supported; remap them to a dense range")
    return array


def _group_bounds(n_symbols: int, group_size: int | None) -> tuple[int, int]:
    """(group length, number of groups) for a stream of n_symbols."""
    if group_size is None:
        return n_symbols, 1
    if isinstance(group_size, bool) or not isinstance(group_size, int | np.integer) or group_size < 1:
        raise ParameterError(f"group_size must be a positive integer or None, got {group_size!r}")
    size = int(group_size)
    return size, -(-n_symbols // size)


def _categorical(counts: np.ndarray, precision_bits: int) -> constriction.stream.model.Categorical:
    """constriction model over the *occurring* symbols only, so no mass is wasted on absent ones."""
    present = counts[counts > 0]
    return constriction.stream.model.Categorical(present / float(1 << precision_bits), perfect=False)


_HISTOGRAM_CHUNK = 1 << 16


def _histogram(values: np.ndarray, size: int) -> np.ndarray:
    """np.bincount in cache-sized slices: bincount widens its input to intp, which is 3× slower when the
    widened copy of a large array spills out of cache."""
    hist = np.zeros(size, dtype=np.int64)
    for start in range(0, values.size, _HISTOGRAM_CHUNK):
        hist += np.bincount(values[start : start + _HISTOGRAM_CHUNK], minlength=size)
    return hist


def _alphabet_ranks(flat: np.ndarray, base: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Map codes to ranks in their sorted set of distinct values (the stream's alphabet).

    Returns (int32 ranks, gaps − 1 between consecutive alphabet values or None when the alphabet is a
    contiguous run, stream histogram over ranks when it came for free). Narrow ranges use one bincount;
    wide, sparse ones fall back to sorting so no table spans unused values.
    """
    span = int(flat.max()) - base
    if span < max(1 << 16, 4 * flat.size):
        if np.can_cast(flat.dtype, np.int32):
            offsets = np.subtract(flat, np.int32(base), dtype=np.int32)
        else:
            offsets = (flat.astype(np.int64) - base).astype(np.int32)
        hist = _histogram(offsets, span + 1)
        present = hist > 0
        if present.all():
            return offsets, None, hist
        lookup = np.cumsum(present, dtype=np.int32) - 1
        values = np.flatnonzero(present)
        return lookup[offsets], np.diff(values) - 1, hist[present]
    values, inverse = np.unique(flat, return_inverse=True)
    gaps = np.diff(values.astype(np.uint64)).astype(np.int64) - 1  # uint64: values may span > 2^63
    return inverse.reshape(-1).astype(np.int32), gaps, None


def encode_codes(
    codes: np.ndarray, *, group_size: int | None = None, max_precision_bits: int = DEFAULT_MAX_PRECISION_BITS
) -> bytes:
    """Entropy-code an integer array into a self-describing, checksummed container.

    group_size=None fits one model to the whole stream; an integer fits one model per run of `group_size`
    consecutive symbols (flattened C order), trading table bits for a closer fit to local statistics.
    """
    array = _validated_codes(codes)
    if not MIN_PRECISION_BITS <= max_precision_bits <= MAX_PRECISION_BITS:
        raise ParameterError(
            f"max_precision_bits must lie in [{MIN_PRECISION_BITS}, {MAX_PRECISION_BITS}], got {max_precision_bits}"
        )
    dtype_code = _DTYPES.index(array.dtype.newbyteorder("="))
    flat = array.reshape(-1)
    n_symbols = flat.size
    base = int(flat.min())
    ranks, alphabet_gaps, stream_hist = _alphabet_ranks(flat, base)
    alphabet_size = int(stream_hist.size) if stream_hist is not None else int(alphabet_gaps.size) + 1
    if alphabet_size > MAX_DISTINCT_SYMBOLS:
        raise ParameterError(
            f"codes hold {alphabet_size} distinct values, more than {MAX_DISTINCT_SYMBOLS}; an entropy coder"
            " table of that size costs more than it saves, so quantize more coarsely"
        )
    span = alphabet_size - 1  # models live in rank space [0, span]
    range_bits = span.bit_length()
    length, n_groups = _group_bounds(n_symbols, group_size)
    offsets = ranks

    # The alphabet itself (only when it is not a contiguous run of integers): gap width, then gaps − 1.
    field_values: list[np.ndarray] = []
    field_widths: list[np.ndarray] = []
    if alphabet_gaps is not None:
        # gaps above 2^63 wrapped to negative int64 (their bit pattern is right): size the field unsigned
        gap_width = int(alphabet_gaps.view(np.uint64).max()).bit_length() if alphabet_gaps.size else 0
        field_values.append(np.concatenate([[gap_width], alphabet_gaps]).astype(np.int64))
        field_widths.append(
            np.concatenate([[GAP_WIDTH_FIELD_BITS], np.full(alphabet_gaps.size, gap_width)]).astype(np.int64)
        )

    # Models and symbol indices, a chunk of groups at a time so groups × alphabet stays bounded.
    groups_per_chunk = max(1, _GROUP_CHUNK_ENTRIES // (span + 1))
    models: list[tuple[np.ndarray, int, int, int]] = []  # (counts, precision, start, stop)
    indices = offsets if n_groups == 1 else np.empty(n_symbols, dtype=np.int32)
    for first in range(0, n_groups, groups_per_chunk):
        last = min(n_groups, first + groups_per_chunk)
        start, stop = first * length, min(n_symbols, last * length)
        chunk = offsets[start:stop]
        rows = last - first
        key = chunk if rows == 1 else np.arange(stop - start, dtype=np.int64) // length * (span + 1) + chunk
        if rows == n_groups == 1 and stream_hist is not None:
            hist = stream_hist[None, :]
        else:
            hist = np.bincount(key, minlength=rows * (span + 1)).reshape(rows, span + 1)
        quantized, precision = _quantize_counts(hist, max_precision_bits)
        occurs = quantized > 0
        lo = occurs.argmax(axis=1)
        hi = span - occurs[:, ::-1].argmax(axis=1)
        # One model: every rank of the stream's alphabet occurs, so the rank is already the symbol index.
        if n_groups > 1:
            rank = np.cumsum(occurs, axis=1, dtype=np.int32) - 1
            indices[start:stop] = rank.reshape(-1)[key]
        size = hi - lo + 1
        multi = size > 1
        count_width = np.where(multi, np.floor(np.log2(np.maximum(quantized.max(axis=1), 1))) + 1, 0)
        count_width = count_width.astype(np.int64)
        # Per group: [offset, size − 1, precision, width] then `size` counts (only for multi-symbol groups).
        head_values = np.stack([lo, size - 1, precision, count_width], axis=1)
        head_widths = np.stack(
            [
                np.full(rows, range_bits),
                np.full(rows, range_bits),
                np.where(multi, PRECISION_FIELD_BITS, 0),
                np.where(multi, COUNT_WIDTH_FIELD_BITS, 0),
            ],
            axis=1,
        )
        n_counts = np.where(multi, size, 0)
        per_group = 4 + n_counts
        group_start = np.cumsum(per_group) - per_group
        values = np.empty(int(per_group.sum()), dtype=np.int64)
        widths = np.empty_like(values)
        head_pos = (group_start[:, None] + np.arange(4)).reshape(-1)
        values[head_pos] = head_values.reshape(-1)
        widths[head_pos] = head_widths.reshape(-1)
        count_group = np.repeat(np.arange(rows), n_counts)
        within = np.arange(count_group.size) - np.repeat(np.cumsum(n_counts) - n_counts, n_counts)
        count_pos = group_start[count_group] + 4 + within
        values[count_pos] = quantized[count_group, lo[count_group] + within]
        widths[count_pos] = count_width[count_group]
        field_values.append(values)
        field_widths.append(widths)
        for row in range(rows):
            g_start = start + row * length
            models.append(
                (quantized[row, lo[row] : hi[row] + 1], int(precision[row]), g_start, min(n_symbols, g_start + length))
            )

    writer = BitWriter()
    writer.write_fields(np.concatenate(field_values), np.concatenate(field_widths))
    table, table_bits = writer.getvalue(), writer.bits

    coder = constriction.stream.stack.AnsCoder()
    for counts, precision_bits, g_start, g_stop in reversed(models):  # a stack: last group goes in first
        if counts.size > 1:
            coder.encode_reverse(indices[g_start:g_stop], _categorical(counts, precision_bits))
    words = coder.get_compressed().astype("<u4")

    header = bytearray(MAGIC)
    header += bytes([FORMAT_VERSION, dtype_code, array.ndim])
    for dim in array.shape:
        header += _varint(dim)
    header += _varint(_zigzag(base)) + _varint(span) + bytes([alphabet_gaps is not None])
    header += _varint(0 if group_size is None else length)
    header += _varint(table_bits) + _varint(words.size)
    body = bytes(header) + table + words.tobytes()
    return body + zlib.crc32(body).to_bytes(4, "little")


# --------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    dtype: np.dtype
    shape: tuple[int, ...]
    base: int
    span: int
    listed_alphabet: bool
    group_size: int
    table_bits: int
    n_words: int
    header_bytes: int


def _parse(data: bytes) -> _Header:
    """Check magic, length and checksum, then read the header; every failure is a CorruptDataError."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise TensorError(f"expected bytes from encode_codes, got {type(data).__name__}")
    data = bytes(data)
    if len(data) < len(MAGIC) + 3 + 4 or data[: len(MAGIC)] != MAGIC:
        raise CorruptDataError("data is not a wquant entropy-coded stream (bad magic or too short)")
    if zlib.crc32(data[:-4]) != int.from_bytes(data[-4:], "little"):
        raise CorruptDataError("entropy-coded stream fails its crc32 check: it is corrupted or truncated")
    version, dtype_code, ndim = data[4], data[5], data[6]
    if version != FORMAT_VERSION:
        raise CorruptDataError(
            f"entropy-coded stream has version {version}; this wquant reads version {FORMAT_VERSION}"
        )
    if dtype_code >= len(_DTYPES):
        raise CorruptDataError(f"entropy-coded stream names unknown dtype code {dtype_code}")
    pos = 7
    shape = []
    for _ in range(ndim):
        dim, pos = _read_varint(data, pos)
        shape.append(dim)
    zig_base, pos = _read_varint(data, pos)
    span, pos = _read_varint(data, pos)
    if pos >= len(data) or data[pos] > 1:
        raise CorruptDataError("entropy-coded stream has a malformed alphabet flag; it is corrupted")
    listed = bool(data[pos])
    group_size, pos = _read_varint(data, pos + 1)
    table_bits, pos = _read_varint(data, pos)
    n_words, pos = _read_varint(data, pos)
    base = _unzigzag(zig_base)
    header = _Header(_DTYPES[dtype_code], tuple(shape), base, span, listed, group_size, table_bits, n_words, pos)
    expected = pos + -(-table_bits // 8) + 4 * n_words + 4
    if expected != len(data) or math.prod(shape) == 0 or span >= MAX_DISTINCT_SYMBOLS:
        raise CorruptDataError("entropy-coded stream's header disagrees with its length; it is corrupted")
    return header


def coded_size(data: bytes) -> CodedSize:
    """Breakdown of a container's bits (header, tables, padding, ANS payload, checksum)."""
    header = _parse(data)
    table_bytes = -(-header.table_bits // 8)
    return CodedSize(
        n_symbols=math.prod(header.shape),
        header_bits=8 * header.header_bytes,
        table_bits=header.table_bits,
        padding_bits=8 * table_bytes - header.table_bits,
        payload_bits=ANS_WORD_BITS * header.n_words,
        checksum_bits=CHECKSUM_BITS,
    )


def decode_codes(data: bytes) -> np.ndarray:
    """Restore exactly the array given to `encode_codes` (values, dtype and shape)."""
    header = _parse(data)
    data = bytes(data)
    n_symbols = math.prod(header.shape)
    length, n_groups = _group_bounds(n_symbols, header.group_size or None)
    table_end = header.header_bytes + -(-header.table_bits // 8)
    table = np.frombuffer(data, dtype=np.uint8, count=table_end - header.header_bytes, offset=header.header_bytes)
    reader = BitReader(table.tobytes())
    words = np.frombuffer(data, dtype="<u4", count=header.n_words, offset=table_end).astype(np.uint32)
    range_bits = header.span.bit_length()
    out = np.empty(n_symbols, dtype=np.int32)  # ranks in the stream's alphabet
    try:
        alphabet = None
        if header.listed_alphabet:
            gap_width = int(reader.read(GAP_WIDTH_FIELD_BITS, 1)[0])
            if gap_width > 64:
                raise CorruptDataError("entropy-coded stream has an invalid alphabet gap width")
            gaps = reader.read(gap_width, header.span, np.uint64) + np.uint64(1)
            alphabet = np.concatenate([[np.uint64(0)], np.cumsum(gaps, dtype=np.uint64)])
        coder = constriction.stream.stack.AnsCoder(words)
        for group in range(n_groups):
            start, stop = group * length, min(n_symbols, (group + 1) * length)
            lo, size_minus_one = (int(v) for v in reader.read(range_bits, 2))
            if lo + size_minus_one > header.span:
                raise CorruptDataError("entropy-coded stream has a model outside the stream's range")
            if size_minus_one == 0:
                out[start:stop] = lo
                continue
            precision = int(reader.read(PRECISION_FIELD_BITS, 1)[0])
            width = int(reader.read(COUNT_WIDTH_FIELD_BITS, 1)[0])
            counts = reader.read(width, size_minus_one + 1)
            valid_precision = MIN_PRECISION_BITS <= precision <= MAX_PRECISION_BITS
            if not valid_precision or int(counts.sum()) != 1 << precision:
                raise CorruptDataError("entropy-coded stream has an invalid frequency table")
            decoded = coder.decode(_categorical(counts, precision), stop - start)
            if counts.all():  # dense alphabet: symbol = index + lo
                np.add(decoded, np.int32(lo), out=out[start:stop])
            else:
                out[start:stop] = (np.flatnonzero(counts).astype(np.int32) + lo)[decoded]
        if reader.position != header.table_bits or not coder.is_empty():
            raise CorruptDataError("entropy-coded stream has leftover data after decoding; it is corrupted")
    except CorruptDataError:
        raise
    except Exception as error:  # constriction signals bad words with its own exceptions
        raise CorruptDataError(f"entropy-coded stream failed to decode ({error}); it is corrupted") from error
    # Add the base in the target dtype: any intermediate wrap-around cancels since the true values fit it.
    restored = out.astype(header.dtype) if alphabet is None else alphabet.astype(header.dtype)[out]
    np.add(restored, np.array(header.base).astype(header.dtype), out=restored, casting="unsafe")
    return restored.reshape(header.shape)


def coded_bits(codes: np.ndarray, *, group_size: int | None = None) -> int:
    """Bits of the real container for these codes: 8 × len(encode_codes(codes))."""
    return 8 * len(encode_codes(codes, group_size=group_size))
