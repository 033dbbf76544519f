"""`cvkit lr-find`. The data and model options are train's own (imported, not copied)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cvkit import ui
from cvkit.cli.options import D, DatasetOpt, JsonOpt, OptOpt, ValSplitOpt, _given
from cvkit.cli.train import (BatchSizeOpt, ConfigOpt, DataArg, DeviceOpt, LossOpt, ModelOpt, OptimizerOpt,
                             PrecisionOpt, RecipeOpt, SeedOpt, TransformsOpt, WeightsOpt, WorkersOpt)

StartLrOpt = Annotated[float, typer.Option(metavar="LR", help="The learning rate of the first step.")]
EndLrOpt = Annotated[float, typer.Option(metavar="LR", help="The learning rate of the last step.")]
StepsOpt = Annotated[int, typer.Option(
    metavar="N", help="Optimizer steps, one batch each, the lr rising exponentially from --start-lr to --end-lr "
                      "(the training images are cycled if they give fewer batches; at most 1000).")]
PlotOpt = Annotated[Optional[str], typer.Option(
    "--out", metavar="FILE.png|DIR", show_default="no plot",
    help="Write the plot of loss against lr there (a folder: DIR/lr_find.png).")]


def lr_find_cmd(
    data: DataArg = None,
    model: ModelOpt = D.model,
    dataset: DatasetOpt = D.dataset,
    val_split: ValSplitOpt = None,
    transforms: TransformsOpt = None,
    weights: WeightsOpt = None,
    batch_size: BatchSizeOpt = D.batch_size,
    recipe: RecipeOpt = D.recipe,
    optimizer: OptimizerOpt = None,
    loss: LossOpt = None,
    opt: OptOpt = None,
    device: DeviceOpt = D.device,
    precision: PrecisionOpt = D.precision,
    workers: WorkersOpt = str(D.workers),
    seed: SeedOpt = D.seed,
    config: ConfigOpt = None,
    start_lr: StartLrOpt = 1e-7,
    end_lr: EndLrOpt = 10.0,
    steps: StepsOpt = 100,
    out: PlotOpt = None,
    json: JsonOpt = False,
    ctx: typer.Context = None,
):
    """Find a learning rate: train with it rising step by step and plot the loss (fastai's range test); writes nothing but --out."""
    from cvkit.commands.lr_find import lr_find, render_lr_find
    from cvkit.options import parse_opts

    values = dict(data=data, model=model, dataset=dataset, val_split=val_split, transforms=transforms,
                  weights=weights, batch_size=batch_size, recipe=recipe, optimizer=optimizer, loss=loss, device=device,
                  precision=precision, workers=workers, seed=seed, options=parse_opts(opt) or None)
    given = {k: v for k, v in values.items() if v is not None and _given(ctx, k)}  # a config file fills the rest
    report = lr_find(cli_values=given, config_file=config, start_lr=start_lr, end_lr=end_lr, steps=steps,
                     out=out, show_progress=not json)
    ui.print_json(report) if json else render_lr_find(report)


def register(app: typer.Typer) -> None:
    app.command("lr-find", rich_help_panel="Train and use")(lr_find_cmd)
