"""`advise` through typer's CliRunner on a tiny saved Llama: the table, --apply --out, and errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from alloc_helpers import TEXT
from typer.testing import CliRunner

from wquant.cli.advise import app
from wquant.models import load_quantized, model_bits

runner = CliRunner()


@pytest.fixture()
def model_dir(tiny_llama, char_tok, tmp_path: Path) -> Path:  # noqa: ANN001
    folder = tmp_path / "tiny"
    tiny_llama.save_pretrained(str(folder), safe_serialization=True)
    char_tok.save_pretrained(str(folder))
    return folder


@pytest.fixture()
def calib(tmp_path: Path) -> Path:
    path = tmp_path / "calib.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _args(model_dir: Path, calib: Path, budget: str) -> list[str]:
    return [str(model_dir), "--budget", budget, "--calib", str(calib), "--window", "32", "--windows", "9",
            "--formats", "int{b}/block32:absmax:bf16", "--bits", "2,3,4,5,6,8"]  # fmt: skip


def test_prints_plan_and_applies_it(model_dir: Path, calib: Path, tmp_path: Path) -> None:
    out = tmp_path / "q"
    extra = [
        "--apply",
        "--out",
        str(out),
        "--fisher-dir",
        str(tmp_path / "f"),
        "--plan-json",
        str(tmp_path / "plan.json"),
    ]
    result = runner.invoke(app, [*_args(model_dir, calib, "4.0"), *extra])
    assert result.exit_code == 0, result.output
    assert "lm_head.weight" in result.output and "predicted distortion" in result.output and "all-in" in result.output
    loaded = load_quantized(out)
    bits = model_bits(loaded).bits_per_param
    planned = json.loads((tmp_path / "plan.json").read_text())["bits_per_param"]
    assert bits == planned <= 4.0
    assert (tmp_path / "f" / "fisher.json").is_file() and (tmp_path / "plan.json").is_file()
    again = runner.invoke(app, [*_args(model_dir, calib, "4.0"), "--fisher-dir", str(tmp_path / "f")])
    assert (
        again.exit_code == 0 and again.output.split("all-in")[1] == result.output.split("all-in")[1].split("saved")[0]
    )


def test_bad_input_exits_2_with_a_message(model_dir: Path, calib: Path) -> None:
    low = runner.invoke(app, _args(model_dir, calib, "1.0"))
    assert low.exit_code == 2 and "minimum achievable" in low.output
    no_out = runner.invoke(app, [*_args(model_dir, calib, "4.0"), "--apply"])
    assert no_out.exit_code == 2 and "--out" in no_out.output


def test_mounts_as_wquant_advise(model_dir: Path, calib: Path) -> None:
    root = typer.Typer()
    root.command("noop")(lambda: None)
    root.add_typer(app)  # merged: the lead mounts it this way in cli/main.py
    result = runner.invoke(root, ["advise", *_args(model_dir, calib, "4.5")])
    assert result.exit_code == 0, result.output
    assert "all-in" in result.output
