"""`wquant qat` through typer's CliRunner on its sub-app: saves what `wquant quantize` saves, resumes, refuses."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from wquant.cli.qat import app
from wquant.formats import quantize
from wquant.models import load_pretrained, load_quantized, read_manifest

runner = CliRunner()


SMALL = ["--steps", "3", "--samples", "8", "--seq-len", "16", "--batch-size", "4", "--checkpoint-every", "2"]


def test_llm_qat_saves_a_packed_checkpoint_and_resumes(lm_dir, tmp_path) -> None:
    out = tmp_path / "q"
    args = [str(lm_dir), "-f", "int3/block16:absmax:bf16", "--out", str(out), *SMALL, "--keep-run"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "saved to" in first.output
    body = read_manifest(out)
    assert {p["spec"] for p in body["packed"].values()} == {"int3/block16:absmax:bf16"}
    model = load_quantized(out)
    ids = torch.randint(3, 20, (1, 10))
    with torch.no_grad():
        logits = model(ids).logits
    # the run folder holds the last checkpoint (step 3): the same command resumes there and saves the same model
    again = runner.invoke(app, [*args, "--force"])
    assert again.exit_code == 0, again.output
    assert "resuming from step 3" in again.output
    with torch.no_grad():
        assert torch.equal(load_quantized(out)(ids).logits, logits)
    assert (tmp_path / "q.qat-run").is_dir()


def test_peqa_trains_only_scales_on_the_text(lm_dir, text_file, tmp_path) -> None:
    out = tmp_path / "p"
    result = runner.invoke(app, [str(lm_dir), "-f", "int4:unsigned/block16:minmax:bf16", "--method", "peqa",
                                 "--text", str(text_file), "--out", str(out), *SMALL])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "p.qat-run").exists()  # run checkpoints removed once the model is saved
    base = load_pretrained(lm_dir).model
    linear = sum(m.weight.numel() for n, m in base.named_modules() if isinstance(m, torch.nn.Linear))
    assert f"{2 * linear // 16:,}" in result.output  # one scale + one offset per 16 weights


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--method", "peqa"], "give --text"), (["--method", "sgd"], "method 'sgd' unknown"),
     (["--learn-scales", "-f", "uniform0.1/tensor:rms:bf16+coded"], "uniform grid"), (["--steps", "-1"], "steps")],
)  # fmt: skip
def test_bad_input_is_refused_before_any_work(lm_dir, tmp_path, extra, message) -> None:
    result = runner.invoke(app, [str(lm_dir), "--out", str(tmp_path / "o"), *extra])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not (tmp_path / "o").exists()


def test_an_existing_output_folder_needs_force(lm_dir, tmp_path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "x").write_text("keep")
    result = runner.invoke(app, [str(lm_dir), "--out", str(out)])
    assert result.exit_code == 2
    assert "--force" in result.output


def test_a_qat_checkpoint_exports_to_gguf_exactly(lm_dir, tmp_path) -> None:
    """Trained in a GGUF type, saved like `wquant quantize` saves: `wquant export` writes it and gguf's own
    reader and dequantizer give back the trained weights."""
    gguf = pytest.importorskip("gguf")
    from wquant.cli.main import app as main_app

    out, path = tmp_path / "q", tmp_path / "m.gguf"
    trained = runner.invoke(app, [str(lm_dir), "-f", "q4_0", "--out", str(out), *SMALL, "--lr", "1e-3"])
    assert trained.exit_code == 0, trained.output
    exported = runner.invoke(main_app, ["export", str(out), "--to", "gguf", "--out", str(path)])
    assert exported.exit_code == 0, exported.output
    tensor = next(t for t in gguf.GGUFReader(str(path)).tensors if t.name == "blk.0.ffn_down.weight")
    assert tensor.tensor_type.name == "Q4_0"
    values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape([int(n) for n in reversed(tensor.shape)])
    model = load_quantized(out)
    base = load_pretrained(lm_dir).model
    down = model.model.layers[0].mlp.down_proj.weight.float()
    assert torch.equal(torch.from_numpy(values.copy()).float(), down)
    rtn = quantize(base.model.layers[0].mlp.down_proj.weight.detach(), "q4_0").dequantize()
    assert not torch.equal(down, rtn)  # trained codes, not the rounded float weight
