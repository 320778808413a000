"""Every fast kernel against the reference (`QuantizedTensor.dequantize()` + `F.linear`), microxcaling style.

Ŵ through a kernel is bit-identical to the reference decode for every kernel; y for float32 inputs is
bit-identical wherever the kernel multiplies the decoded weight (table, coded); bf16/fp16 inputs (and torch's
int4/int8 kernels) are held to the per-kernel tolerance of docs/inference.md against the exact float32 product:
|y − y₃₂| ≤ TOL[kernel][dtype] · (|x|·|Ŵ|ᵀ), elementwise, and never more than twice the reference's own error.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from wquant.formats import quantize
from wquant.kernels import (
    KERNELS,
    REFERENCE,
    explain,
    int4_cpu,
    int8_cpu,
    native,
    prepare,
    reference_linear,
    select_kernel,
)
from wquant.kernels.decoding import decode, grid_levels

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
EPS = {torch.float32: 0.0, torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}  # unit roundoff of the output
#: Elementwise bound, in units of EPS · (|x|·|Ŵ|ᵀ): one rounding of the output (table, coded, reference
#: in float32), plus the bf16 rounding of scale and zero in torch's int4 kernel (|zero| ≤ 8·|scale| + |offset|).
TOL = {"table": 2.0, "coded": 2.0, "reference": 2.0, "int4-cpu": 24.0, "int8-cpu": 4.0}

#: Layouts the table kernel serves (table grids, ExMy, integer grids, two-level GGUF scales, outliers).
TABLE_SPECS = ("nf4", "af4", "iq4_nl", "mxfp4", "mxfp6", "nvfp4", "lloydmax:3/block64:absmax:fp16",
               "pow0.5:4/block32:absmax:bf16", "q4_k", "q6_k", "int3/block64:absmax:bf16",
               "nf4/block64:absmax:bf16+outliers0.01")  # fmt: skip
INT4_SPECS = ("int4-g128", "gptq-int4-g128", "int4:unsigned/block32:minmax:bf16", "int4/block64:absmax:bf16")
INT8_SPECS = ("int8-channel", "int8:unsigned/channel:minmax:bf16")
CODED_SPECS = ("uniform@3/tensor:rms:bf16+coded", "int4/block64:absmax:bf16+coded")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _weight(rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, cols, generator=_gen(seed))


def _check_linear(q, x: torch.Tensor, bias: torch.Tensor | None = None) -> str:  # type: ignore[no-untyped-def]
    """Run the selected kernel on x; assert the contract above; return the kernel's name."""
    state = prepare(q, x.dtype)
    name = state.kernel.name
    assert torch.equal(state.kernel.dequantize(state), q.dequantize()), f"{name}: Ŵ differs from the reference"
    y = state.kernel.linear(x, state, bias)
    ref = reference_linear(q, x, bias)
    assert y.dtype == ref.dtype == x.dtype and y.shape == ref.shape
    if x.dtype == torch.float32 and name in ("table", "coded", "reference"):
        assert torch.equal(y, ref), f"{name}: float32 output is not bit-identical to the reference"
        return name
    w = q.dequantize().float()
    exact = F.linear(x.double(), w.double(), None if bias is None else bias.double())
    scale = F.linear(x.double().abs(), w.double().abs()) + (0 if bias is None else bias.double().abs())
    bound = TOL[name] * max(EPS[x.dtype], 2.0**-23) * scale + 1e-30
    err, ref_err = (y.double() - exact).abs(), (ref.double() - exact).abs()
    assert torch.isfinite(y).all()
    assert (err <= bound).all(), f"{name} {x.dtype}: error {(err / bound).max():.2f}× its tolerance"
    assert err.max() <= 2 * ref_err.max() + bound.max() * 1e-3, f"{name}: worse than twice the reference"
    return name


