"""Property tests (hypothesis): idempotence, half-step error bound, nested grids, bit-pack round trip."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wquant.formats import quantize
from wquant.formats.bitpack import BitReader, BitWriter, pack_bits, unpack_bits

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
matrices = arrays(np.float32, st.tuples(st.integers(1, 6), st.integers(1, 40)), elements=finite)

# absmax/signmax map each block's extreme onto a grid endpoint, so re-quantizing finds the same scale and the
# round trip is a projection. (RMS and minmax scales move with the data: they are not idempotent by design.)
SPECS = st.sampled_from(
    [
        "int4/block8:absmax:fp32",
        "int3:asym/channel:absmax:bf16",
        "nf4/block16:absmax:fp32",
        "e2m1/block32:absmax:e8m0",
        "mxfp4-rceil",
        "pow0.6:4/block8:absmax:fp32",
        "e3m2/channel:signmax:fp16",
        "crd-normal:3:asym/block16:signmax:bf16",
    ]
)


@settings(max_examples=60, deadline=None)
@given(matrices, SPECS)
def test_quantize_is_idempotent(x, spec):
    once = quantize(torch.from_numpy(x), spec).dequantize()
    twice = quantize(once, spec).dequantize()
    torch.testing.assert_close(twice, once, rtol=1e-5, atol=1e-6 * float(np.abs(x).max() + 1e-30))


@settings(max_examples=80, deadline=None)
@given(matrices, st.integers(2, 8), st.sampled_from([4, 8, 16]))
def test_error_within_half_step_for_absmax_int(x, bits, block):
    # absmax maps every value inside the grid range: the error is at most half a step of its own block
    t = torch.from_numpy(x)
    q = quantize(t, f"int{bits}/block{block}:absmax:fp32")
    err = (q.dequantize() - t).abs()
    cols = x.shape[1]
    step = q.scales().repeat_interleave(block, dim=1)[:, :cols]
    assert bool((err <= step / 2 * (1 + 1e-5) + 1e-30).all())


def scale_storage_slack(t: torch.Tensor) -> float:
    """Nesting is exact up to the fp32 storage of the scale: each level moves by δ ≤ 1e-7·max|x| (+ subnormal
    spacing), so each squared error moves by at most 2·|e|·δ + δ² with |e| ≤ max|x|."""
    peak = float(t.abs().max())
    delta = 1e-7 * peak + 1e-43
    return t.numel() * (2 * peak * delta + delta**2)


@settings(max_examples=60, deadline=None)
@given(matrices, st.sampled_from([(2, 3), (3, 5), (4, 7), (2, 6)]))
def test_nested_grids_never_increase_mse(x, pair):
    # symmetric absmax grids with K = 2^(b-1)-1 steps: the coarse grid is a subset when K_fine % K_coarse == 0
    coarse_bits, fine_bits = pair
    t = torch.from_numpy(x).double()
    mse = {
        b: float((quantize(t, f"int{b}/channel:absmax:fp32").dequantize() - t).square().sum())
        for b in (coarse_bits, fine_bits)
    }
    fp32_scale_rounding = scale_storage_slack(t)
    assert mse[fine_bits] <= mse[coarse_bits] * (1 + 1e-6) + fp32_scale_rounding


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.floats(-0.99, 0.99, allow_nan=False).map(lambda v: round(v, 3)), min_size=1, max_size=10, unique=True),
    st.lists(st.floats(-0.99, 0.99, allow_nan=False).map(lambda v: round(v, 3)), min_size=1, max_size=10, unique=True),
    matrices,
)
def test_lut_superset_never_increases_mse(base, extra, x):
    small = sorted({-1.0, 1.0, *base})
    large = sorted(set(small) | set(extra))
    t = torch.from_numpy(x).double()
    slack = scale_storage_slack(t)

    def err(levels):
        spec = "lut:" + ",".join(repr(v) for v in levels) + "/block4:absmax:fp32"
        return float((quantize(t, spec).dequantize() - t).square().sum())

    assert err(large) <= err(small) * (1 + 1e-6) + slack


@settings(max_examples=150, deadline=None)
@given(st.integers(1, 32), st.integers(0, 300), st.integers(0, 2**32 - 1))
def test_pack_unpack_round_trip(width, n, seed):
    values = np.random.default_rng(seed).integers(0, 2**width, size=n, dtype=np.uint64).astype(np.int64)
    packed = pack_bits(values, width)
    assert packed.dtype == torch.uint8 and packed.numel() == -(-n * width // 8)
    # the layout by definition: stream bit i is bit (i mod w) of value i // w, bytes filled LSB first
    stream = np.unpackbits(packed.numpy(), bitorder="little")
    i = np.arange(n * width)
    np.testing.assert_array_equal(stream[: n * width], (values[i // width] >> (i % width)) & 1)
    assert not stream[n * width :].any()
    np.testing.assert_array_equal(unpack_bits(packed.numpy().tobytes(), width, n).numpy(), values)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 32), st.integers(0, 50)), min_size=1, max_size=6), st.integers(0, 2**31))
def test_bit_stream_of_mixed_fields_round_trips(fields, seed):
    rng = np.random.default_rng(seed)
    data = [(rng.integers(0, 2**w, size=n, dtype=np.uint64), w) for w, n in fields]
    writer = BitWriter()
    for values, width in data:
        writer.write(values, width)
    stream = writer.getvalue()
    assert len(stream) == -(-writer.bits // 8)
    reader = BitReader(stream)
    for values, width in data:
        np.testing.assert_array_equal(reader.read(width, values.size), values.astype(np.int64))


@pytest.mark.parametrize("layout", [[(8, 3), (16, 5), (32, 4), (4, 6), (16, 2), (32, 3)],
                                    [(4, 7), (16, 5), (32, 3), (1, 3), (32, 2), (16, 1)]])  # fmt: skip
def test_word_fields_read_back_aligned_or_not_and_in_narrow_dtypes(layout: list[tuple[int, int]]) -> None:
    rng = np.random.default_rng(9)
    data = [(rng.integers(0, 2**w, size=n, dtype=np.uint64), w) for w, n in layout]
    writer = BitWriter()
    for values, width in data:
        writer.write(values, width)
    reader = BitReader(writer.getvalue())
    for values, width in data:
        narrow = np.uint8 if width <= 8 else np.int64
        got = reader.read(width, values.size, narrow)
        assert got.dtype == narrow
        np.testing.assert_array_equal(got.astype(np.int64), values.astype(np.int64))
