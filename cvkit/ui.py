"""Where cvkit writes: tables and progress to stdout, warnings and errors to stderr, JSON as plain text.

Lines are never hard-wrapped: a command or path cvkit prints stays one line to copy, and the
terminal folds it if it must. Where the stream is not a terminal (a pipe, a log, ``tee``) there is
no width at all: tables take the width they need. In a narrow terminal, :func:`fit` drops a
table's least important columns (in an order each table states) rather than cutting its numbers.
"""

from __future__ import annotations

import errno
import json
import sys

from rich.console import Console

UNBOUNDED = 4096  # the width of a stream that is not a terminal: wide enough for any table cvkit prints


class _Console(Console):
    def print(self, *objects, soft_wrap: bool | None = None, **kwargs) -> None:
        """Text is printed as one line (the terminal folds it); tables and panels fit the width."""
        if soft_wrap is None:
            soft_wrap = all(isinstance(o, str) for o in objects)
        super().print(*objects, soft_wrap=soft_wrap, **kwargs)

    def on_broken_pipe(self) -> None:
        """The reader went away: raise, so that cvkit ends as it ends everywhere else (rich would exit 1)."""
        self.quiet = True
        raise BrokenPipeError(errno.EPIPE, "the reader of cvkit's output went away")


def _console(stream) -> Console:
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):
        terminal = False
    return _Console(stderr=stream is sys.stderr, width=None if terminal else UNBOUNDED)


out = _console(sys.stdout)
err = _console(sys.stderr)


def warn(message: str) -> None:
    err.print(f"cvkit: warning: {message}", markup=False, highlight=False)


def error(message: str) -> None:
    err.print(f"cvkit: error: {message}", markup=False, highlight=False)


def print_json(data) -> None:
    """Machine-readable output: plain JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
    sys.stdout.flush()


def fit(table, drop: tuple[str, ...] = (), *, console: Console | None = None) -> list[str]:
    """Make ``table`` fit the console's width by removing the columns whose headers are named in
    ``drop``, in that order, only as far as needed; returns the headers removed.

    Values are never cut short with "…": every column folds what does not fit, and columns of
    numbers (``no_wrap``) keep their width while text columns give way first.
    """
    console = console or out
    for column in table.columns:
        column.overflow = "fold"
    dropped: list[str] = []
    pending = list(drop)
    while pending and not fits(table, console):
        name = pending.pop(0)
        index = next((i for i, c in enumerate(table.columns) if str(c.header) == name), None)
        if index is not None:
            del table.columns[index]
            dropped.append(name)
    return dropped


def fits(table, console: Console | None = None) -> bool:
    """Whether ``table`` at the width it would like (not the one it gets) fits the console."""
    from rich.measure import Measurement

    console = console or out
    return Measurement.get(console, console.options.update_width(UNBOUNDED), table).maximum <= console.width


def print_fitted(table, drop: tuple[str, ...] = (), *, console: Console | None = None) -> None:
    """Print ``table`` made to fit (see :func:`fit`), with one line naming the columns left out."""
    console = console or out
    dropped = fit(table, drop, console=console)
    console.print(table)
    if dropped:
        console.print(f"(not shown at {console.width} columns: {', '.join(dropped)})",
                      style="dim", markup=False, highlight=False)


def make_progress(*, enabled: bool = True, console: Console | None = None):
    """A rich progress bar for batches: count, images/s, ETA and a free-form ``stats`` field."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    console = console or out
    if console.width >= 100:
        columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                   TextColumn("{task.fields[stats]}"))
    else:  # a narrow terminal: what is left to do, then the running figures
        columns = (TextColumn("[bold]{task.description}"), MofNCompleteColumn(), TimeRemainingColumn(),
                   TextColumn("{task.fields[stats]}"))
    # not in a pipe or a log: there a bar is never drawn, and rich would leave an empty line
    return Progress(*columns, console=console, transient=True, disable=not enabled or not console.is_interactive)
