"""The Typer app: the root callback (--verbose, --version, --trust-checkpoints) and every command.

Each command's wrapper lives in its own module with a ``register(app)``; the order of the calls
below is the order of the commands (and of their panels) in ``cvkit --help``.
"""

from __future__ import annotations

from typing import Annotated

import typer

from cvkit import __version__, ui
from cvkit.cli import data, device, explain, export, inspect_grad, listing, lr_find, predict, preview, serve, train
from cvkit.cli import eval as evaluate

COMMANDS = [device, listing, inspect_grad, train, lr_find, evaluate, predict, explain, export, serve, preview, data]  # each has register(app)


def _version(value: bool):
    if value:
        ui.out.print(f"cvkit {__version__}")
        raise typer.Exit()


def root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", metavar="", help="Show tracebacks for errors.")] = False,
    version: Annotated[bool, typer.Option("--version", metavar="", callback=_version, is_eager=True,
                                          help="Print cvkit's version.")] = False,
    trust_checkpoints: Annotated[bool, typer.Option(
        "--trust-checkpoints", metavar="",
        help="Load checkpoints that hold Python objects with full pickle, which can run any code: "
             "only for files from people you trust.")] = False,
):
    """cvkit: image classifiers from the command line."""
    if trust_checkpoints:
        from cvkit.checkpoint import trust_checkpoints as trust

        trust()


def make_app(plugins=None) -> typer.Typer:
    """The Typer app with cvkit's commands and those the plugins add."""
    app = typer.Typer(
        name="cvkit", no_args_is_help=True, add_completion=False,
        pretty_exceptions_show_locals=False,
        help="Train, check and use image classifiers with PyTorch. Models, transforms, losses, "
             "optimizers and datasets come from plugins (see `cvkit plugins`).",
    )
    app.callback()(root)
    for module in COMMANDS:
        module.register(app)
    if plugins is not None:
        plugins.add_commands(app)
    return app
