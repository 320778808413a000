"""Progress of long runs, on stderr so stdout stays data."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


@contextmanager
def progress_bar(description: str, total: int | None, *, enabled: bool = True) -> Iterator[Callable[..., None]]:
    """A rich progress bar; yields advance(n). Disabled, it costs nothing and prints nothing."""
    if not enabled:
        yield lambda n=1: None
        return
    columns = (
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    with Progress(*columns, transient=True, console=Console(stderr=True)) as progress:  # stdout stays data
        task = progress.add_task(description, total=total)
        yield lambda n=1: progress.advance(task, n)
