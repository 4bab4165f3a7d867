"""How commands print: JSON on stdout for scripts, Rich for people, messages on stderr."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["emit_json", "err", "out", "result", "say", "table"]


# Rich is imported on first use: a device running ``fleetup agent run`` prints little.
@functools.cache
def out() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


@functools.cache
def err() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def say(message: str) -> None:
    """A progress or status line for people, on stderr (stdout stays for results).

    Plain text needs no Rich: importing it would add 30 ms to every one-shot command."""
    click.echo(message, err=True)


def result(message: str) -> None:
    """A command's answer for people, on stdout (plain, as :func:`say`)."""
    click.echo(message)


def emit_json(value: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()


def table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    from rich.table import Table

    grid = Table(title=title, show_edge=False, header_style="bold")
    for column in columns:
        grid.add_column(column)
    for row in rows:
        grid.add_row(*("" if v is None else str(v) for v in row))
    out().print(grid)
