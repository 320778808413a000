"""GGUF blocks from wquant's stored fields, checked against the gguf package: its dequantizer, its file writer
and reader, and (for the types it can quantize itself) its codes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wquant.errors import SpecError
from wquant.formats import quantize

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as GT  # noqa: E402

from wquant.export.gguf_types import GGUF_TYPES, gguf_type_of, pack_gguf  # noqa: E402


def _hostile(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Heavy-tailed rows of mixed scale, with all-zero, one-signed, constant and tiny blocks."""
    g = torch.Generator().manual_seed(seed)
    w = torch.distributions.StudentT(4.0).sample((rows, cols)) * torch.logspace(-3, 1, rows)[:, None]
    w[0, :256] = 0.0
    w[1, :256] = w[1, :256].abs() + 0.5  # positive-only super-block
    w[1, 256:512] = -w[1, 256:512].abs()  # negative-only
    w[2, :64] = 0.25  # constant blocks
    w[3] *= 1e-4
    return w + 0 * torch.rand(rows, cols, generator=g)


@pytest.mark.parametrize("name", list(GGUF_TYPES))
def test_blocks_dequantize_in_gguf_exactly_as_in_wquant(name):
    gtype = GGUF_TYPES[name]
    w = _hostile(6, 1024, seed=1)
    q = quantize(w, gtype.preset)
    assert gguf_type_of(q.spec) is gtype
    _, data = pack_gguf(q)
    block, type_size = gguf.GGML_QUANT_SIZES[getattr(GT, name)]
    assert (block, type_size) == (gtype.block, gtype.type_size)
    assert data.shape == (6, 1024 // block * type_size) and data.dtype == np.uint8
    theirs = gguf.quants.dequantize(data, getattr(GT, name))
    assert np.array_equal(theirs, q.dequantize().numpy())


def test_a_gguf_file_holds_every_type_bit_exactly(tmp_path):
    """GGUFWriter → GGUFReader → gguf.quants.dequantize gives back wquant's dequantized values."""
    path = tmp_path / "all.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    expected = {}
    for i, (name, gtype) in enumerate(GGUF_TYPES.items()):
        q = quantize(_hostile(4, 512, seed=10 + i), gtype.preset)
        _, data = pack_gguf(q)
        writer.add_tensor(f"t.{name}", data, raw_dtype=getattr(GT, name))
        expected[f"t.{name}"] = q.dequantize().numpy()
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    reader = gguf.GGUFReader(str(path))
    assert {t.name for t in reader.tensors} == set(expected)
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        assert np.array_equal(values.reshape(expected[tensor.name].shape), expected[tensor.name]), tensor.name


def _scale_bytes(name: str, data: np.ndarray) -> np.ndarray:
    """The bytes of each block that hold its scale (and min): where both quantizers must agree exactly."""
    gtype = GGUF_TYPES[name]
    blocks = data.reshape(-1, gtype.type_size)
    return {"Q4_1": blocks[:, :4], "Q5_1": blocks[:, :4], "TQ2_0": blocks[:, -2:], "MXFP4": blocks[:, :1]}.get(
        name, blocks[:, :2]
    )


@pytest.mark.parametrize("name", ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "TQ2_0", "MXFP4"])
def test_codes_match_the_gguf_quantizer(name):
    """Same scales byte for byte. Codes differ only where gguf-py rounds against the fp32 scale before storing it
    in fp16 and wquant against the stored fp16 scale (what dequantization uses): a fraction of elements, by one
    step, and wquant's choice is never farther from the weight."""
    w = torch.randn(64, 1024, generator=torch.Generator().manual_seed(5))
    gtype = GGUF_TYPES[name]
    _, ours = pack_gguf(quantize(w, gtype.preset))
    theirs = gguf.quants.quantize(w.numpy(), getattr(GT, name))
    assert np.array_equal(_scale_bytes(name, ours), _scale_bytes(name, theirs))
    a = gguf.quants.dequantize(ours, getattr(GT, name))
    b = gguf.quants.dequantize(theirs, getattr(GT, name))
    differ = a != b
    assert differ.mean() < 0.01
    x = w.numpy()
    step = np.abs(b - a).reshape(-1, gtype.block).max(axis=1)  # one code step where they differ
    scale = np.abs(gguf.quants.dequantize(theirs, getattr(GT, name))).reshape(-1, gtype.block).max(axis=1)
    assert np.all(step <= scale)  # never more than one level apart on a block's grid
    tolerance = 1e-6 * np.abs(x) + 1e-12
    assert np.all(np.abs(a - x) <= np.abs(b - x) + tolerance)
    if name == "MXFP4":
        assert np.array_equal(ours, theirs)


def test_formats_gguf_cannot_hold_are_refused_with_the_list():
    w = torch.randn(4, 256)
    for spec in ("nf4", "int4:unsigned/block128:zeropoint:fp16", "q4_0+outliers0.01", "int4/block32:absmax:bf16"):
        with pytest.raises(SpecError, match="q4_k"):
            pack_gguf(quantize(w, spec), "blk.0.ffn_up.weight")


def test_ragged_rows_are_refused_with_the_fallback():
    q = quantize(torch.randn(4, 48), "q4_0")
    with pytest.raises(SpecError, match="blk.1.attn_v.weight.*48.*unquantized"):
        pack_gguf(q, "blk.1.attn_v.weight")


def test_rules_that_store_the_same_fields_export_alike():
    """absmax or signmax, lut or iq4nl: the stored fields decide the GGUF type, not the rule that chose them."""
    assert gguf_type_of("iq4nl/block32:absmax:fp16").name == "IQ4_NL"
    assert gguf_type_of("int8/block32:signmax:fp16").name == "Q8_0"
    assert gguf_type_of("mxfp4-rceil").name == "MXFP4"
    assert gguf_type_of("int4:asym/block64:signmax:fp16") is None
