"""`cvkit predict`."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from cvkit import ui
from cvkit.cli.options import DEVICE_HELP, PRECISION_HELP, CheckpointOpt, JsonOpt, OptOpt

TTA_HELP = ("Test-time augmentation: also run each image mirrored left to right; the probabilities are "
            "the mean of the two passes' (about twice the time).")


def predict_cmd(
    images: Annotated[list[str], typer.Argument(
        metavar="IMAGE", show_default=False, help="Image files, folders or globs (one or more); with --dataset, the DATA to read.")],
    checkpoint: CheckpointOpt = None,
    top_k: Annotated[int, typer.Option(min=1, metavar="K", help="Classes shown per image.")] = 3,
    batch_size: Annotated[int, typer.Option(min=1, metavar="N", help="Images per batch.")] = 32,
    device: Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)] = "auto",
    precision: Annotated[str, typer.Option(metavar="PRECISION", help=PRECISION_HELP)] = "auto",
    grid: Annotated[Optional[str], typer.Option(
        metavar="FILE.png", show_default="no picture",
        help="Also draw the pictures with their predicted labels into this PNG.")] = None,
    grid_input: Annotated[bool, typer.Option(
        "--grid-input", metavar="",
        help="Draw the model's input (after the eval transform) in --grid instead of the original picture.")] = False,
    csv: Annotated[bool, typer.Option(
        "--csv", metavar="", help="Print CSV (path, rank, label, probability) on stdout.")] = False,
    dataset: Annotated[Optional[str], typer.Option(
        metavar="NAME", show_default="image files",
        help="Read IMAGE as data of this format (e.g. csv, webdataset) and predict every image it holds.")] = None,
    tta: Annotated[bool, typer.Option(
        "--tta", metavar="", help=TTA_HELP)] = False,
    opt: OptOpt = None,
    json: JsonOpt = False,
):
    """Predict the top-k classes of images with a trained checkpoint."""
    from cvkit.commands.predict import predict_images, predict_summary, predictions_csv, render_predictions
    from cvkit.options import parse_opts

    if csv and json:
        raise typer.BadParameter("choose one of --csv and --json")
    report = predict_images(images, checkpoint=checkpoint, top_k=top_k, batch_size=batch_size,
                            device=device, precision=precision, grid=grid, grid_input=grid_input,
                            dataset=dataset, dataset_options=parse_opts(opt).get("dataset"), tta=tta)
    for item in report["skipped"]:  # on stderr, so --json and --csv stay clean
        ui.warn(f"skipped {item['path']}: {item['reason']}")
    if json:
        tta = {"tta": report["tta"]} if report.get("tta") else {}  # which views each prediction averages
        ui.print_json([{"path": r["path"], "predictions": r["predictions"], **tta} for r in report["results"]])
    elif csv:
        sys.stdout.write(predictions_csv(report))
        sys.stdout.flush()  # the data first: a reader that went away stops cvkit before the summary
    else:
        render_predictions(report)
    if json or csv:  # stdout holds only the data
        ui.err.print(predict_summary(report), markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("predict", rich_help_panel="Train and use")(predict_cmd)
