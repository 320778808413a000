"""Spec strings and JSON round-trip, presets resolve to their published layouts."""

import pytest

from wquant.formats import PRESETS, FormatSpec, IntGrid, parse_spec

SPECS = [
    "int4:asym/block64:absmax:bf16",
    "nf4/block64:absmax:fp32",
    "e2m1/block32:absmax:e8m0",
    "crd-t5:4/tensor:rms:bf16+outliers0.001",
    "lut:-1.0,-0.25,0.0,0.5,1.0/channel:rms:fp16+search",
    "pow0.72:4:nearest/channel:absmax:bf16",
    "lloydmax:3/tensor:rms:bf16",
    "crd-normal:3:asym:p0.5/block128:signmax:bf16",
    "int4:unsigned/block128:minmax:fp16+outliers0.01:fp32",
    "int4:unsigned/block128:zeropoint:fp16",
    "int4:asym/channel:span:bf16+search",
    "e4m3/block16:absmax:ue4m3",
]


@pytest.mark.parametrize("text", SPECS)
def test_canonical_strings_round_trip(text):
    spec = parse_spec(text)
    assert spec.to_string() == text
    assert FormatSpec.from_json(spec.to_json()) == spec


def test_short_forms_fill_defaults():
    assert parse_spec("int4").to_string() == "int4/block64:absmax:bf16"
    assert parse_spec("crd-t5:4/tensor:rms+outliers0.001").to_string() == "crd-t5:4/tensor:rms:bf16+outliers0.001"
    spec = parse_spec("int8/channel")
    assert spec.element == IntGrid(8) and spec.scaling.granularity == "channel"


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_parse(name):
    assert parse_spec(name) == parse_spec(PRESETS[name])
