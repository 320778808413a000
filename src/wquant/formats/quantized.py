"""QuantizedTensor: exactly the stored fields of one quantized tensor, bit-packed, as torch tensors.

Each field is held the way it is stored: element codes packed at the code width (4-bit codes take half a
byte each) or the entropy-coded container, scale and offset codes packed at their format's width, outlier
indices in 32 bits and values in their format, the fitted table of a data-dependent grid as its float32 bytes. So
`bits()` is a sum over the fields, resident memory is `bits()/8` (plus at most a byte per field), the
fields are a state dict a module can register as buffers (`state()` / `from_state`) and move with `.to()`,
and `to_bytes()` writes them into one bit stream of exactly ceil(bits/8) bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from wquant.errors import CorruptDataError
from wquant.formats.bitpack import BitReader, BitWriter, pack_bits, packed_bytes, unpack_bits
from wquant.formats.codebook import Codebook
from wquant.formats.coding import decode_codes, encode_codes
from wquant.formats.grouping import codebook_of, decode_values, group_shape, view_2d
from wquant.formats.spec import OUTLIER_INDEX_BITS, FormatSpec, parse_spec

TABLE_COUNT_BITS = 32  # a fitted grid's table is stored with its entry count
MAX_TABLE_SIZE = 2**21 + 1
#: Names of the stored fields in `state()`; absent fields (no offsets, no table, ...) are left out.
FIELDS = ("codes", "scales", "offsets", "super_scales", "super_offsets", "tensor_scale", "table", "outlier_index",
          "outlier_values")  # fmt: skip


@dataclass(frozen=True, eq=False)
class QuantizedTensor:
    """The stored fields of one quantized tensor, plus the spec, shape and dtype needed to read them.

    Build one with `QuantizedTensor.pack` (from codes and scale codes), `from_state` or `from_bytes`.
    """

    spec: FormatSpec
    shape: tuple[int, ...]
    dtype: torch.dtype
    packed_codes: torch.Tensor  # uint8: fixed-width codes (row-major, LSB first) or the coded container
    packed_scales: torch.Tensor  # uint8: scale codes, (scale rows × groups), at the scale format's width
    packed_offsets: torch.Tensor | None  # uint8: zero offsets (minmax) or zero points (zeropoint)
    tensor_factor: torch.Tensor | None  # uint8 (4,): the float32 per-tensor factor of narrow ExMy scale formats
    fitted_table: torch.Tensor | None  # uint8: the float32 levels of a data-dependent grid (little-endian)
    packed_outlier_index: torch.Tensor  # uint8: flat outlier indices, ascending, 32 bits each
    packed_outlier_values: torch.Tensor  # uint8: outlier values in the outlier value format
    packed_super_scales: torch.Tensor | None = None  # uint8: two-level scaling's super-block scale codes
    packed_super_offsets: torch.Tensor | None = None  # uint8: ... and its minmax offsets' super-block codes

    # ------------------------------------------------------------------------------------------ building

    @staticmethod
    def pack(
        spec: FormatSpec, shape: tuple[int, ...], dtype: torch.dtype, codes: torch.Tensor,
        scale_codes: np.ndarray | torch.Tensor, offset_codes: np.ndarray | torch.Tensor | None = None,
        tensor_scale: float | None = None, table: np.ndarray | None = None,
        outlier_index: np.ndarray | None = None, outlier_codes: np.ndarray | None = None,
        payload: bytes | None = None, super_codes: np.ndarray | torch.Tensor | None = None,
        super_offset_codes: np.ndarray | torch.Tensor | None = None,
    ) -> QuantizedTensor:  # fmt: skip
        """Pack unpacked fields; codes are entropy-coded when the spec says so (or `payload` is that container)."""
        book = codebook_of(spec, table)
        sc = spec.scaling
        if spec.coding is not None:
            if payload is None:
                flat = torch.as_tensor(codes).reshape(-1).cpu().numpy()
                payload = encode_codes(flat, group_size=spec.coding.group_size)
            packed = torch.from_numpy(np.frombuffer(payload, dtype=np.uint8).copy())
        else:
            packed = pack_bits(torch.as_tensor(codes), book.code_bits)
        empty = np.zeros(0, dtype=np.int64)
        index = empty if outlier_index is None else outlier_index
        value_bits = spec.outliers.value_format.bits if spec.outliers is not None else 8
        return QuantizedTensor(
            spec, tuple(int(s) for s in shape), dtype, packed,
            pack_bits(_int_array(scale_codes), sc.scale_format.bits),
            None if offset_codes is None else pack_bits(_int_array(offset_codes), sc.offset_bits(book)),
            None if tensor_scale is None else _f32_bytes(np.array([tensor_scale])),
            None if table is None else _f32_bytes(table),
            pack_bits(_int_array(index), OUTLIER_INDEX_BITS),
            pack_bits(_int_array(empty if outlier_codes is None else outlier_codes), value_bits),
            None if super_codes is None else pack_bits(_int_array(super_codes), sc.super_format.bits),
            None if super_offset_codes is None else pack_bits(_int_array(super_offset_codes), sc.super_format.bits),
        )  # fmt: skip

    # ------------------------------------------------------------------------------------ unpacked views

    @property
    def numel(self) -> int:
        return math.prod(self.shape) if self.shape else 1

    @property
    def device(self) -> torch.device:
        return self.packed_codes.device

    @property
    def table(self) -> np.ndarray | None:
        return None if self.fitted_table is None else _f32_values(self.fitted_table)

    @property
    def tensor_scale(self) -> float | None:
        return None if self.tensor_factor is None else float(_f32_values(self.tensor_factor)[0])

    @property
    def payload(self) -> bytes | None:
        """The entropy-coded container of the codes (None for fixed-width codes)."""
        return None if self.spec.coding is None else self.packed_codes.cpu().numpy().tobytes()

    @property
    def n_groups(self) -> int:
        rows, groups = group_shape(self.spec.scaling, self.shape)
        return rows * groups

    @property
    def n_supers(self) -> int:
        """Super-blocks (two-level scaling), 0 otherwise."""
        sc = self.spec.scaling
        return self.n_groups // sc.blocks_per_super if sc.two_level else 0

    @property
    def n_outliers(self) -> int:
        return self.spec.outliers.count(self.numel) if self.spec.outliers is not None else 0

    def codebook(self) -> Codebook:
        return codebook_of(self.spec, self.table)

    @property
    def codes(self) -> torch.Tensor:
        """Flat element codes (indices into the codebook), unpacked: uint8, or int32 above 8 bits."""
        book = self.codebook()
        if self.spec.coding is not None:
            decoded = decode_codes(self.packed_codes.cpu().numpy().tobytes()).reshape(-1)
            return torch.from_numpy(decoded.astype(np.int64)).to(book.code_dtype()).to(self.device)
        return unpack_bits(self.packed_codes, book.code_bits, self.numel, book.code_dtype())

    @property
    def scale_codes(self) -> np.ndarray:
        return self._unpack_cpu(self.packed_scales, self.spec.scaling.scale_format.bits, self.n_groups)

    @property
    def offset_codes(self) -> np.ndarray | None:
        if self.packed_offsets is None:
            return None
        return self._unpack_cpu(self.packed_offsets, self.spec.scaling.offset_bits(self.codebook()), self.n_groups)

    @property
    def super_codes(self) -> np.ndarray | None:
        if self.packed_super_scales is None:
            return None
        return self._unpack_cpu(self.packed_super_scales, self.spec.scaling.super_format.bits, self.n_supers)

    @property
    def super_offset_codes(self) -> np.ndarray | None:
        if self.packed_super_offsets is None:
            return None
        return self._unpack_cpu(self.packed_super_offsets, self.spec.scaling.super_format.bits, self.n_supers)

    @property
    def outlier_index(self) -> np.ndarray:
        return self._unpack_cpu(self.packed_outlier_index, OUTLIER_INDEX_BITS, self.n_outliers)

    @property
    def outlier_codes(self) -> np.ndarray:
        if self.spec.outliers is None:
            return np.zeros(0, dtype=np.int64)
        return self._unpack_cpu(self.packed_outlier_values, self.spec.outliers.value_format.bits, self.n_outliers)

    @staticmethod
    def _unpack_cpu(packed: torch.Tensor, width: int, count: int) -> np.ndarray:
        return unpack_bits(packed.cpu(), width, count).numpy()

    def scales(self) -> torch.Tensor:
        """Decoded scale values, shape (scale rows, groups), float32 on the CPU."""
        rows, groups = group_shape(self.spec.scaling, self.shape)
        sc = self.spec.scaling
        if sc.two_level:
            return sc.decode_two_level(self.scale_codes, self.super_codes, (rows, groups))  # type: ignore[arg-type]
        return sc.scale_format.decode(self.scale_codes, self.tensor_scale).reshape(rows, groups)

    def offsets(self, scales: torch.Tensor | None = None) -> torch.Tensor | None:
        """Decoded offsets added after scaling (minmax / zeropoint), shaped like the scales; None otherwise."""
        codes = self.offset_codes
        if codes is None:
            return None
        scales = self.scales() if scales is None else scales
        sc = self.spec.scaling
        if sc.two_level:  # offsets are −dmin·m
            return -sc.decode_two_level(codes, self.super_offset_codes, tuple(scales.shape))  # type: ignore[arg-type]
        return sc.decode_offsets(codes, scales, self.codebook())

    # ---------------------------------------------------------------------------------------------- bits

    def bit_breakdown(self) -> dict[str, int]:
        """Exact stored bits per field (coded codes: the container's real length, plus byte alignment)."""
        sc = self.spec.scaling
        coded = self.spec.coding is not None
        book = self.codebook()
        out = {
            "codes": 8 * self.packed_codes.numel() if coded else self.numel * book.code_bits,
            "scales": self.n_groups * sc.scale_format.bits,
            "offsets": 0 if self.packed_offsets is None else self.n_groups * sc.offset_bits(book),
            "tensor_scale": sc.scale_format.tensor_scale_bits,
            "table": 0 if self.fitted_table is None else TABLE_COUNT_BITS + self.fitted_table.numel() * 8,
            "outliers": 0 if self.spec.outliers is None else self.n_outliers * self.spec.outliers.bits_each,
            "alignment": 0,
        }
        if sc.two_level:  # super-block numbers: d (and dmin for minmax) per super-block
            out["super_scales"] = self.n_supers * sc.super_fields() * sc.super_format.bits
        if coded:  # the coded container starts on a byte boundary
            out["alignment"] = -(sum(out.values()) - out["codes"]) % 8
        return out

    def bits(self) -> int:
        return sum(self.bit_breakdown().values())

    def bits_per_param(self) -> float:
        return self.bits() / self.numel

    # ------------------------------------------------------------------------------------------ decoding

    def dequantize(self) -> torch.Tensor:
        """The tensor as stored, in its original shape and dtype, on the device the fields are on."""
        rows, cols = view_2d(self.shape)
        return self._decode(self.codes.reshape(rows, cols), self.scales(), self.offsets(), None).reshape(self.shape)

    def dequantize_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """Only the given rows of the (out, in) view, shape (len(rows), in): an embedding looks up no more.

        Fixed-width codes of byte-aligned rows are unpacked row by row from the packed bytes; coded codes are
        decoded whole (a coded stream has no row index).
        """
        n_rows, cols = view_2d(self.shape)
        rows = rows.reshape(-1).to(torch.int64).cpu()  # scales are decoded on the CPU; codes stay on their device
        book = self.codebook()
        row_bits = cols * book.code_bits
        if self.spec.coding is None and row_bits % 8 == 0:
            row_bytes = self.packed_codes.view(n_rows, row_bits // 8).index_select(0, rows.to(self.device))
            codes = unpack_bits(row_bytes.reshape(-1), book.code_bits, rows.numel() * cols, book.code_dtype())
            codes = codes.view(-1, cols)
        else:
            codes = self.codes.view(n_rows, cols).index_select(0, rows.to(self.device))
        scales, offsets = self.scales(), self.offsets()
        if self.spec.scaling.granularity != "tensor":
            scales = scales.index_select(0, rows)
            offsets = None if offsets is None else offsets.index_select(0, rows)
        return self._decode(codes, scales, offsets, rows)

    def _decode(
        self, codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor | None, rows: torch.Tensor | None
    ) -> torch.Tensor:
        dtype = torch.float64 if self.dtype == torch.float64 else torch.float32
        device = self.device
        out = decode_values(
            codes, self.codebook(), scales.to(device), None if offsets is None else offsets.to(device),
            self.spec.scaling, dtype,
        )  # fmt: skip
        if self.n_outliers:
            assert self.spec.outliers is not None
            index = torch.as_tensor(self.outlier_index)
            values = self.spec.outliers.value_format.decode(self.outlier_codes, None).to(dtype)
            if rows is not None:  # keep the outliers of the selected rows, at their position among them
                cols = view_2d(self.shape)[1]
                where = torch.full((view_2d(self.shape)[0],), -1, dtype=torch.int64)
                where[rows] = torch.arange(rows.numel())
                pos = where[index // cols]
                keep = pos >= 0
                index, values = pos[keep] * cols + index[keep] % cols, values[keep]
            out.view(-1)[index.to(device)] = values.to(device)
        return out.to(self.dtype)

    # ------------------------------------------------------------------------------------- state and bytes

    def state(self) -> dict[str, torch.Tensor]:
        """The stored fields as tensors (the buffers a quantized module registers), absent fields left out."""
        fields = {
            "codes": self.packed_codes,
            "scales": self.packed_scales,
            "offsets": self.packed_offsets,
            "super_scales": self.packed_super_scales,
            "super_offsets": self.packed_super_offsets,
            "tensor_scale": self.tensor_factor,
            "table": self.fitted_table,
            "outlier_index": self.packed_outlier_index,
            "outlier_values": self.packed_outlier_values,
        }
        return {k: v for k, v in fields.items() if v is not None}

    def to(self, device: torch.device | str) -> QuantizedTensor:
        state = {k: v.to(device) for k, v in self.state().items()}
        return QuantizedTensor.from_state(state, self.spec, self.shape, self.dtype, check=False)

    @staticmethod
    def from_state(
        state: dict[str, torch.Tensor], spec: FormatSpec | str, shape: tuple[int, ...], dtype: torch.dtype,
        *, check: bool = True,
    ) -> QuantizedTensor:  # fmt: skip
        """A QuantizedTensor on the fields of `state()`; sizes and codes are checked (CorruptDataError)."""
        spec = parse_spec(spec)
        shape = tuple(int(s) for s in shape)
        sc = spec.scaling
        want = {"codes", "scales", "outlier_index", "outlier_values"}
        want |= {"offsets"} if sc.has_offsets else set()
        want |= {"super_scales"} if sc.two_level else set()
        want |= {"super_offsets"} if sc.two_level and sc.has_offsets else set()
        want |= {"tensor_scale"} if sc.scale_format.tensor_scale_bits else set()
        want |= {"table"} if spec.element.data_dependent else set()
        if set(state) != want:
            raise CorruptDataError(f"stored fields {sorted(state)} do not match format {spec.to_string()} "
                                   f"(it stores {sorted(want)})")  # fmt: skip
        get = state.get
        q = QuantizedTensor(spec, shape, dtype, state["codes"], state["scales"], get("offsets"), get("tensor_scale"),
                            get("table"), state["outlier_index"], state["outlier_values"], get("super_scales"),
                            get("super_offsets"))  # fmt: skip
        if check:
            q.check()
        return q

    def check(self) -> None:
        """Refuse fields no encoder writes: wrong sizes, codes past the table, NaN/Inf scale patterns."""
        spec, sc = self.spec, self.spec.scaling
        for name, tensor in self.state().items():
            if tensor.dtype != torch.uint8 or tensor.dim() != 1:
                raise CorruptDataError(f"stored field {name} is {tensor.dtype} {tuple(tensor.shape)}, expected "
                                       "a 1-D uint8 tensor of packed bits")  # fmt: skip
        if sc.two_level and view_2d(self.shape)[1] % int(sc.super_size):  # type: ignore[arg-type]
            raise CorruptDataError(f"shape {self.shape} does not hold whole {sc.super_size}-value super-blocks")
        if self.fitted_table is not None and self.fitted_table.numel() % 4:
            raise CorruptDataError(f"stored table has {self.fitted_table.numel()} bytes, not whole float32 values")
        table = self.table
        if spec.element.data_dependent:
            assert table is not None
            if not (2 <= table.size <= MAX_TABLE_SIZE):
                raise CorruptDataError(f"stored code table has {table.size} entries; the stream is damaged")
            if not (np.all(np.isfinite(table)) and np.all(np.diff(table) > 0)):
                raise CorruptDataError("stored code table is not a strictly increasing set of numbers")
        book = self.codebook()
        sizes = {
            "scales": packed_bytes(self.n_groups, sc.scale_format.bits),
            "offsets": packed_bytes(self.n_groups, sc.offset_bits(book)),
            "super_scales": packed_bytes(self.n_supers, sc.super_format.bits),
            "super_offsets": packed_bytes(self.n_supers, sc.super_format.bits),
            "tensor_scale": 4,
            "outlier_index": packed_bytes(self.n_outliers, OUTLIER_INDEX_BITS),
            "outlier_values": packed_bytes(self.n_outliers, spec.outliers.value_format.bits if spec.outliers else 8),
        }
        if spec.coding is None:
            sizes["codes"] = packed_bytes(self.numel, book.code_bits)
        for name, tensor in self.state().items():
            if name in sizes and tensor.numel() != sizes[name]:
                raise CorruptDataError(f"stored field {name} has {tensor.numel()} entries, the format needs "
                                       f"{sizes[name]}")  # fmt: skip
        if self.tensor_factor is not None and not (math.isfinite(self.tensor_scale) and self.tensor_scale > 0):  # type: ignore[arg-type]
            raise CorruptDataError(f"stored per-tensor scale factor {self.tensor_scale} is not a positive number")
        codes = self.codes
        if spec.coding is not None and codes.numel() != self.numel:
            raise CorruptDataError(f"coded stream holds {codes.numel()} codes, the tensor has {self.numel}")
        # fixed-width codes are unsigned and below 2^code_bits; only a wider width or the coder can overflow
        if codes.numel() and (spec.coding is not None or book.size < 2**book.code_bits):
            low, high = int(codes.min()), int(codes.max())
            if low < 0 or high >= book.size:
                raise CorruptDataError(f"element codes {low}..{high} out of range for {book.size} levels")
        index = self.outlier_index
        if index.size and (int(index.max()) >= self.numel or np.any(np.diff(index) <= 0)):
            raise CorruptDataError("outlier indices point outside the tensor or are not ascending")
        scales = self.scales()  # refuses scale codes no encoder writes (NaN/Inf patterns, out-of-table codes)
        self.offsets(scales)
        if spec.outliers is not None:
            spec.outliers.value_format.decode(self.outlier_codes, None)

    def to_bytes(self) -> bytes:
        """All stored fields as one bit stream; its length is exactly ceil(bits()/8) bytes."""
        sc = self.spec.scaling
        book = self.codebook()
        writer = BitWriter()
        table = self.table
        if table is not None:  # first: the code width of a fitted grid depends on its size
            writer.write(np.array([table.size]), TABLE_COUNT_BITS)
            writer.write(_f32_bits(table), 32)
        if self.spec.coding is None:
            writer.write(self.codes, book.code_bits)
        writer.write(self.scale_codes, sc.scale_format.bits)
        if self.packed_offsets is not None:
            writer.write(self.offset_codes, sc.offset_bits(book))  # type: ignore[arg-type]
        if self.packed_super_scales is not None:
            writer.write(self.super_codes, sc.super_format.bits)  # type: ignore[arg-type]
        if self.packed_super_offsets is not None:
            writer.write(self.super_offset_codes, sc.super_format.bits)  # type: ignore[arg-type]
        if self.tensor_factor is not None:
            writer.write(self.tensor_factor.cpu(), 8)
        if self.spec.outliers is not None:
            writer.write(self.outlier_codes, self.spec.outliers.value_format.bits)
            writer.write(self.outlier_index, OUTLIER_INDEX_BITS)
        if self.spec.coding is not None:
            writer.write(np.zeros(-writer.bits % 8, dtype=np.int64), 1)
            writer.write(self.packed_codes.cpu(), 8)
        data = writer.getvalue()
        if writer.bits != self.bits() or len(data) != -(-self.bits() // 8):
            raise AssertionError(f"bit accounting broken: counted {self.bits()}, wrote {writer.bits}")
        return data

    @staticmethod
    def from_bytes(data: bytes, spec: FormatSpec | str, shape: tuple[int, ...], dtype: torch.dtype) -> QuantizedTensor:
        """Read the fields written by `to_bytes`; the spec, shape and dtype come from the caller's manifest."""
        spec = parse_spec(spec)
        shape = tuple(int(s) for s in shape)
        numel = math.prod(shape) if shape else 1
        sc = spec.scaling
        rows, groups = group_shape(sc, shape)
        reader = BitReader(data)
        table = None
        if spec.element.data_dependent:
            size = int(reader.read(TABLE_COUNT_BITS, 1)[0])
            if not 2 <= size <= MAX_TABLE_SIZE:
                raise CorruptDataError(f"stored code table claims {size} entries; the stream is damaged")
            table = _f32_from_bits(reader.read(32, size))
            if not (np.all(np.isfinite(table)) and np.all(np.diff(table) > 0)):
                raise CorruptDataError("stored code table is not a strictly increasing set of numbers")
        book = codebook_of(spec, table)
        codes = reader.read(book.code_bits, numel, np.uint8 if book.code_bits <= 8 else np.int32) if (
            spec.coding is None) else None  # fmt: skip
        scale_codes = reader.read(sc.scale_format.bits, rows * groups)
        offset_codes = reader.read(sc.offset_bits(book), rows * groups) if sc.has_offsets else None
        supers = rows * groups // sc.blocks_per_super if sc.two_level else 0
        super_codes = reader.read(sc.super_format.bits, supers) if sc.two_level else None
        super_offsets = reader.read(sc.super_format.bits, supers) if sc.two_level and sc.has_offsets else None
        tensor_scale = float(_f32_from_bits(reader.read(32, 1))[0]) if sc.scale_format.tensor_scale_bits else None
        k = spec.outliers.count(numel) if spec.outliers is not None else 0
        outlier_codes = reader.read(spec.outliers.value_format.bits, k) if spec.outliers else None
        outlier_index = reader.read(OUTLIER_INDEX_BITS, k) if spec.outliers else None
        payload = None
        if spec.coding is not None:
            payload = bytes(data[-(-reader.position // 8) :])
            codes = np.zeros(0, dtype=np.int64)
        elif -(-reader.position // 8) != len(data):
            raise CorruptDataError(f"stream has {len(data)} bytes but the format needs {-(-reader.position // 8)}")
        assert codes is not None
        stored = QuantizedTensor.pack(
            spec, shape, dtype, torch.from_numpy(codes.astype(np.int64)), scale_codes, offset_codes, tensor_scale,
            table, outlier_index, outlier_codes, payload=payload, super_codes=super_codes,
            super_offset_codes=super_offsets,
        )  # fmt: skip
        stored.check()
        return stored


def _int_array(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(np.asarray(values, dtype=np.int64)) if isinstance(values, np.ndarray) else values.cpu()


def _f32_bytes(values: np.ndarray) -> torch.Tensor:
    """float32 values as their little-endian bytes (a uint8 field: exact, and left alone by module.to(dtype))."""
    return torch.from_numpy(np.asarray(values, dtype="<f4").reshape(-1).view(np.uint8).copy())


def _f32_values(field: torch.Tensor) -> np.ndarray:
    return field.cpu().numpy().view("<f4").astype(np.float32)


def _f32_bits(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype="<f4").view("<u4").astype(np.int64)


def _f32_from_bits(bits: np.ndarray) -> np.ndarray:
    return np.asarray(bits, dtype="<u4").view("<f4").astype(np.float32)
