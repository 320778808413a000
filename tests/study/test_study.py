"""`wquant study` on a tiny encoder saved to disk: stages, budget, report, resume, determinism."""

from __future__ import annotations

import base64
import csv
import re
import shutil
import subprocess

import pytest
import torch

from wquant.errors import ParameterError
from wquant.study.pipeline import StudyConfig, run_study

TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.\n" * 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import BertConfig, BertModel

    from wquant.evaluate import char_tokenizer

    tokenizer = char_tokenizer(TEXT)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=128, max_position_embeddings=64, architectures=["BertModel"])  # fmt: skip
    folder = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def study(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    config = StudyConfig(str(model_dir), budget=12.0, max_texts=12)
    return config, run_study(config, out, progress=False)


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_every_stage_runs_and_the_plan_meets_the_budget(study):
    config, result = study
    assert [r.name for r in result.stages] == ["profile", "formats", "theory", "plan", "evaluate"]
    assert not any(r.cached for r in result.stages)
    rows = read_rows(result.table)
    bits = {
        r["item"]: float(r["value"]) for r in rows if r["section"] == "evaluate" and r["metric"] == "bits_per_param"
    }
    assert bits["Fisher allocation (int g64, 2-8 bits)"] <= config.budget  # int grids stop at 8 bits
    assert config.budget * 0.98 <= bits["uniform allocation, coded uniform grid"] <= config.budget
    cosine = {r["item"]: float(r["value"]) for r in rows if r["metric"] == "mean_cosine"}
    assert len(cosine) == 3 and all(0.9 < c <= 1.0 + 1e-6 for c in cosine.values())


def test_report_is_self_contained_with_figures(study):
    _, result = study
    page = result.report.read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 3
    assert all(base64.b64decode(img)[:4] == b"\x89PNG" for img in images)
    assert "http" not in page  # nothing to fetch: it opens offline


def test_rerun_resumes_from_cached_stages_and_recomputes_only_missing_ones(model_dir, study):
    config, result = study
    (result.out / "stages" / "evaluate.json").unlink()  # as if the run died during evaluation
    again = run_study(config, result.out, force=True, progress=False)
    assert [r.cached for r in again.stages] == [True, True, True, True, False]
    assert read_rows(again.table) == read_rows(result.table)  # same inputs, same seed: same numbers


def test_existing_report_and_unwritable_folder_are_refused(model_dir, study, tmp_path):
    config, result = study
    with pytest.raises(ParameterError, match="exists; pass --force"):
        run_study(config, result.out, progress=False)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(ParameterError, match="cannot write"):
        run_study(config, blocked / "out", progress=False)


@pytest.mark.skipif(shutil.which("chromium") is None, reason="Debian's chromium is not installed")
def test_report_renders_in_headless_chromium(study, tmp_path):
    _, result = study
    shot = tmp_path / "report.png"
    proc = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--window-size=1200,2400", f"--screenshot={shot}", "--enable-logging=stderr", "--v=0",
         result.report.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert shot.is_file() and shot.stat().st_size > 50_000  # figures and tables drew something substantial
    console_errors = [line for line in proc.stderr.splitlines() if "CONSOLE" in line and "ERROR" in line.upper()]
    assert not console_errors


def test_cli_passes_every_option_to_the_study(model_dir, tmp_path):
    from typer.testing import CliRunner

    from wquant.cli.main import app

    calib = tmp_path / "calib.txt"
    calib.write_text(
        "\n".join([f"A calibration paragraph that is long enough to count, number {i}." for i in range(8)])
    )
    args = ["study", str(model_dir), "--out", str(tmp_path / "out"), "--budget", "12", "--max-texts", "6",
            "--seed", "3", "--calib", str(calib)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "report:" in result.output and (tmp_path / "out" / "report.html").is_file()
