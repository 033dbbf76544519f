"""`cvkit plugins` and `cvkit list`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cvkit import ui
from cvkit.cli.options import JsonOpt
from cvkit.plugins import get_plugins
from cvkit.registry import KINDS

REGISTRY_NAMES = list(KINDS.values())


def plugins_cmd(json: JsonOpt = False):
    """List installed plugins: where they come from, their hooks, what they registered, and failures."""
    from cvkit.commands.listing import plugins_report, render_plugins

    report = plugins_report(get_plugins())
    ui.print_json(report) if json else render_plugins(report)


def list_cmd(
    kind: Annotated[Optional[str], typer.Argument(
        metavar="KIND", show_default="all of them", help=f"What to list: {', '.join(REGISTRY_NAMES)}.")] = None,
    pattern: Annotated[Optional[str], typer.Argument(
        metavar="PATTERN", show_default=False, help="Only names matching this glob, e.g. 'resnet*'.")] = None,
    families: Annotated[bool, typer.Option(
        "--families", metavar="", help="Models counted per family (a model zoo has thousands).")] = False,
    json: JsonOpt = False,
):
    """List registered models, transforms, losses, optimizers, schedulers or datasets."""
    from cvkit.commands import listing

    if families:
        if kind not in ("models", "model"):
            raise typer.BadParameter("--families counts models: cvkit list models --families [PATTERN]")
        rows = listing.list_entries(get_plugins(), "models", pattern)["models"]
        ui.print_json({"families": listing.families(rows)}) if json else listing.render_families(rows)
        return
    report = listing.list_entries(get_plugins(), kind, pattern)
    ui.print_json(report) if json else listing.render_entries(report, summarise=kind is None and pattern is None)


def register(app: typer.Typer) -> None:
    app.command("plugins", rich_help_panel="Plugins")(plugins_cmd)
    app.command("list", rich_help_panel="Plugins")(list_cmd)
