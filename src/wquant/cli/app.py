"""The one error path of every `wquant` command: a wquant error becomes one line on stderr and an exit status.

Commands raise `WquantError`s and never print them; `WquantApp` (a `typer.Typer` whose commands and groups
catch them) prints `error: <message>` on stderr and exits 2 for bad input, 1 for a solver that did not
converge, 130 on Ctrl-C. Every sub-command group is built with it, so the same holds when a group is run
on its own (as the tests do).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click
import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperCommand, TyperGroup

from wquant.errors import ConvergenceError, WquantError

EXIT_BAD_INPUT = 2
EXIT_NO_CONVERGENCE = 1
EXIT_INTERRUPTED = 130


def report_error(exc: WquantError) -> int:
    """Print a wquant error as one line on stderr; return the exit status it stands for."""
    message = " ".join(str(exc).split())  # one line, whatever the message's own line breaks
    Console(stderr=True, soft_wrap=True, highlight=False).print(f"[bold red]error:[/] {escape(message)}")
    return EXIT_NO_CONVERGENCE if isinstance(exc, ConvergenceError) else EXIT_BAD_INPUT


def _invoke_reporting(invoke: Callable[[click.Context], Any], ctx: click.Context) -> Any:
    try:
        return invoke(ctx)
    except WquantError as exc:
        raise typer.Exit(report_error(exc)) from None
    except KeyboardInterrupt:
        Console(stderr=True).print("interrupted; finished work is kept, rerun the command to resume")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _untyped_flags(params: list[click.Parameter]) -> list[click.Parameter]:
    """Flags (--force, --help) take no value, so help shows no `<bool>` type tag beside them."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:  # typer vendors its own click classes
            param.metavar = ""
    return params


class _Command(TyperCommand):
    def invoke(self, ctx: click.Context) -> Any:
        return _invoke_reporting(super().invoke, ctx)

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        return _untyped_flags(super().get_params(ctx))


class _Group(TyperGroup):
    def invoke(self, ctx: click.Context) -> Any:
        return _invoke_reporting(super().invoke, ctx)

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        return _untyped_flags(super().get_params(ctx))


class WquantApp(typer.Typer):
    """typer.Typer with wquant's error path, no rich tracebacks and no shell-completion options."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("no_args_is_help", True)
        super().__init__(cls=_Group, pretty_exceptions_enable=False, add_completion=False, **kwargs)

    def command(self, *args: Any, cls: type[TyperCommand] | None = None, **kwargs: Any) -> Any:
        return super().command(*args, cls=cls or _Command, **kwargs)


def stdout_console() -> Console:
    """Console for results: full width in pipes and logs, so spec strings are never cut."""
    return Console() if sys.stdout.isatty() else Console(width=160)
