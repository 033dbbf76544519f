"""The `cvkit data` group: demo, check, download, shard."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cvkit import ui
from cvkit.cli.options import DatasetOpt, JsonOpt, OptOpt


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
    data: Annotated[str, typer.Argument(metavar="DATA", help="The data, as for train.")],
    dataset: DatasetOpt = "imagefolder",
    opt: OptOpt = None,
    quick: Annotated[bool, typer.Option(
        "--quick", metavar="", help="Only the structure: skip decoding and hashing every image.")] = False,
    json: JsonOpt = False,
):
    """Check data before training (any format): class counts, imbalance, empty or missing classes,
    unreadable images, val images duplicated in train. Changes nothing; exit 3 on errors."""
    from cvkit.commands.data import render_check
    from cvkit.datacheck import check_data
    from cvkit.options import parse_opts

    report = check_data(data, dataset=dataset, options=parse_opts(opt).get("dataset"), deep=not quick)
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


def data_shard_cmd(
    data: Annotated[str, typer.Argument(metavar="DATA", help="The images to shard, as for train.")],
    out: Annotated[str, typer.Argument(
        metavar="OUT", help="New or empty folder for the shards, manifest.json and classes.txt.")],
    dataset: DatasetOpt = "imagefolder",
    shard_size: Annotated[int, typer.Option(
        min=1, metavar="N", help="Most images per shard (a split's shards differ by at most one image).")] = 1000,
    val_split: Annotated[Optional[float], typer.Option(
        metavar="FRACTION", show_default="none: DATA has its own val split",
        help="Hold out this fraction of each class as val shards (for data without a validation split).")] = None,
    seed: Annotated[int, typer.Option(
        metavar="N", help="Seed of the order of the images in the shards and of --val-split.")] = 0,
    opt: OptOpt = None,
    json: JsonOpt = False,
):
    """Write DATA as WebDataset tar shards (OUT/train-000000.tar ..., OUT/val-000000.tar ...) with
    manifest.json, for cvkit train OUT --dataset webdataset. Image files are stored as they are."""
    from cvkit.commands.shards import write_shards
    from cvkit.options import parse_opts

    manifest = write_shards(data, out, dataset=dataset, shard_size=shard_size, val_split=val_split, seed=seed,
                            options=parse_opts(opt).get("dataset"), show_progress=not json)
    if json:
        return ui.print_json(manifest)
    counts = ", ".join(f"{len(s['shards'])} {name} shard{'s' * (len(s['shards']) != 1)} ({s['samples']} images)"
                       for name, s in manifest["splits"].items())
    ui.out.print(f"{out}: {counts}, {len(manifest['classes'])} classes; manifest.json",
                 markup=False, highlight=False)


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(no_args_is_help=True, help="Make, check and convert training data.")
    app.add_typer(data_app, name="data", rich_help_panel="Data")
    data_app.command("demo")(data_demo_cmd)
    data_app.command("check")(data_check_cmd)
    data_app.command("download")(data_download_cmd)
    data_app.command("shard")(data_shard_cmd)
