"""Running the Typer app: usage errors as one line, and a closed stdout ending cvkit quietly.

Click (under Typer) reports an unknown option, a missing argument or a bad value in a box of five
lines. cvkit says it in its own one line, with the closest option when there is one, and exits 2::

    cvkit: error: cvkit train: no such option --epoch (did you mean --epochs?); see 'cvkit train --help'
"""

from __future__ import annotations

import difflib
import os
import re
import sys

import typer
from typer.main import get_command

from cvkit import ui

try:  # typer >= 0.25 carries its own copy of click
    from typer._click.exceptions import ClickException, NoSuchOption, UsageError
except ImportError:  # pragma: no cover - older typer on click
    from click.exceptions import ClickException, NoSuchOption, UsageError

BROKEN_PIPE_EXIT = 141  # 128 + SIGPIPE: what a shell reports for `cat` whose reader went away


def invoke(app: typer.Typer, argv: list[str]) -> int:
    """Run the command ``argv`` names; returns its exit status (a usage error: 2, after one line)."""
    command = get_command(app)
    _plain_help_flags(command)
    try:
        with command.make_context("cvkit", list(argv)) as ctx:
            command.invoke(ctx)
        return 0
    except typer.Exit as exc:  # --help, --version, typer.Exit(n)
        return exc.exit_code
    except typer.Abort:
        ui.error("aborted")
        return 1
    except ClickException as exc:
        if _is_bare_group(exc):  # `cvkit` or `cvkit data` alone: the help, as before
            ui.out.print(exc.format_message(), markup=False, highlight=False, end="")
            return exc.exit_code
        ui.error(describe(exc))
        return exc.exit_code


def _plain_help_flags(command) -> None:
    """``--help`` takes no value: show no type after it (typer would write ``<bool>``); an argument's
    name (DATA, IMAGES...) says what it is: no ``<str>`` after it either."""
    option = command.get_help_option(typer.Context(command))
    if option is not None:
        option.metavar = ""
    for param in getattr(command, "params", ()):
        if param.param_type_name == "argument" and hasattr(param, "display_type_rich"):
            param.display_type_rich = lambda ctx: None
    for sub in getattr(command, "commands", {}).values():
        _plain_help_flags(sub)


def _is_bare_group(exc: ClickException) -> bool:
    return type(exc).__name__ == "NoArgsIsHelpError"


def describe(exc: ClickException) -> str:
    """One line for a click error: where, what, the closest option, and where to read more."""
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "cvkit"
    if isinstance(exc, NoSuchOption):
        message = f"no such option {exc.option_name}"
        close = difflib.get_close_matches(exc.option_name, list(exc.possibilities or ()), n=1)
        if close:
            message += f" (did you mean {close[0]}?)"
    else:
        message = " ".join(exc.format_message().split()).rstrip(".")
        message = re.sub(r"\. Did you mean (.+)\?$", r" (did you mean \1?)", message)
        message = message[:1].lower() + message[1:] if message[:2] != message[:2].upper() else message
    hint = f"; see '{where} --help'" if isinstance(exc, UsageError) else ""
    return f"{where}: {message}{hint}"


def silence_stdout() -> None:
    """Point stdout at /dev/null, so that the flushes still to come (at exit) cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
