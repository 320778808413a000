"""`wquant formats compare` and `wquant train-lm` refuse bad input with one line and write nothing; `--version`."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from hostile.harness import Hostile, run_refused
from wquant import __version__
from wquant.cli.main import app

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 20


def _compare(name: str) -> tuple[str, ...]:
    return ("formats", "compare", "--dist", f"{{tmp}}/{name}.safetensors:w", "-f", "nf4")


def _train(*options: str) -> tuple[str, ...]:
    return ("train-lm", "{tmp}/text.txt", "--out", "{tmp}/lm", "--steps", "1", *options)


CORRUPT = r"is not a valid safetensors file \(.+\); re-create it from its source"
ROWS = [
    Hostile("compare-truncated", _compare("truncated"), CORRUPT, 2, "safetensors_files"),
    Hostile("compare-garbage", _compare("garbage"), CORRUPT, 2, "safetensors_files"),
    Hostile("compare-empty-file", _compare("empty"), CORRUPT, 2, "safetensors_files"),
    Hostile("compare-header-length-2^62", _compare("huge_header"), CORRUPT, 2, "safetensors_files"),
    Hostile("compare-header-not-json", _compare("bad_json"), CORRUPT, 2, "safetensors_files"),
    Hostile("compare-beyond-float32", _compare("float64_1e300"), r"reaches 1e\+300, beyond float32", 2,
            "safetensors_files"),
    Hostile("train-odd-head-size", _train("--hidden-size", "7"),
            r"odd head size 7; rotary embeddings need an even one: use hidden_size 8", 2, "text"),
    Hostile("train-zero-width", _train("--hidden-size", "0"), r"hidden_size must be in \[1, inf\], got 0", 2,
            "text"),
    Hostile("train-negative-layers", _train("--layers", "-1"), r"layers must be in \[1, inf\]", 2, "text"),
    Hostile("train-context-1", _train("--context", "1"), r"context must be in \[2, inf\]", 2, "text"),
    Hostile("train-too-big-for-memory", _train("--hidden-size", "1048576"),
            r"needs about .* but only .* is available; choose a smaller model", 2, "text"),
    Hostile("train-existing-out", _train(), r"lm exists and is not empty; pass --force to replace it", 2,
            "existing_out"),
    Hostile("train-out-is-a-file", ("train-lm", "{tmp}/text.txt", "--out", "{tmp}/text.txt"),
            r"--out .*text\.txt is a file, not a folder", 2, "text"),
]  # fmt: skip


def safetensors_files(tmp: Path) -> None:
    save_file({"w": torch.randn(8, 64)}, str(tmp / "good.safetensors"))
    good = (tmp / "good.safetensors").read_bytes()
    (tmp / "truncated.safetensors").write_bytes(good[: len(good) // 2])
    (tmp / "garbage.safetensors").write_bytes(b"\xff" * 100)
    (tmp / "empty.safetensors").write_bytes(b"")
    (tmp / "huge_header.safetensors").write_bytes(struct.pack("<Q", 2**62) + b"{}")
    (tmp / "bad_json.safetensors").write_bytes(struct.pack("<Q", 10) + b'{"w":{"dtype"')
    save_file({"w": torch.full((4, 64), 1e300, dtype=torch.float64)}, str(tmp / "float64_1e300.safetensors"))


def text(tmp: Path) -> None:
    (tmp / "text.txt").write_text(TEXT)


def existing_out(tmp: Path) -> None:
    text(tmp)
    (tmp / "lm").mkdir()
    (tmp / "lm" / "model.safetensors").write_bytes(b"an earlier model")


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_refuses(row: Hostile, tmp_path: Path) -> None:
    if row.setup:
        globals()[row.setup](tmp_path)
    run_refused(row, tmp_path)


def test_version_prints_the_package_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"wquant {__version__}\n"


PLOT_ROWS = [
    Hostile("compare-plot-unknown-suffix", ("formats", "compare", "-f", "nf4", "--n", "4096", "--plot", "{tmp}/rd.gif"),
            r"--plot=.*rd\.gif' is invalid: the file must end in \.png", 2),
    Hostile("compare-plot-in-a-file", ("formats", "compare", "-f", "nf4", "--n", "4096", "--plot",
            "{tmp}/text.txt/rd.png"), r"text\.txt is a file, not a folder", 2, "text"),
]  # fmt: skip


@pytest.mark.parametrize("row", PLOT_ROWS, ids=[r.id for r in PLOT_ROWS])
def test_plot_refused_before_any_work(row: Hostile, tmp_path: Path) -> None:
    if row.setup:
        globals()[row.setup](tmp_path)
    run_refused(row, tmp_path)
