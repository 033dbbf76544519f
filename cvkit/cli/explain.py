"""`cvkit explain`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cvkit import ui
from cvkit.cli.options import DEVICE_HELP, CheckpointOpt, JsonOpt

TTA_HELP = ("Test-time augmentation: explain the class of the mean probabilities of each image and its "
            "mirror; the heatmap is the mean of both (the mirror's mirrored back).")


def explain_cmd(
    images: Annotated[list[str], typer.Argument(
        metavar="IMAGE", show_default=False, help="Image files, folders or globs (one or more).")],
    checkpoint: CheckpointOpt = None,
    target: Annotated[Optional[str], typer.Option(
        "--class", metavar="NAME", show_default="the predicted class",
        help="Explain this class for every image (one of the checkpoint's classes).")] = None,
    out: Annotated[Optional[str], typer.Option(
        metavar="FILE.png", show_default="no picture",
        help="Draw each image, its heatmap and the overlay, with class and probability, into this PNG.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, metavar="N", help="Images per batch.")] = 16,
    device: Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)] = "auto",
    tta: Annotated[bool, typer.Option("--tta", metavar="", help=TTA_HELP)] = False,
    json: JsonOpt = False,
):
    """Show where the model looked: Grad-CAM heatmaps for the predicted (or a chosen) class."""
    from cvkit.commands.explain import explain_images, render_explanations

    report = explain_images(images, checkpoint=checkpoint, target=target, out=out, batch_size=batch_size,
                            device=device, tta=tta)
    for item in report["skipped"]:  # on stderr, so --json stays clean
        ui.warn(f"skipped {item['path']}: {item['reason']}")
    ui.print_json(report) if json else render_explanations(report)


def register(app: typer.Typer) -> None:
    app.command("explain", rich_help_panel="Train and use")(explain_cmd)
