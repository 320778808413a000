"""Entropy coding: exact round trips, real sizes against the empirical entropy, corruption detection.

Oracles are independent of the coder: the input array itself (round trip), N·H(p̂) computed here with
numpy (size), and "any damage must raise" (integrity).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from wquant.errors import CorruptDataError, ParameterError, TensorError
from wquant.formats.coding import (
    CodedSize,
    FrequencyModel,
    coded_bits,
    coded_size,
    decode_codes,
    encode_codes,
)


def gaussian_codes(n: int, seed: int, step: float = 0.35, clip: int = 8) -> np.ndarray:
    """4-bit-like codes of a quantized N(0,1): the skewed distribution a real format emits."""
    x = np.random.default_rng(seed).standard_normal(n)
    return np.clip(np.round(x / step), -clip, clip - 1).astype(np.int64)


def empirical_entropy_bits(codes: np.ndarray) -> float:
    """N·H(p̂) of one stream, written out from the definition."""
    _, counts = np.unique(codes, return_counts=True)
    p = counts / codes.size
    return float(-(counts * np.log2(p)).sum())


def grouped_entropy_bits(codes: np.ndarray, group_size: int) -> float:
    return sum(empirical_entropy_bits(codes[i : i + group_size]) for i in range(0, codes.size, group_size))


# ---------------------------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("n", [1, 2, 1000, 100_000])
@pytest.mark.parametrize("group_size", [None, 1, 64, 4096])
def test_round_trip_sizes_and_groups(n: int, group_size: int | None) -> None:
    rng = np.random.default_rng(n)
    lo = int(rng.integers(-1000, 1000))
    width = int(rng.integers(1, 300))
    codes = rng.integers(lo, lo + width, size=n)
    restored = decode_codes(encode_codes(codes, group_size=group_size))
    assert restored.dtype == codes.dtype
    np.testing.assert_array_equal(restored, codes)


@pytest.mark.parametrize("dtype", ["int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64"])
def test_round_trip_keeps_dtype_shape_and_extremes(dtype: str) -> None:
    info = np.iinfo(dtype)
    codes = np.array([[info.min, info.min + 3, info.min], [info.min + 1, info.min, info.min + 2]], dtype=dtype)
    high = np.array([info.max, info.max - 5, info.max], dtype=dtype) if info.max < 2**63 else None
    for array in (codes, high) if high is not None else (codes,):
        restored = decode_codes(encode_codes(array))
        assert restored.dtype == array.dtype and restored.shape == array.shape
        np.testing.assert_array_equal(restored, array)


def test_round_trip_ten_million_symbols() -> None:
    codes = gaussian_codes(10_000_000, seed=3).astype(np.int8)
    data = encode_codes(codes)
    np.testing.assert_array_equal(decode_codes(data), codes)


def test_round_trip_sparse_alphabet_with_gaps() -> None:
    rng = np.random.default_rng(7)
    codes = rng.choice(np.array([-70_000, -3, 0, 5, 90_000]), size=20_000, p=[0.01, 0.3, 0.5, 0.18, 0.01])
    for group_size in (None, 100):
        np.testing.assert_array_equal(decode_codes(encode_codes(codes, group_size=group_size)), codes)


def test_huge_alphabet_of_65536_distinct_values() -> None:
    codes = np.random.default_rng(1).permutation(1 << 16).astype(np.int32) - 30_000
    data = encode_codes(codes)
    np.testing.assert_array_equal(decode_codes(data), codes)
    # Uniform over 2^16 values: the payload must be ≈ 16 bits/symbol (ANS flush aside).
    assert coded_size(data).payload_bits <= 16 * codes.size * 1.005 + 64


@pytest.mark.parametrize("n", [1, 2, 777])
def test_single_symbol_alphabet(n: int) -> None:
    codes = np.full(n, -42, dtype=np.int16)
    data = encode_codes(codes)
    np.testing.assert_array_equal(decode_codes(data), codes)
    assert coded_size(data).payload_bits == 0  # a certain symbol carries no information


@settings(max_examples=60, deadline=None)
@given(
    codes=hnp.arrays(
        dtype=st.sampled_from([np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16]),
        shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12),
    ),
    group_size=st.one_of(st.none(), st.integers(min_value=1, max_value=40)),
)
def test_round_trip_property(codes: np.ndarray, group_size: int | None) -> None:
    restored = decode_codes(encode_codes(codes, group_size=group_size))
    assert restored.dtype == codes.dtype and restored.shape == codes.shape
    np.testing.assert_array_equal(restored, codes)


def test_encoding_is_deterministic() -> None:
    codes = gaussian_codes(50_000, seed=11)
    assert encode_codes(codes, group_size=512) == encode_codes(codes.copy(), group_size=512)


# -------------------------------------------------------------------------------------------- coded size


@pytest.mark.parametrize("n", [100_000, 1_000_000])
def test_payload_within_half_percent_of_empirical_entropy(n: int) -> None:
    codes = gaussian_codes(n, seed=n)
    data = encode_codes(codes)
    size = coded_size(data)
    entropy = empirical_entropy_bits(codes)
    # ANS ends with its state: allow one 64-bit flush on top of 0.5 %.
    assert entropy <= size.payload_bits <= 1.005 * entropy + 64
    assert size.total_bits <= 1.005 * entropy + 64 + size.table_bits + size.header_bits + 40
    assert size.total_bits == 8 * len(data) == coded_bits(codes)


@pytest.mark.parametrize("group_size", [4096, 65_536])
def test_grouped_payload_within_half_percent_of_group_entropies(group_size: int) -> None:
    # Groups with different scales: per-group models must track each group's own statistics.
    rng = np.random.default_rng(5)
    n_groups = 40
    scales = rng.uniform(0.2, 1.5, size=n_groups)
    x = rng.standard_normal((n_groups, group_size)) * scales[:, None]
    codes = np.clip(np.round(x / 0.3), -8, 7).astype(np.int64).reshape(-1)
    size = coded_size(encode_codes(codes, group_size=group_size))
    entropy = grouped_entropy_bits(codes, group_size)
    assert entropy <= size.payload_bits <= 1.005 * entropy + 64
    assert size.payload_bits < empirical_entropy_bits(codes)  # grouping pays off on this data


def test_breakdown_adds_up_and_table_matches_model() -> None:
    codes = gaussian_codes(30_000, seed=2)
    data = encode_codes(codes)
    size = coded_size(data)
    assert isinstance(size, CodedSize)
    assert size.total_bits == 8 * len(data) and size.n_symbols == codes.size
    assert 0 <= size.padding_bits < 8 and size.checksum_bits == 32
    assert size.payload_bits % 32 == 0
    model = FrequencyModel.from_codes(codes)
    span = int(codes.max() - codes.min())
    # One model: offset and size−1 fields of bit_length(span) bits, 5 + 5 header bits, K counts.
    expected = 2 * span.bit_length() + 10 + (span + 1) * int(model.counts.max()).bit_length()
    assert model.table_bits(span.bit_length()) == expected == size.table_bits


def test_frequency_model_counts_are_normalised_and_positive() -> None:
    codes = np.concatenate([np.zeros(100_000, dtype=np.int64), [1], np.full(50, 3)])
    model = FrequencyModel.from_codes(codes)
    assert model.lo == 0 and model.hi == 3 and model.alphabet_size == 4
    assert int(model.counts.sum()) == 1 << model.precision_bits
    assert model.counts[1] >= 1 and model.counts[3] >= 1 and model.counts[2] == 0
    assert model.probabilities.sum() == pytest.approx(1.0)
    assert model.cross_entropy_bits(codes) >= empirical_entropy_bits(codes)
    assert model == FrequencyModel.from_codes(codes.copy())


# ------------------------------------------------------------------------------------------- corruption


def test_flipped_bytes_are_detected() -> None:
    rng = np.random.default_rng(9)
    data = encode_codes(gaussian_codes(5_000, seed=4), group_size=1000)
    for position in rng.integers(0, len(data), size=200):
        damaged = bytearray(data)
        damaged[position] ^= int(rng.integers(1, 256))
        with pytest.raises(CorruptDataError):
            decode_codes(bytes(damaged))


def test_truncated_streams_are_detected() -> None:
    data = encode_codes(gaussian_codes(5_000, seed=8))
    for length in sorted({0, 1, 3, 4, 7, 10, len(data) // 2, len(data) - 5, len(data) - 4, len(data) - 1}):
        with pytest.raises(CorruptDataError):
            decode_codes(data[:length])
    with pytest.raises(CorruptDataError):
        decode_codes(data + b"\x00")


def test_foreign_bytes_are_rejected() -> None:
    with pytest.raises(CorruptDataError):
        decode_codes(b"PK\x03\x04 not a wquant stream at all")


# ---------------------------------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    "bad",
    [
        np.array([], dtype=np.int64),
        np.array([1.0, 2.0]),
        np.array([1.0, np.nan]),
        np.array([np.inf]),
        np.array(["a", "b"]),
        np.array([True, False]),
    ],
)
def test_unusable_codes_raise_tensor_error(bad: np.ndarray) -> None:
    with pytest.raises(TensorError):
        encode_codes(bad)


def test_invalid_parameters_raise_parameter_error() -> None:
    codes = np.arange(10)
    for group_size in (0, -3, 2.5):
        with pytest.raises(ParameterError):
            encode_codes(codes, group_size=group_size)  # type: ignore[arg-type]
    with pytest.raises(ParameterError):
        FrequencyModel.from_codes(np.array([0, 1 << 30]))  # one count per value of a 2^30-wide range


def test_wide_sparse_range_costs_only_its_alphabet() -> None:
    codes = np.array([-(1 << 62), 0, 1 << 40, 0, 0, (1 << 62) + 5] * 100, dtype=np.int64)
    data = encode_codes(codes)
    np.testing.assert_array_equal(decode_codes(data), codes)
    assert coded_size(data).table_bits < 400  # 3 gaps of ≤ 63 bits + one 4-symbol model
