"""`wquant quantize --algorithm gptq|nupes --calib` on a tiny causal LM: calibrated layers, exact bits, saved."""

from __future__ import annotations

import torch
from typer.testing import CliRunner

from wquant.cli.main import app
from wquant.evaluate import char_tokenizer
from wquant.models import QuantizedLinear, load_quantized, model_bits

TEXT = "Now is the winter of our discontent\nMade glorious summer by this sun of York;\n" * 40
runner = CliRunner()
SPEC = "int4/block32:absmax:bf16"


def make_lm(folder):
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = char_tokenizer(TEXT)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                         architectures=["LlamaForCausalLM"])  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def test_gptq_through_the_cli_quantizes_every_linear_layer_at_the_format_bits(tmp_path):
    make_lm(tmp_path / "lm")
    (tmp_path / "calib.txt").write_text(TEXT)
    args = [
        "quantize",
        str(tmp_path / "lm"),
        "-f",
        SPEC,
        "--target",
        "linear",
        "--algorithm",
        "gptq",
        "--calib",
        str(tmp_path / "calib.txt"),
        "--nsamples",
        "8",
        "--seqlen",
        "32",
        "--out",
        str(tmp_path / "q"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    model = load_quantized(tmp_path / "q")
    layers = [m for m in model.modules() if isinstance(m, QuantizedLinear)]
    assert layers and all(m.qweight.quantized.spec.to_string() == SPEC for m in layers)
    rows = [t for t in model_bits(model).tensors if t.quantized]
    assert all(t.bits == t.numel * 4 + (t.numel // 32) * 16 for t in rows)  # codes + one bf16 scale per 32
    # GPTQ really ran: its codes differ from round-to-nearest of the same weights
    from transformers import LlamaForCausalLM

    from wquant.formats import quantize

    base = dict(LlamaForCausalLM.from_pretrained(tmp_path / "lm").named_modules())
    named = dict(model.named_modules())
    differs = [
        not torch.equal(named[n].qweight.quantized.codes, quantize(base[n].weight.detach(), SPEC).codes)
        for n, m in named.items() if isinstance(m, QuantizedLinear) and n != "lm_head"
    ]  # fmt: skip
    assert any(differs)


def test_gptq_without_calibration_text_is_refused(tmp_path):
    make_lm(tmp_path / "lm")
    result = runner.invoke(app, ["quantize", str(tmp_path / "lm"), "--algorithm", "gptq", "--out", str(tmp_path / "q")])
    assert result.exit_code == 2 and "needs --calib" in result.output


def test_every_algorithm_honours_override_exclude_and_target_through_the_cli(tmp_path):
    """The bug this guards: the calibrated path ignored --override and --target (`-o '*.0.*=none'` still came out
    int4; `--target embedding` still ran GPTQ on every Linear)."""
    make_lm(tmp_path / "lm")
    (tmp_path / "calib.txt").write_text(TEXT)
    formats = {"gptq": SPEC, "rtn-search": SPEC, "nupes": SPEC, "hqq": "int4:unsigned/block32:minmax:bf16"}
    for algorithm, spec in formats.items():
        out = tmp_path / f"q-{algorithm}"
        args = ["quantize", str(tmp_path / "lm"), "-f", spec, "--algorithm", algorithm, "--calib",
                str(tmp_path / "calib.txt"), "--nsamples", "4", "--seqlen", "32", "-o", "*.q_proj=none",
                "-o", "*.down_proj=" + spec.replace("int4", "int8"), "-x", "lm_head", "--out", str(out)]  # fmt: skip
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (algorithm, result.output)
        model = load_quantized(out)
        kinds = {n: type(m).__name__ for n, m in model.named_modules() if n.endswith(("proj", "lm_head"))}
        assert kinds["model.layers.0.self_attn.q_proj"] == "Linear" and kinds["lm_head"] == "Linear", algorithm
        down = model.get_submodule("model.layers.0.mlp.down_proj").qweight.spec
        assert f":{8}/" in down.to_string() or down.to_string().startswith("int8"), (algorithm, down)
        assert isinstance(model.get_submodule("model.embed_tokens"), torch.nn.Embedding)
    embeddings_only = tmp_path / "q-emb"
    args = ["quantize", str(tmp_path / "lm"), "-f", SPEC, "--algorithm", "gptq", "--calib", str(tmp_path / "calib.txt"),
            "--nsamples", "4", "--seqlen", "32", "--target", "embedding", "--out", str(embeddings_only)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    model = load_quantized(embeddings_only)
    assert not any(isinstance(m, QuantizedLinear) for m in model.modules())
