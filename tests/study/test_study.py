"""`wquant study` on a tiny encoder saved to disk: stages, the decision, the report, resume, determinism, and the
report opened in headless Chromium."""

from __future__ import annotations

import base64
import csv
import html
import json
import re
import shutil
import subprocess

import pytest
import torch

from wquant.errors import ParameterError
from wquant.study.pipeline import StudyConfig, run_study

TEXT = "The quick brown fox jumps over the lazy dog while the cat sleeps in the warm sun.\n" * 4
BUDGET = 6.0


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
    config = StudyConfig(str(model_dir), budget=BUDGET, max_texts=12, probe=12)
    return config, run_study(config, out, progress=False)


def read_rows(path):
    with open(path, newline="") as handle:
        return [r for r in csv.DictReader(handle) if r["section"] != "timing"]


def test_every_stage_runs_and_the_shipped_plan_never_loses_to_a_uniform_plan(study):
    config, result = study
    assert [r.name for r in result.stages] == ["profile", "plan", "evaluate", "formats", "theory"]
    assert not any(r.cached for r in result.stages)
    plan = json.loads((result.out / "stages" / "plan.json").read_text())["result"]
    decision = plan["decision"]
    uniform = decision["uniform"]
    assert uniform and all(c["plan"]["bits_per_param"] <= BUDGET for c in uniform)
    shipped = decision["allocation"] if decision["shipped"] == "allocation" else next(
        c for c in uniform if c["label"] == decision["shipped"]
    )  # fmt: skip
    assert shipped["plan"]["bits_per_param"] <= BUDGET
    assert all(shipped["distortion"] <= c["distortion"] for c in (decision["allocation"], *uniform))
    summary = result.summary
    assert summary.applied["bits_per_param"] == pytest.approx(summary.shipped["bits_per_param"], abs=1e-12)
    assert json.loads(result.plan.read_text())["bits_per_param"] == summary.shipped["bits_per_param"]
    rows = read_rows(result.table)
    variants = {r["item"] for r in rows if r["section"] == "variant"}
    assert {"Fisher-proxy allocation (paper's rule)", "uniform nf4/block64:absmax:fp32"} <= variants
    assert any(v.startswith("wquant allocation at") for v in variants)
    shown = {
        r["item"]: float(r["value"]) for r in rows if r["section"] == "recommendation" and r["metric"] == "distortion"
    }
    assert shown == {summary.shipped["variant"]: summary.shipped["distortion"]}  # the csv holds the report's numbers


def test_report_is_a_self_contained_decision_document(study, model_dir):
    _, result = study
    page = result.report.read_text()
    images = re.findall(r"src='data:image/png;base64,([^']+)'", page)
    assert len(images) == 5  # Pareto, heat map, theory width, phase diagram, formats vs R(D)
    assert all(base64.b64decode(img)[:4] == b"\x89PNG" for img in images)
    assert "http" not in page  # nothing to fetch: it opens offline
    assert str(model_dir) not in page and "site-packages" not in page and "/tmp" not in page  # no machine path
    assert f"How to quantize {model_dir.name} at 6 bits/param" in page
    assert html.escape(result.summary.sentence) in page and result.summary.sentence.startswith("Use ")
    assert "Kashiwamura" in page and "the seed" not in page
    for algorithm in ("gptq", "awq", "smoothquant", "zeroquant"):  # the study lists every registered algorithm
        assert f"--plan plan.json --algorithm {algorithm} --calib FILE" in page
    assert page.index("id='recommendation'") < page.index("id='pareto'") < page.index("id='heatmap'")
    assert page.index("<h2>Timings</h2>") > page.index("Supporting detail")


def test_rerun_resumes_from_cached_stages_and_recomputes_only_missing_ones(study):
    config, result = study
    (result.out / "stages" / "evaluate.json").unlink()  # as if the run died during evaluation
    again = run_study(config, result.out, force=True, progress=False)
    assert [r.cached for r in again.stages] == [True, True, False, True, True]
    assert read_rows(again.table) == read_rows(result.table)  # same inputs, same seed: same numbers


def test_existing_report_unwritable_folder_and_shared_text_are_refused(study, tmp_path):
    config, result = study
    with pytest.raises(ParameterError, match="exists; pass --force"):
        run_study(config, result.out, progress=False)
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(ParameterError, match="is a file"):
        run_study(config, blocked / "out", progress=False)
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    copy = tmp_path / "copy.txt"
    copy.write_text(TEXT)
    for calib in (text, copy):  # the same file, or the same text under another name
        with pytest.raises(ParameterError, match="same text"):
            run_study(StudyConfig(config.model, text=str(text), calib=str(calib)), tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


CHECK = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message || e.type)), true);
const origError = console.error;
console.error = (...a) => { window.__errors.push(a.join(' ')); origError(...a); };
window.addEventListener('load', () => {
  const images = [...document.images].map(i => ({figure: (i.closest('figure') || {}).id || '',
                                                 ok: i.complete && i.naturalWidth > 0}));
  const rec = (document.getElementById('recommendation') || {}).textContent || '';
  const out = document.createElement('pre');
  out.id = 'wquant-check';
  out.textContent = JSON.stringify({images, rec, errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (make test installs it where it can)")
def test_report_renders_in_headless_chromium_without_errors(study, tmp_path):
    _, result = study
    page = tmp_path / "report.html"
    page.write_text(result.report.read_text().replace("<head>", "<head>" + CHECK, 1))
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
         "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0", "--dump-dom", page.as_uri()],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    found = re.search(r'<pre id="wquant-check">(.*?)</pre>', proc.stdout, flags=re.S)
    assert found, f"the page did not finish loading:\n{proc.stderr[-2000:]}"
    check = json.loads(html.unescape(found.group(1)))
    assert check["errors"] == []
    console = [line for line in proc.stderr.splitlines() if "CONSOLE" in line and "error" in line.lower()]
    assert console == []
    assert check["rec"].startswith("Use ") and "bits/param" in check["rec"] and "ships as" in check["rec"]
    figures = {img["figure"]: img["ok"] for img in check["images"]}
    assert figures.get("pareto") and figures.get("heatmap")  # present and decoded
    assert all(img["ok"] for img in check["images"]), check["images"]  # no missing image anywhere


def test_cli_passes_every_option_and_prints_the_recommendation(model_dir, tmp_path):
    from typer.testing import CliRunner

    from wquant.cli.main import app

    calib = tmp_path / "calib.txt"
    calib.write_text(
        "\n".join([f"A calibration paragraph that is long enough to count, number {i}." for i in range(8)])
    )
    args = ["study", str(model_dir), "--out", str(tmp_path / "out"), "--budget", "6", "--max-texts", "6",
            "--seed", "3", "--calib", str(calib), "--formats", "int{b}/block32:absmax:bf16",
            "--formats", "uniform@{b}/tensor:rms:bf16+coded"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "\nUse " in result.output and "ships as" in result.output
    assert "report:" in result.output and (tmp_path / "out" / "report.html").is_file()
    plan = json.loads((tmp_path / "out" / "plan.json").read_text())
    assert {t["family"] for t in plan["tensors"]} <= {"int{b}/block32:absmax:bf16", "uniform@{b}/tensor:rms:bf16+coded"}
