"""Where cvkit writes: tables and progress to stdout, warnings and errors to stderr, JSON as plain text."""

from __future__ import annotations

import json
import sys

from rich.console import Console

out = Console()
err = Console(stderr=True)


def warn(message: str) -> None:
    err.print(f"cvkit: warning: {message}", markup=False, highlight=False, soft_wrap=True)


def error(message: str) -> None:
    err.print(f"cvkit: error: {message}", markup=False, highlight=False, soft_wrap=True)


def print_json(data) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def make_progress(*, enabled: bool = True, console: Console | None = None):
    """A rich progress bar for batches: count, images/s, ETA and a free-form ``stats`` field."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
        TextColumn("{task.fields[stats]}"),
        console=console or out, transient=True, disable=not enabled,
    )
