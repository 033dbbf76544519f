"""`cvkit export`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from typer.core import TyperCommand

from cvkit import ui
from cvkit.cli.options import JsonOpt

FORMAT_NAMES = "onnx, torchscript, pt2 (torch.export) or safetensors"
CHECK_IMAGES = 32  # what --check alone means


class ExportCommand(TyperCommand):
    """``--check`` takes an optional N: alone (last, or before another argument) it means N = 32."""

    def parse_args(self, ctx, args):
        args = list(args)
        for i, arg in enumerate(args):
            if arg == "--check" and (i + 1 == len(args) or not args[i + 1].isdigit()):
                args.insert(i + 1, str(CHECK_IMAGES))
        return super().parse_args(ctx, args)


def export_cmd(
    source: Annotated[Optional[str], typer.Argument(
        metavar="RUN_DIR|CHECKPOINT", show_default="best.pt of the newest run in ./runs/",
        help="A run directory (its best.pt) or a checkpoint file.")] = None,
    format: Annotated[str, typer.Option(
        "--format", "-f", metavar="FORMAT", help=f"The file to write: {FORMAT_NAMES}.")] = "onnx",
    out: Annotated[Optional[str], typer.Option(
        metavar="FILE", show_default="beside the checkpoint, named after it (best.onnx, ...)",
        help="Where to write the export.")] = None,
    check: Annotated[Optional[int], typer.Option(
        "--check", metavar="[N]", show_default=False,
        help="Run the export and the PyTorch model on N validation images (32 when N is left out; random "
             "inputs where there are none), print the largest logit difference and top-1 agreement; exit 1 "
             "unless they agree.")] = None,
    quantize: Annotated[Optional[str], typer.Option(
        metavar="int8", show_default="float32",
        help="With --format onnx: int8 weights and activations (onnxruntime's static quantization, "
             "calibrated on 128 of the run's training images).")] = None,
    json: JsonOpt = False,
):
    """Export a trained model with its classes and preprocessing, optionally checked against PyTorch."""
    from cvkit.commands.export import export_model, render_export

    report = export_model(source, fmt=format, out=out, check=check, quantize=quantize)
    ui.print_json(report) if json else render_export(report)
    if report.get("check") and not report["check"]["passed"]:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("export", cls=ExportCommand, rich_help_panel="Train and use")(export_cmd)
