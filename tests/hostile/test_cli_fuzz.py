"""Property-based fuzz of the CLI argument space: whatever the arguments, no traceback, no hang, a known exit.

`make fuzz` runs 5,000 examples per command (HYPOTHESIS_PROFILE=fuzz); `make test` a handful, so the
strategies stay exercised. Arguments mix valid values, near misses and garbage; numeric ranges stay where one
run takes well under a second, since the point is the argument handling, not the solvers' run time.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from wquant.cli.main import app

FUZZ = os.environ.get("HYPOTHESIS_PROFILE") == "fuzz"
EXAMPLES = 5000 if FUZZ else 12
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=not FUZZ,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])  # fmt: skip
runner = CliRunner()

garbage = st.sampled_from(["", " ", "nan", "inf", "-inf", "1e999", "-0", "0x10", "☃", "--", "a,b", "1,,2", "None"])
numbers = st.one_of(st.integers(-3, 20).map(str), st.floats(-10, 10, allow_nan=False).map(repr), garbage)

elements = st.sampled_from(["int4", "int3:asym", "int8:unsigned", "uint2", "int0", "int17", "e2m1", "e4m3", "e9m9",
                            "nf4", "af4", "sf4", "lut:-1,0,1", "lut:1,0", "crd-t5:3", "crd-normal:4:asym", "lloydmax:2",
                            "pow0.5:3", "uniform0.5", "uniform@3", "bogus", "fp4", ""])  # fmt: skip
grans = st.sampled_from(["tensor", "channel", "block16", "block1", "block0", "block64", "blockx", ""])
rules = st.sampled_from(["absmax", "signmax", "span", "rms", "minmax", "zeropoint", "fp16", ""])
scales = st.sampled_from(["bf16", "fp16", "fp32", "e8m0", "e8m0-rceil", "e4m3", "ue4m3", "e1m0", "x", ""])
mods = st.lists(st.sampled_from(["+search", "+coded", "+coded:g64", "+coded:g0", "+outliers0.01", "+outliers2",
                                 "+outliers0.001:fp16", "+foo"]), max_size=2).map("".join)  # fmt: skip
specs = st.one_of(
    st.builds(lambda e, g, r, s, m: f"{e}/{g}:{r}:{s}{m}".replace("::", ":").rstrip(":"), elements, grans, rules,
              scales, mods),
    st.sampled_from(["mxfp4", "nvfp4", "nf4", "gptq-int4-g128", "int8-channel", "int4-g128"]),
    st.text(max_size=12),
)  # fmt: skip


def _no_traceback(argv: list[str]) -> None:
    result = runner.invoke(app, argv, catch_exceptions=True)
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{argv}: {type(result.exception).__name__}: {result.exception}"
    )
    assert result.exit_code in (0, 1, 2), (argv, result.exit_code, result.output[-400:])
    assert "Traceback" not in result.output, (argv, result.output[-800:])


@SETTINGS
@given(
    dist=st.one_of(st.sampled_from(["normal", "laplace", "t:5", "t:0", "t:-1", "t:x", "cauchy"]), st.text(max_size=8)),
    formats=st.lists(specs, max_size=3),
    bits=numbers,
    n=st.one_of(st.integers(-5, 3000).map(str), garbage),
    json=st.booleans(),
)  # fmt: skip
def test_fuzz_formats_compare(dist: str, formats: list[str], bits: str, n: str, json: bool) -> None:
    argv = ["formats", "compare", "--dist", dist, "--bits", bits, "--n", n]
    for spec in formats:
        argv += ["-f", spec]
    _no_traceback([*argv, *(["--json"] if json else [])])


@SETTINGS
@given(
    bits=st.one_of(st.integers(-1, 9).map(str), garbage),
    width=numbers,
    alpha=st.one_of(st.sampled_from(["0.3", "1", "2.5", "0", "-1"]), garbage),
    sigma=numbers,
    lam=numbers,
    beta=st.one_of(st.sampled_from(["1", "5", "inf", "0", "-2"]), garbage),
    cost=st.sampled_from(["V1", "V2", "V3", "V4", "", "v1"]),
    quant=st.sampled_from(["uniform", "power", "nf", ""]),
    levels=st.one_of(st.none(), st.sampled_from(["-1,0,1", "1", "0,0", "a", "-1e9,1e9", ""])),
)  # fmt: skip
def test_fuzz_theory_point(bits, width, alpha, sigma, lam, beta, cost, quant, levels) -> None:  # noqa: ANN001
    argv = ["theory", "point", "--bits", bits, "--width", width, "--alpha", alpha, "--sigma", sigma, "--lam", lam,
            "--beta", beta, "--cost", cost, "--quant", quant]  # fmt: skip
    _no_traceback([*argv, *(["--levels", levels] if levels is not None else [])])


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    from wquant.evaluate import char_tokenizer

    folder = tmp_path_factory.mktemp("fuzz") / "lm"
    text = "To be, or not to be, that is the question.\n" * 20
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(char_tokenizer(text)), hidden_size=16, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, intermediate_size=32,
                         max_position_embeddings=32, architectures=["LlamaForCausalLM"])  # fmt: skip
    LlamaForCausalLM(config).save_pretrained(folder)
    char_tokenizer(text).save_pretrained(folder)
    (folder.parent / "calib.txt").write_text(text)
    return folder


@SETTINGS
@given(
    spec=specs,
    algorithm=st.sampled_from(["rtn", "rtn-search", "gptq", "hqq", "nupes", "awq", ""]),
    override=st.one_of(st.none(), st.sampled_from(["lm_head=none", "*.q_proj=int8/channel", "=", "x", "*=nf4"])),
    target=st.one_of(st.none(), st.sampled_from(["linear", "embedding", "conv"])),
    exclude=st.one_of(st.none(), st.sampled_from(["*", "lm_head", "[", "*.mlp.*"])),
    calib=st.booleans(),
    force=st.booleans(),
)  # fmt: skip
def test_fuzz_quantize(tiny_lm: Path, spec, algorithm, override, target, exclude, calib, force) -> None:  # noqa: ANN001
    argv = ["quantize", str(tiny_lm), "-f", spec, "--algorithm", algorithm, "--out", str(tiny_lm.parent / "q"),
            "--nsamples", "2", "--seqlen", "8"]  # fmt: skip
    for flag, value in (("-o", override), ("-t", target), ("-x", exclude)):
        if value is not None:
            argv += [flag, value]
    if calib:
        argv += ["--calib", str(tiny_lm.parent / "calib.txt")]
    _no_traceback([*argv, *(["--force"] if force else [])])
