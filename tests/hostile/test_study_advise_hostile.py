"""`wquant advise` and `wquant study` refuse with one line, before any work, and write nothing: a --fisher-dir
made for another model or setting, unwritable --plan-json / --out, the same text for calibration and
evaluation."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostile.harness import Hostile, run_refused

CALIB = "to be or not to be, that is the question: whether tis nobler in the mind to suffer the slings\n" * 30


def _advise(model: str, *options: str) -> tuple[str, ...]:
    return ("advise", f"{{tmp}}/{model}", "--budget", "4", "--calib", "{tmp}/calib.txt", "--window", "32",
            "--windows", "12", *options)  # fmt: skip


def _study(*options: str) -> tuple[str, ...]:
    return ("study", "{tmp}/a", "--budget", "6", *options)


ROWS = [
    Hostile("advise-fisher-dir-of-another-model", _advise("b", "--fisher-dir", "{tmp}/fisher"),
            r"the Fisher in .*fisher was estimated for another model's weights; point --fisher-dir at an empty "
            r"folder", 2, "fisher_of_a"),
    Hostile("advise-fisher-dir-of-another-mode", _advise("a", "--mode", "empirical", "--fisher-dir", "{tmp}/fisher"),
            r"was estimated for mode 'true' \(now 'empirical'\)", 2, "fisher_of_a"),
    Hostile("advise-fisher-dir-of-another-seed", _advise("a", "--seed", "1", "--fisher-dir", "{tmp}/fisher"),
            r"was estimated for seed 0 \(now 1\)", 2, "fisher_of_a"),
    Hostile("advise-fisher-dir-of-another-text", _advise("a", "--calib", "{tmp}/other.txt", "--fisher-dir",
                                                         "{tmp}/fisher"),
            r"was estimated for another calibration text", 2, "fisher_of_a"),
    Hostile("advise-fisher-dir-without-provenance", _advise("a", "--fisher-dir", "{tmp}/fisher"),
            r"records no model or settings \(saved by an older wquant\)", 2, "fisher_without_provenance"),
    Hostile("advise-plan-json-under-a-file", _advise("a", "--plan-json", "{tmp}/calib.txt/plan.json"),
            r"--plan-json .*calib\.txt is a file, not a folder", 2, "models"),
    Hostile("advise-plan-json-is-a-folder", _advise("a", "--plan-json", "{tmp}/a"),
            r"--plan-json .*a is a folder; give a file name", 2, "models"),
    Hostile("advise-out-is-a-file", _advise("a", "--apply", "--out", "{tmp}/calib.txt"),
            r"--out .*calib\.txt is a file, not a folder", 2, "models"),
    Hostile("advise-out-not-empty", _advise("a", "--apply", "--out", "{tmp}/b"),
            r"b exists and is not empty; pass --force", 2, "models"),
    Hostile("study-same-calib-and-text", _study("--text", "{tmp}/calib.txt", "--calib", "{tmp}/calib.txt",
                                                "--out", "{tmp}/o"),
            r"--calib and --text are the same text \(calib\.txt\); calibrate on one text and evaluate on another",
            2, "models"),
    Hostile("study-same-text-under-another-name", _study("--text", "{tmp}/calib.txt", "--calib", "{tmp}/copy.txt",
                                                         "--out", "{tmp}/o"),
            r"--calib and --text are the same text", 2, "models"),
    Hostile("study-out-under-a-file", _study("--out", "{tmp}/calib.txt/o"), r"calib\.txt is a file, not a folder",
            2, "models"),
    Hostile("study-missing-text", _study("--text", "{tmp}/missing.txt", "--out", "{tmp}/o"), r"missing\.txt", 2,
            "models"),
]  # fmt: skip


def _llama(seed: int):  # noqa: ANN202
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from wquant.evaluate import char_tokenizer

    tok = char_tokenizer(CALIB)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         tie_word_embeddings=False, bos_token_id=None, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)  # fmt: skip
    return LlamaForCausalLM(config).eval(), tok


def models(tmp: Path) -> None:
    for name, seed in (("a", 0), ("b", 1)):
        model, tok = _llama(seed)
        model.save_pretrained(str(tmp / name), safe_serialization=True)
        tok.save_pretrained(str(tmp / name))
    (tmp / "calib.txt").write_text(CALIB)
    (tmp / "copy.txt").write_text(CALIB)
    (tmp / "other.txt").write_text(CALIB.upper())


def fisher_of_a(tmp: Path) -> None:
    from wquant.allocation import FisherConfig, estimate_fisher
    from wquant.allocation.fisher import fisher_provenance
    from wquant.models import load_pretrained

    models(tmp)
    loaded = load_pretrained(tmp / "a")
    config = FisherConfig(window=32, max_windows=12)
    fisher = estimate_fisher(loaded.model, loaded.tokenizer, CALIB, loaded.task, config)
    fisher.save(tmp / "fisher", fisher_provenance(loaded.model, CALIB, loaded.task, config))


def fisher_without_provenance(tmp: Path) -> None:
    from wquant.allocation import FisherConfig, estimate_fisher
    from wquant.models import load_pretrained

    models(tmp)
    loaded = load_pretrained(tmp / "a")
    estimate_fisher(loaded.model, loaded.tokenizer, CALIB, loaded.task, FisherConfig(window=32, max_windows=12)).save(
        tmp / "fisher"
    )


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_refuses(row: Hostile, tmp_path: Path) -> None:
    if row.setup:
        globals()[row.setup](tmp_path)
    run_refused(row, tmp_path)


def test_a_matching_fisher_dir_is_reused(tmp_path: Path) -> None:
    """The refusals above are not a refusal of every reuse: the same model, text and settings load the cache."""
    from typer.testing import CliRunner

    from wquant.cli.main import app

    fisher_of_a(tmp_path)
    before = (tmp_path / "fisher" / "fisher.safetensors").read_bytes()
    args = [a.replace("{tmp}", str(tmp_path)) for a in _advise("a", "--fisher-dir", "{tmp}/fisher")]
    result = CliRunner().invoke(app, [*args, "--weighting", "mean"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "fisher" / "fisher.safetensors").read_bytes() == before
