"""The `cvkit data` group: demo, check, download."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cvkit import ui
from cvkit.cli.options import JsonOpt


def data_demo_cmd(
    folder: Annotated[str, typer.Argument(
        metavar="FOLDER", help="Where to draw the demo tree (train/ and val/).")] = "data/shapes",
    seed: Annotated[int, typer.Option(metavar="N", help="Seed of the drawing (same seed, same images).")] = 0,
    train_per_class: Annotated[Optional[int], typer.Option(
        min=1, metavar="N", show_default="1000", help="Training pictures per shape.")] = None,
    val_per_class: Annotated[Optional[int], typer.Option(
        min=1, metavar="N", show_default="100", help="Validation pictures per shape.")] = None,
    size: Annotated[Optional[int], typer.Option(
        min=16, metavar="PIXELS", show_default="64", help="Side of each square picture.")] = None,
    json: JsonOpt = False,
):
    """Draw the built-in synthetic shapes dataset (circles, squares, triangles, stars), offline."""
    from cvkit.commands.data import make_demo_data

    result = make_demo_data(folder, seed=seed, train_per_class=train_per_class, val_per_class=val_per_class,
                            size=size)
    ui.print_json(result) if json else ui.out.print(
        f"{result['root']}: {result['counts']['train']} train / {result['counts']['val']} val images "
        f"of {', '.join(result['classes'])}" + ("" if result.get("created") else " (already there)"),
        markup=False, highlight=False)


def data_check_cmd(
    data: Annotated[str, typer.Argument(metavar="DATA", help="Image folder, as for train.")],
    quick: Annotated[bool, typer.Option(
        "--quick", metavar="", help="Only the structure: skip decoding and hashing every image.")] = False,
    json: JsonOpt = False,
):
    """Check an image folder before training: class counts, imbalance, empty or missing classes,
    unreadable images, val images duplicated in train. Changes nothing; exit 3 on errors."""
    from cvkit.commands.data import render_check
    from cvkit.data import check_data

    report = check_data(data, deep=not quick)
    ui.print_json(report) if json else render_check(report)
    if report["errors"] or report.get("unreadable"):
        raise typer.Exit(3)


def data_download_cmd(
    name: Annotated[str, typer.Argument(metavar="NAME", help="cifar10, mnist or fashion-mnist.")],
    folder: Annotated[str, typer.Argument(metavar="FOLDER", help="Where to write the ImageFolder tree.")],
    json: JsonOpt = False,
):
    """Download a torchvision dataset and write it out as an ImageFolder tree (needs internet)."""
    from cvkit.commands.data import download_dataset

    result = download_dataset(name, folder)
    ui.print_json(result) if json else ui.out.print(
        f"{result['root']}: {result['counts']['train']} train / {result['counts']['val']} val images, "
        f"{len(result['classes'])} classes")


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(no_args_is_help=True, help="Make and check image folders.")
    app.add_typer(data_app, name="data", rich_help_panel="Data")
    data_app.command("demo")(data_demo_cmd)
    data_app.command("check")(data_check_cmd)
    data_app.command("download")(data_download_cmd)
