"""Progress of long runs, on stderr so stdout stays data.

On a terminal: a live bar. Otherwise (a log file, a pipe, CI): a plain line at most every `LINE_SECONDS`
and one at the end, so a 14-minute evaluation is never silent.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

LINE_SECONDS = 30.0


@contextmanager
def progress_bar(
    description: str, total: int | None, *, enabled: bool = True, terminal: bool | None = None
) -> Iterator[Callable[..., None]]:
    """Yields advance(n). Disabled, it costs nothing and prints nothing; `terminal` overrides the TTY check."""
    if not enabled:
        yield lambda n=1: None
        return
    if not (sys.stderr.isatty() if terminal is None else terminal):
        yield from _lines(description, total)
        return
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, transient=True, console=Console(stderr=True)) as progress:  # stdout stays data
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)


def _lines(description: str, total: int | None) -> Iterator[Callable[..., None]]:
    start = last = time.monotonic()
    done = 0

    def line() -> None:
        of = f"/{total}" if total else ""
        print(f"{description}: {done}{of} in {time.monotonic() - start:.0f} s", file=sys.stderr, flush=True)

    def advance(n: int = 1) -> None:
        nonlocal done, last
        done += n
        if time.monotonic() - last >= LINE_SECONDS:
            last = time.monotonic()
            line()

    yield advance
    line()
