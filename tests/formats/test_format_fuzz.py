"""Fuzzing the parsers of untrusted input: spec strings, packed streams, coded containers.

Any input must give either a valid result or a wquant error — never another exception. `make fuzz` runs
these with 20,000 examples each (HYPOTHESIS_PROFILE=fuzz); `make test` runs the default 100.
"""

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from wquant.errors import WquantError
from wquant.formats import QuantizedTensor, parse_spec, quantize
from wquant.formats.coding import decode_codes, encode_codes

SPEC_ALPHABET = "intuf0123456789.:/+-@,eamdbscklogrpwhx"
TOKENS = ["int4", "e2m1", "nf4", "lut:", "crd-t5:", "pow0.7:", "uniform", "@", "/", "block", "64", ":", "absmax",
          "rms", "minmax", "signmax", "zeropoint", "span", "e8m0", "bf16", "+search", "+outliers", "0.01", "+coded",
          ":g", "-", "."]  # fmt: skip


@given(st.one_of(st.text(alphabet=SPEC_ALPHABET, max_size=40), st.lists(st.sampled_from(TOKENS)).map("".join)))
def test_spec_parser_accepts_or_explains(text):
    try:
        spec = parse_spec(text)
    except WquantError:
        return
    assert parse_spec(spec.to_string()) == spec  # whatever parses, round-trips


STREAM_SPECS = ["int4/block8:absmax:bf16", "lloydmax:2/tensor:rms", "nvfp4", "uniform0.5/tensor:rms+coded",
                "int3:unsigned/block5:minmax:fp16+outliers0.1", "int4:unsigned/block6:zeropoint:bf16"]  # fmt: skip


@pytest.mark.parametrize("spec", STREAM_SPECS)
@given(data=st.data())
def test_stream_reader_never_crashes_on_damaged_bytes(spec, data):
    x = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    q = quantize(x, spec)
    stream = bytearray(q.to_bytes())
    action = data.draw(st.sampled_from(["flip", "truncate", "extend", "random"]))
    if action == "flip":
        for pos in data.draw(st.lists(st.integers(0, len(stream) - 1), min_size=1, max_size=8)):
            stream[pos] ^= data.draw(st.integers(1, 255))
    elif action == "truncate":
        stream = stream[: data.draw(st.integers(0, len(stream) - 1))]
    elif action == "extend":
        stream += data.draw(st.binary(min_size=1, max_size=16))
    else:
        stream = bytearray(data.draw(st.binary(max_size=2 * len(stream))))
    try:
        back = QuantizedTensor.from_bytes(bytes(stream), q.spec, q.shape, q.dtype)
    except WquantError:
        return
    out = back.dequantize()  # a stream that parses must decode to a tensor of the right shape
    assert out.shape == x.shape


@given(st.binary(max_size=300))
def test_coded_container_rejects_random_bytes(blob):
    try:
        decode_codes(blob)
    except WquantError:
        return


@given(st.lists(st.integers(-1000, 1000), min_size=1, max_size=200), st.data())
def test_coded_container_detects_any_single_byte_change(values, data):
    blob = bytearray(encode_codes(np.array(values, dtype=np.int64)))
    pos = data.draw(st.integers(0, len(blob) - 1))
    blob[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(WquantError):
        decode_codes(bytes(blob))