@pytest.mark.parametrize("spec", TABLE_SPECS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_table_kernel_matches_reference(spec: str, dtype: torch.dtype) -> None:
    q = quantize(_weight(40, 96 if "block64" not in spec and "k" not in spec else 256), spec)
    for batch in (1, 7):
        assert _check_linear(q, torch.randn(batch, q.shape[1], generator=_gen(batch)).to(dtype)) == "table"


@pytest.mark.parametrize("spec", INT4_SPECS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_int4_kernel_matches_reference(spec: str, dtype: torch.dtype) -> None:
    q = quantize(_weight(48, 256, seed=1), spec)  # 48 rows: one full tile block plus a partial one (AVX2 32)
    bias = torch.randn(48, generator=_gen(3)).to(dtype)
    for shape in ((1, 256), (2, 5, 256), (80, 256)):  # batch 1, batch > 1, above MM_MAX_ROWS
        name = _check_linear(q, torch.randn(*shape, generator=_gen(4)).to(dtype), bias)
        expected = "int4-cpu" if dtype == torch.bfloat16 and int4_cpu.tile_block() is not None else "table"
        assert name == expected


@pytest.mark.parametrize("spec", INT8_SPECS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_int8_kernel_matches_reference(spec: str, dtype: torch.dtype) -> None:
    q = quantize(_weight(24, 160, seed=2), spec)
    for shape in ((1, 160), (9, 160)):
        name = _check_linear(q, torch.randn(*shape, generator=_gen(5)).to(dtype))
        expected = "int8-cpu" if dtype == torch.bfloat16 and hasattr(torch.ops.aten, "_weight_int8pack_mm") else "table"
        assert name == expected


@pytest.mark.parametrize("spec", CODED_SPECS)
def test_coded_decodes_once_into_the_fixed_rate_layout(spec: str) -> None:
    q = quantize(_weight(32, 128, seed=6), spec)
    for dtype in DTYPES:
        assert _check_linear(q, torch.randn(3, 128, generator=_gen(7)).to(dtype)) == "coded"
    state = prepare(q, torch.float32)
    assert state.q.spec.coding is None  # the runtime holds fixed-rate codes of the same grid
    assert torch.equal(state.kernel.canonical_codes(state), q.packed_codes)  # the stream, byte for byte


@pytest.mark.parametrize("spec", ("nf4", "int4-g128", "mxfp4", "int8-channel", "q4_k"))
def test_corner_cases(spec: str) -> None:
    """Zero groups, a ragged last group, tiny and huge magnitudes (where the scale format holds them)."""
    w = _weight(32, 256, seed=8)
    w[:5] = 0.0  # whole zero rows (every group of them zero)
    w[7, :64] = 0.0  # one zero group
    cases = [w]
    if spec not in ("q4_k",):  # two-level formats need whole 256-value super-blocks
        cases.append(_weight(33, 200, seed=9))  # ragged last group (200 = 3·64 + 8 = 128 + 72), odd rows
    if spec in ("nf4", "int4-g128", "int8-channel", "mxfp4"):  # fp32/bf16/e8m0 scales span these magnitudes
        cases += [w * 1e-30, w * 1e30]
    for weight in cases:
        q = quantize(weight, spec)
        tame = 1e-4 < weight.abs().max() < 1e4  # fp16 outputs cannot hold the others' products
        for dtype in DTYPES if tame else (torch.float32, torch.bfloat16):
            _check_linear(q, torch.randn(2, weight.shape[1], generator=_gen(10)).to(dtype))


def test_eager_and_native_decoders_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    """The optional compiled decoder and the torch fallback give the same bits (the fallback always runs)."""
    for spec in ("nf4", "int4-g128", "int3/block64:absmax:bf16", "mxfp6", "int8-channel", "q4_k"):
        q = quantize(_weight(24, 256, seed=11), spec)
        grid, levels = grid_levels(q)
        eager = decode(q, q.packed_codes, grid, levels, native_ok=False)
        assert torch.equal(eager, q.dequantize()), spec
        if native.library() is not None:
            assert torch.equal(decode(q, q.packed_codes, grid, levels), eager), spec
            with monkeypatch.context() as patch:  # large outputs: streaming stores, several threads
                patch.setattr(native, "STREAM_MIN", 0)
                patch.setattr(native, "PARALLEL_MIN", 0)
                patch.setattr(torch, "get_num_threads", lambda: 3)
                assert torch.equal(decode(q, q.packed_codes, grid, levels), eager), spec


def test_registry_order_and_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    assert KERNELS[-1] is REFERENCE and [k.name for k in KERNELS][:1] == ["coded"]
    q = quantize(_weight(16, 64), "nf4")
    assert select_kernel(q, torch.float64) is REFERENCE  # no CPU kernel takes float64 inputs
    assert dict(explain(q, torch.float32))["table"] is None
    q64 = quantize(_weight(16, 64).double(), "nf4")
    assert select_kernel(q64, torch.float32) is REFERENCE
    # torch without the int4 ops: the int4 kernel declines and the table kernel runs
    q4 = quantize(_weight(32, 128), "int4-g128")
    monkeypatch.setattr(int4_cpu, "_ops_present", lambda: False)
    int4_cpu.tile_block.cache_clear()
    try:
        assert select_kernel(q4, torch.bfloat16).name == "table"
        assert "no CPU int4 kernel" in dict(explain(q4, torch.bfloat16))["int4-cpu"]
    finally:
        monkeypatch.undo()
        int4_cpu.tile_block.cache_clear()
    monkeypatch.setattr(int8_cpu, "_ops_present", lambda: False)
    assert select_kernel(quantize(_weight(16, 64), "int8-channel"), torch.bfloat16).name == "table"


@pytest.mark.skipif(int4_cpu.tile_block() is None, reason="torch has no CPU int4 kernel")
def test_int4_tile_is_a_permutation_of_the_canonical_bytes() -> None:
    for rows in (16, 48, 96, 112):
        codes = torch.randint(0, 16, (rows, 64), generator=_gen(rows), dtype=torch.int32)
        canonical = (codes[:, 0::2] | (codes[:, 1::2] << 4)).to(torch.uint8).reshape(-1)
        block = int4_cpu.tile_block()
        assert block is not None
        theirs = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1).reshape(-1)
        assert torch.equal(int4_cpu.to_tile(canonical, rows, 64, block), theirs)
        assert torch.equal(int4_cpu.from_tile(theirs, rows, 64, block), canonical)


def test_int8_refuses_rows_torch_cannot_read() -> None:
    q = quantize(_weight(8, 100), "int8-channel")
    assert "multiple of" in (int8_cpu.INT8_CPU.refusal(q, torch.bfloat16) or "")
