"""`cvkit eval`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cvkit import ui
from cvkit.analysis import TOP_LOSSES
from cvkit.cli.options import DEVICE_HELP, PRECISION_HELP, WORKERS_HELP, CheckpointOpt, JsonOpt, OptOpt

TTA_HELP = ("Test-time augmentation: also run each image mirrored left to right; loss, accuracy and "
            "scores are those of the mean of the two passes' probabilities (about twice the time).")


def eval_cmd(
    data: Annotated[Optional[str], typer.Argument(
        metavar="DATA", show_default="the run's own validation split",
        help="The data, as for train (its val split, or all of it when it has none).")] = None,
    checkpoint: CheckpointOpt = None,
    dataset: Annotated[Optional[str], typer.Option(
        metavar="NAME", show_default="the format the run trained on",
        help="Format of DATA (see `cvkit list datasets`).")] = None,
    opt: OptOpt = None,
    batch_size: Annotated[int, typer.Option(min=1, metavar="N", help="Images per batch.")] = 64,
    device: Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)] = "auto",
    precision: Annotated[str, typer.Option(metavar="PRECISION", help=PRECISION_HELP)] = "auto",
    workers: Annotated[str, typer.Option(metavar="N", help=WORKERS_HELP)] = "auto",
    out: Annotated[Optional[str], typer.Option(
        metavar="DIR", show_default="no pictures",
        help="Also write confusion_matrix.png and top_losses.png (the --top images of the highest loss) "
             "into this folder.")] = None,
    top: Annotated[int, typer.Option(
        metavar="N", help="Show the N images of the highest loss, worst first (in --json, and in "
                          "top_losses.png with --out); 0 for none.")] = TOP_LOSSES,
    tta: Annotated[bool, typer.Option(
        "--tta", metavar="", help=TTA_HELP)] = False,
    json: JsonOpt = False,
):
    """Evaluate a checkpoint: loss, top-1/top-5, per-class scores, confusion matrix, most confused, top losses."""
    from cvkit.commands.evaluate import evaluate_checkpoint, render_eval
    from cvkit.options import parse_opts

    report = evaluate_checkpoint(data=data, checkpoint=checkpoint, batch_size=batch_size, device=device,
                                 precision=precision, workers=workers, out=out, show_progress=not json,
                                 dataset=dataset, dataset_options=parse_opts(opt).get("dataset"), tta=tta,
                                 top=top)
    ui.print_json(report) if json else render_eval(report)


def register(app: typer.Typer) -> None:
    app.command("eval", rich_help_panel="Train and use")(eval_cmd)
