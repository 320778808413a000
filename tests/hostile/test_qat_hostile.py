"""`wquant qat` refuses bad input with one line and writes nothing (a tiny model on disk)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hostile.harness import Hostile, run_refused
from hostile.test_models_hostile import existing_out, lm


def corrupt_run(tmp: Path) -> None:
    lm(tmp)
    (tmp / "q.qat-run").mkdir()
    (tmp / "q.qat-run" / "qat-state.safetensors").write_bytes(b"\x00\x01 half a checkpoint")


def _qat(*options: str) -> tuple[str, ...]:
    return ("qat", "{tmp}/lm", "--out", "{tmp}/q", "--samples", "8", "--seq-len", "16", "--batch-size", "4", *options)


ROWS = [
    Hostile("qat-unknown-method", _qat("--method", "qlora"), r"QAT method 'qlora' unknown; valid: llm-qat, peqa, ste",
            2, "lm"),
    Hostile("qat-zero-steps", _qat("--steps", "0"), r"steps must be in \[1, inf\], got 0", 2, "lm"),
    Hostile("qat-negative-steps", _qat("--steps", "-5"), r"steps must be in \[1, inf\], got -5", 2, "lm"),
    Hostile("qat-bad-spec", _qat("-f", "int4/bogus"), r"granularity 'bogus' unknown", 2, "lm"),
    Hostile("qat-learned-scales-on-uniform", _qat("--learn-scales", "-f", "uniform0.1/tensor:rms:bf16+coded"),
            r"uniform grid's scale is its step", 2, "lm"),
    Hostile("qat-peqa-without-text", _qat("--method", "peqa"), r"--method peqa trains on text: give --text", 2, "lm"),
    Hostile("qat-llm-qat-with-text", _qat("--text", "{tmp}/text.txt"), r"llm-qat is data-free", 2, "lm"),
    Hostile("qat-existing-out", _qat(), r"q exists and is not empty; pass --force", 2, "existing_out"),
    Hostile("qat-corrupt-resume-file", _qat("--steps", "2"), r"not a readable QAT checkpoint .* --restart", 2,
            "corrupt_run"),
    Hostile("qat-bad-init", _qat("--init", "awq"), r"QAT init 'awq' unknown; valid: gptq, rtn", 2, "lm"),
]  # fmt: skip

SETUPS = {"lm": lm, "existing_out": existing_out, "corrupt_run": corrupt_run}


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_refuses(row: Hostile, tmp_path: Path) -> None:
    if row.setup:
        SETUPS[row.setup](tmp_path)
    run_refused(row, tmp_path)
