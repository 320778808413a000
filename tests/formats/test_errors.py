"""Bad input at the format boundary: each raises a wquant error whose message says what to fix."""

import pytest
import torch

from wquant.errors import CorruptDataError, ParameterError, SpecError, TensorError, WquantError
from wquant.formats import QuantizedTensor, parse_spec, quantize

X = torch.randn(8, 64, generator=torch.Generator().manual_seed(0))


def test_nan_and_inf_are_refused_with_name_and_count():
    bad = X.clone()
    bad[0, :3] = float("nan")
    bad[1, 0] = float("inf")
    with pytest.raises(TensorError, match=r"layer1\.weight: 4 of 512 values are NaN or Inf"):
        quantize(bad, "int4", name="layer1.weight")


def test_nan_policy_zero_quantizes_them_as_zero():
    bad = X.clone()
    bad[0, 0] = float("nan")
    out = quantize(bad, "int8/channel:absmax:fp32", nan_policy="zero").dequantize()
    assert out[0, 0] == 0 and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "tensor,match",
    [
        (torch.zeros(0, 4), "empty"),
        (torch.ones(4, 4, dtype=torch.int32), "not a floating type"),
        ([1.0, 2.0], "expected a torch.Tensor"),
    ],
)
def test_unusable_tensors(tensor, match):
    with pytest.raises(TensorError, match=match):
        quantize(tensor, "int4")


@pytest.mark.parametrize(
    "spec,match",
    [
        ("int0", r"bits must be in \[1, 16\]"),
        ("int17", r"bits must be in \[1, 16\]"),
        ("int4/block0", r"block size must be in"),
        ("float4", r"valid forms: int<b>"),
        ("int4/rows", r"valid: tensor, channel, block<B>"),
        ("int4/block64:maxabs", r"neither a rule \(absmax, signmax, span, rms, minmax, zeropoint\) nor a scale format"),
        ("int4+sparse", r"valid: \+search, \+outliers"),
        ("e2m1/block32:signmax:e8m0", "unsigned"),
        ("int4/block64:minmax:e8m0", "zero offset"),
        ("int4:unsigned/block64:zeropoint:fp16+search", "zeropoint already fits the range"),
        ("lloydmax:4/block64:zeropoint:fp16", "fixed grid level"),
        ("lut:1,0.5,0", "strictly increasing"),
        ("lut:1,1,2", "strictly increasing"),
        ("crd-t2:4", "nu > 2"),
        ("crd-t5:3/block1:absmax:bf16", "use block4 or more"),  # found by make fuzz: was a scipy TypeError
        ("crd-normal:3/block3:signmax:bf16", "expected largest of a block"),
        ("int4+outliers1.5", r"outlier ratio must be in \(0, 1\)"),
        ("", "non-empty string"),
    ],
)
def test_bad_specs_explain_themselves(spec, match):
    with pytest.raises(SpecError, match=match):
        parse_spec(spec)


@pytest.mark.parametrize("element", ["crd-normal:3", "crd-t5:3", "crd-laplace:3", "crd-t5:3:asym"])
@pytest.mark.parametrize("block", [1, 2, 3, 4, 5, 64])
def test_cube_root_grids_on_small_absmax_blocks_are_finite_or_refused(element, block):
    """Every block size either quantizes to finite, ordered levels or is refused with a SpecError (never a
    numerical error from inside the grid construction)."""
    spec = f"{element}/block{block}:absmax:bf16"
    try:
        q = quantize(X, spec)
    except SpecError:
        assert block < 4 and "laplace" not in element
        return
    assert bool(torch.isfinite(q.dequantize()).all())


def test_errors_share_one_base():
    for cls in (SpecError, TensorError, ParameterError, CorruptDataError):
        assert issubclass(cls, WquantError)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_low_and_high_precision_inputs_return_their_dtype(dtype):
    out = quantize(X.to(dtype), "nf4").dequantize()
    assert out.dtype == dtype and out.shape == X.shape
    assert float((out.float() - X).square().mean()) < 0.02


def test_weights_must_match_shape():
    with pytest.raises(TensorError, match="weights must have shape"):
        quantize(X, "int4+search", weights=torch.ones(3))


def test_truncated_stream_is_refused():
    q = quantize(X, "int4/block64:absmax:bf16")
    data = q.to_bytes()
    with pytest.raises(CorruptDataError):
        QuantizedTensor.from_bytes(data[:-5], q.spec, q.shape, q.dtype)
    with pytest.raises(CorruptDataError):
        QuantizedTensor.from_bytes(data + b"\0", q.spec, q.shape, q.dtype)
