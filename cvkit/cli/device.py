"""`cvkit device`."""

from __future__ import annotations

import typer

from cvkit import ui
from cvkit.cli.options import JsonOpt


def device_cmd(json: JsonOpt = False):
    """Show versions, CPU, GPUs and the device and precision that `auto` picks."""
    from cvkit.commands.device import device_report, render_device_report

    report = device_report()
    ui.print_json(report) if json else render_device_report(report)


def register(app: typer.Typer) -> None:
    app.command("device", rich_help_panel="Inspect")(device_cmd)
