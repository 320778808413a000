"""`--to compressed-tensors` and `--to gptq`: read back through their documented layouts (bit-identical
integers and scales), through compressed-tensors' own decompressors when installed (to fp tolerance: it
multiplies in the scale's dtype), and refusals that list what is exportable."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from wquant.errors import ParameterError, SpecError
from wquant.evaluate.testbed import char_tokenizer
from wquant.export import Source, export
from wquant.models import QuantizeConfig, quantize_

MIX = {
    "*k_proj": "int4:unsigned/block64:zeropoint:fp16",
    "*v_proj": "int8:asym/channel:absmax:bf16",
    "*o_proj": "mxfp4",
    "*up_proj": "int3:unsigned/block32:zeropoint:fp32",
    "lm_head": "none",
}


def _model(mix: dict[str, str], default: str | None = "int4:asym/block32:span:fp16"):  # noqa: ANN202
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = char_tokenizer("hello world, the quick brown fox\n")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=128, intermediate_size=256, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False)  # fmt: skip
    model = LlamaForCausalLM(config).eval()
    if default is not None:
        quantize_(model, QuantizeConfig(default, overrides=mix))
    return model, tok


def _unpack_dense(words: torch.Tensor, bits: int, count: int) -> np.ndarray:
    """The documented layout, read independently: element i at bits i·b of the little-endian int32 stream."""
    raw = words.numpy().astype("<i4").view(np.uint32)
    stream = ((raw[..., None] >> np.arange(32, dtype=np.uint32)) & 1).reshape(raw.shape[0], -1)
    take = stream[:, : count * bits].reshape(raw.shape[0], count, bits).astype(np.int64)
    return (take << np.arange(bits)).sum(axis=2)


def test_compressed_tensors_layout_is_bit_identical(tmp_path) -> None:  # noqa: ANN001
    model, tok = _model(MIX)
    export(Source(model, tok, tmp_path, True), "compressed-tensors", tmp_path / "ct")
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    stored = load_file(str(tmp_path / "ct" / "model.safetensors"))
    assert config["format"] == "mixed-precision" and "lm_head" in config["ignore"]
    seen = 0
    for group in config["config_groups"].values():
        args = group["weights"]
        for target in group["targets"]:
            path = target.removeprefix("re:^").removesuffix("$").replace("\\", "")
            ours = model.get_submodule(path).weight.detach().float()
            rows, cols = ours.shape
            scale = stored[f"{path}.weight_scale"]
            if group["format"] == "mxfp4-pack-quantized":
                packed = stored[f"{path}.weight_packed"].numpy().astype(np.int64)
                nibbles = np.stack([packed & 15, packed >> 4], axis=-1).reshape(rows, cols)
                e2m1 = np.array([0, 0.5, 1, 1.5, 2, 3, 4, 6, -0.0, -0.5, -1, -1.5, -2, -3, -4, -6])[nibbles]
                values = e2m1 * np.exp2(np.repeat(scale.numpy().astype(np.float64) - 127, 32, axis=1))
            else:
                bits, half = args["num_bits"], 2 ** (args["num_bits"] - 1)
                codes = _unpack_dense(stored[f"{path}.weight_packed"], bits, cols)  # q + 2^(b−1)
                assert stored[f"{path}.weight_packed"].shape == (rows, -(-cols * bits // 32))
                group_size = args["group_size"] or cols
                s = np.repeat(scale.float().numpy(), group_size, axis=1)  # fp32 arithmetic, as wquant decodes
                if args["symmetric"]:
                    values = (codes - half).astype(np.float32) * s
                else:  # unsigned code c and zero code z: wquant decodes c·s + (−z·s)
                    zp = _unpack_dense(stored[f"{path}.weight_zero_point"].T.contiguous(), bits, rows).T
                    z = np.repeat(zp, group_size, axis=1).astype(np.float32)
                    values = codes.astype(np.float32) * s + -(z * s)
            assert np.array_equal(values.astype(np.float32), ours.numpy()), path
            seen += 1
    assert seen == 7


def test_compressed_tensors_decompressors_reproduce_the_weights(tmp_path) -> None:  # noqa: ANN001
    ct = pytest.importorskip("compressed_tensors")
    from compressed_tensors.compressors.mxfp4.base import MXFP4PackedCompressor
    from compressed_tensors.compressors.pack_quantized.base import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    model, tok = _model(MIX)
    export(Source(model, tok, tmp_path, True), "compressed-tensors", tmp_path / "ct")
    config = json.loads((tmp_path / "ct" / "config.json").read_text())["quantization_config"]
    stored = load_file(str(tmp_path / "ct" / "model.safetensors"))
    for group in config["config_groups"].values():
        scheme = QuantizationScheme(targets=group["targets"], weights=QuantizationArgs(**group["weights"]),
                                    format=group["format"])  # fmt: skip
        compressor = (
            MXFP4PackedCompressor if group["format"] == "mxfp4-pack-quantized" else PackedQuantizationCompressor
        )
        for target in group["targets"]:
            path = target.removeprefix("re:^").removesuffix("$").replace("\\", "")
            fields = {k.rsplit(".", 1)[1]: v for k, v in stored.items() if k.rsplit(".", 1)[0] == path}
            theirs = compressor.decompress(fields, scheme)["weight"].float()
            ours = model.get_submodule(path).weight.detach().float()
            eps = torch.finfo(fields["weight_scale"].dtype).eps if fields["weight_scale"].is_floating_point() else 0
            assert torch.allclose(theirs, ours, rtol=eps, atol=1e-7), (path, ct.__version__)


def _gptq_weight(stored: dict[str, torch.Tensor], path: str, bits: int) -> np.ndarray:
    """GPTQ v1 read independently: w[i, j] = scales[g_idx[i], j] · (q[i, j] − (qzeros[g, j] + 1))."""
    per, mask = 32 // bits, 2**bits - 1
    qweight = stored[f"{path}.qweight"].numpy().view(np.uint32)
    q = ((qweight[:, None, :] >> (bits * np.arange(per, dtype=np.uint32))[None, :, None]) & mask).reshape(
        -1, qweight.shape[1]
    )
    qzeros = stored[f"{path}.qzeros"].numpy().view(np.uint32)
    zeros = ((qzeros[:, :, None] >> (bits * np.arange(per, dtype=np.uint32))) & mask).reshape(qzeros.shape[0], -1) + 1
    g_idx = stored[f"{path}.g_idx"].numpy()
    scales = stored[f"{path}.scales"].float().numpy()
    return (scales[g_idx] * (q.astype(np.float32) - zeros[g_idx])).T


def test_gptq_layout_reads_back(tmp_path) -> None:  # noqa: ANN001
    mix = {"*k_proj": "int8:asym/block32:span:fp16", "*v_proj": "int4:asym/channel:absmax:fp16", "lm_head": "none"}
    model, tok = _model(mix, default="gptq-int4-g128")
    export(Source(model, tok, tmp_path, True), "gptq", tmp_path / "g")
    config = json.loads((tmp_path / "g" / "quantize_config.json").read_text())
    assert config["bits"] == 4 and config["group_size"] == 128 and config["sym"] is False
    assert config["checkpoint_format"] == "gptq" and "-:^lm_head$" in config["dynamic"]
    assert json.loads((tmp_path / "g" / "config.json").read_text())["quantization_config"]["quant_method"] == "gptq"
    stored = load_file(str(tmp_path / "g" / "model.safetensors"))
    for path, bits in [("model.layers.0.self_attn.q_proj", 4), ("model.layers.0.self_attn.k_proj", 8),
                       ("model.layers.0.self_attn.v_proj", 4), ("model.layers.0.mlp.down_proj", 4)]:  # fmt: skip
        ours = model.get_submodule(path).weight.detach().float().numpy()
        theirs = _gptq_weight(stored, path, bits)
        assert np.allclose(theirs, ours, rtol=1e-6, atol=1e-8), path  # (q − z)·s vs q·s − z·s: one fp32 rounding
        assert stored[f"{path}.scales"].dtype == torch.float16
    assert config["dynamic"]["+:^model\\.layers\\.0\\.self_attn\\.k_proj$"] == {
        "bits": 8,
        "group_size": 32,
        "sym": True,
    }


def test_refusals_list_what_is_exportable(tmp_path) -> None:  # noqa: ANN001
    model, tok = _model({"*q_proj": "nf4"})
    with pytest.raises(SpecError, match="exportable specs"):
        export(Source(model, tok, tmp_path, True), "compressed-tensors", tmp_path / "a")
    model, tok = _model({}, default="int4:asym/block32:span:bf16")
    with pytest.raises(SpecError, match="fp16"):
        export(Source(model, tok, tmp_path, True), "gptq", tmp_path / "b")
    model, tok = _model({})
    quantize_(model, QuantizeConfig("q8_0", targets=("embedding",)))
    with pytest.raises(ParameterError, match="--target linear"):
        export(Source(model, tok, tmp_path, True), "compressed-tensors", tmp_path / "c")


def test_gptq_refuses_a_zero_point_of_zero(tmp_path) -> None:  # noqa: ANN001
    model, tok = _model({}, default=None)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.abs_()  # all-positive groups: zero point 0
    quantize_(model, QuantizeConfig("gptq-int4-g128", include=("*down_proj",)))
    with pytest.raises(SpecError, match="zero point of 0"):
        export(Source(model, tok, tmp_path, True), "gptq", tmp_path / "z")


def test_transformers_loads_the_compressed_tensors_folder(tmp_path) -> None:  # noqa: ANN001
    """transformers + compressed-tensors reproduce wquant's logits (fp32 scales: exactly; symmetric int layers).

    Asymmetric layers are not loaded this way here: transformers 5.24 with compressed-tensors 0.20.0 expects the
    zero point unpacked (out, groups) while compressed-tensors' own compressor packs it (⌈out·b/32⌉, groups) —
    the layout this exporter writes and `test_compressed_tensors_decompressors_reproduce_the_weights` checks.
    """
    pytest.importorskip("compressed_tensors")
    from transformers import AutoModelForCausalLM

    model, tok = _model({"*k_proj": "int8:asym/channel:absmax:fp32", "lm_head": "none"},
                        default="int4:asym/block32:span:fp32")  # fmt: skip
    export(Source(model, tok, tmp_path, True), "compressed-tensors", tmp_path / "ct")
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ct"), dtype=torch.float32).eval()
    ids = torch.tensor([tok("the quick brown fox")["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-6)
