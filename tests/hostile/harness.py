"""The contract every hostile row checks: a refusal is a non-zero exit, one line on stderr that says what to fix,
no traceback, and no output left behind (nothing created, nothing overwritten).

A row is `Hostile(id, argv, expect)`: `argv` is a `wquant` command line (strings may hold `{tmp}`, replaced by
the test's temporary folder), `expect` a regular expression the one-line message must match.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from typer.testing import CliRunner

from wquant.cli.main import app


@dataclass(frozen=True)
class Hostile:
    id: str
    argv: tuple[str, ...]
    expect: str  # regular expression the error line must match (case-insensitive)
    exit_code: int | None = None  # None: any non-zero status
    setup: str | None = field(default=None, compare=False)  # name of a setup function in the test module


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`: what 'nothing written, nothing overwritten' is checked against."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_refused(row: Hostile, tmp: Path) -> str:
    """Run the row's command in `tmp` and assert the refusal contract; returns the error line."""
    argv = [a.replace("{tmp}", str(tmp)) for a in row.argv]
    before = snapshot(tmp)
    result = CliRunner().invoke(app, argv, catch_exceptions=True)
    stderr = result.stderr
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"{row.id}: raised {type(result.exception).__name__}: {result.exception}"
    )
    assert result.exit_code != 0, f"{row.id}: exit 0, output: {result.output[-500:]}"
    if row.exit_code is not None:
        assert result.exit_code == row.exit_code, f"{row.id}: exit {result.exit_code}, stderr: {stderr}"
    assert "Traceback" not in stderr and "Traceback" not in result.stdout, f"{row.id}: traceback:\n{stderr}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")] or lines[-1:]
    assert len(errors) == 1, f"{row.id}: expected one error line, got:\n{stderr}"
    assert re.search(row.expect, errors[0], flags=re.IGNORECASE), f"{row.id}: {errors[0]!r} !~ {row.expect!r}"
    assert snapshot(tmp) == before, f"{row.id}: files were written or changed in {tmp}"
    return errors[0]
