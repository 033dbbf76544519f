"""`cvkit preview`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cvkit import ui
from cvkit.cli.options import DatasetOpt, OptOpt, ValSplitOpt


def preview_cmd(
    data: Annotated[str, typer.Argument(metavar="DATA", help="The data, as for train.")],
    model: Annotated[str, typer.Option(
        "--model", "-m", metavar="NAME", help="Model whose input size and transforms to use.")] = "net",
    transforms: Annotated[Optional[str], typer.Option(
        metavar="NAME", show_default="the model's", help="Transforms to preview.")] = None,
    out: Annotated[str, typer.Option(metavar="FILE.png", help="PNG file to write.")] = "preview.png",
    count: Annotated[int, typer.Option(min=1, max=64, metavar="N", help="Images in the grid.")] = 16,
    dataset: DatasetOpt = "imagefolder",
    val_split: ValSplitOpt = None,
    opt: OptOpt = None,
    seed: Annotated[int, typer.Option(metavar="N", help="Which images and augmentations.")] = 0,
):
    """Save a grid of one augmented training batch with class names (the chapter's imshow)."""
    from cvkit.commands.preview import preview_batch
    from cvkit.options import parse_opts

    result = preview_batch(data, model=model, transforms=transforms, out=out, count=count, seed=seed,
                           dataset=dataset, val_split=val_split, options=parse_opts(opt))
    ui.out.print(result["path"], markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    app.command("preview", rich_help_panel="Train and use")(preview_cmd)
