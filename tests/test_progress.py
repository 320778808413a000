"""Long runs report progress on stderr even when it is not a terminal (logs, pipes, CI)."""

from __future__ import annotations

import wquant.progress as progress


def test_plain_lines_when_stderr_is_not_a_terminal(capsys, monkeypatch) -> None:
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    with progress.progress_bar("KL / perplexity", 3, terminal=False) as advance:
        for _ in range(3):
            advance()
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert captured.out == "" and lines[-1].startswith("KL / perplexity: 3/3 in ") and len(lines) == 4


def test_a_slow_clock_prints_only_the_final_line(capsys) -> None:
    with progress.progress_bar("perplexity", 5, terminal=False) as advance:
        advance(5)
    assert capsys.readouterr().err.startswith("perplexity: 5/5 in ")


def test_disabled_prints_nothing(capsys) -> None:
    with progress.progress_bar("x", 2, enabled=False) as advance:
        advance(2)
    assert capsys.readouterr() == ("", "")
