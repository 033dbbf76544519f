"""`cvkit train`. Its options are named here one by one, so the command reads as a list of them."""

from __future__ import annotations

import os
from typing import Annotated, Optional

import typer

from cvkit import ui
from cvkit.cli.options import (D, DEVICE_HELP, PRECISION_HELP, WORKERS_HELP, DatasetOpt, JsonOpt, OptOpt,
                               ValSplitOpt, _given)
from cvkit.cli.process import _LAUNCH_ARGV, _world_size
from cvkit.recipes import RECIPE_HELP

DataArg = Annotated[Optional[str], typer.Argument(
    metavar="DATA", show_default=False,
    help="Image folder: DATA/train/<class>/* and DATA/val/<class>/*, or DATA/<class>/* with --val-split.")]
ModelOpt = Annotated[str, typer.Option(
    "--model", "-m", metavar="NAME",
    help="Model to train: net (the chapter's LeNet), resnet18-finetune, resnet18-frozen, or a plugin's "
         "(see `cvkit list models`).")]
EpochsOpt = Annotated[int, typer.Option(
    metavar="N", help="Passes over the training images (the chapter trains 25).")]
BatchSizeOpt = Annotated[int, typer.Option(
    metavar="N", help="Images per optimizer step (with --nproc: across all processes).")]
RecipeOpt = Annotated[str, typer.Option(
    metavar="NAME", help="Defaults for the optimizer, lr, schedule and loss: " + RECIPE_HELP + ". Options "
                         "you give win.")]
LrOpt = Annotated[Optional[float], typer.Option(metavar="LR", show_default="the recipe's",
                                                help="Learning rate of the optimizer (the peak of the schedule).")]
OptimizerOpt = Annotated[Optional[str], typer.Option(
    metavar="NAME", show_default="the recipe's", help="Optimizer: sgd is the chapter's SGD with momentum 0.9 "
                                                      "(see `cvkit list optimizers`).")]
LossOpt = Annotated[Optional[str], typer.Option(
    metavar="NAME", show_default="the recipe's", help="Loss function (see `cvkit list losses`).")]
SchedulerOpt = Annotated[Optional[str], typer.Option(
    metavar="NAME", show_default="the recipe's",
    help="Learning-rate schedule: step is the chapter's StepLR, lr x0.1 every 7 epochs; cosine and onecycle "
         "step after every optimizer step (see `cvkit list schedulers`).")]
WarmupOpt = Annotated[Optional[float], typer.Option(
    metavar="EPOCHS", show_default="the recipe's",
    help="Linear warm-up of the lr over this many epochs (fractions allowed), for cosine and onecycle.")]
MixupOpt = Annotated[float, typer.Option(
    metavar="ALPHA", help="MixUp: blend pairs of training pictures and their labels, weight ~ Beta(ALPHA, ALPHA) "
                          "(0: off; 0.2 is common).")]
CutmixOpt = Annotated[float, typer.Option(
    metavar="ALPHA", help="CutMix: paste a patch of another training picture, labels by area (0: off; 1.0 is "
                          "common); with --mixup, one of the two per batch.")]
EmaOpt = Annotated[Optional[float], typer.Option(
    metavar="DECAY", show_default="off",
    help="Keep a moving average of the weights (e.g. 0.999); validation, best.pt and predictions use it.")]
AccumulateOpt = Annotated[int, typer.Option(
    min=1, metavar="N", help="Sum the gradients of N batches per optimizer step (an N x --batch-size batch "
                             "in the memory of one).")]
ClipGradOpt = Annotated[Optional[float], typer.Option(
    metavar="NORM", show_default="no clipping", help="Clip the gradients' total norm to NORM before each step.")]
BalanceOpt = Annotated[Optional[str], typer.Option(
    metavar="sampler|loss", show_default="off",
    help="Make rare classes count: sampler draws the training pictures with class-balancing weights; loss "
         "weighs the loss by class (from the training split's counts).")]
TransformsOpt = Annotated[Optional[str], typer.Option(
    metavar="NAME", show_default="the model's",
    help="Augmentation and preprocessing (see `cvkit list transforms`).")]
WeightsOpt = Annotated[Optional[str], typer.Option(
    metavar="WEIGHTS", show_default="the model's: imagenet for resnets",
    help="Starting weights: imagenet (downloaded once), none (random), or a state dict or cvkit "
         "checkpoint file.")]
DeviceOpt = Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)]
PrecisionOpt = Annotated[str, typer.Option(metavar="PRECISION", help=PRECISION_HELP)]
WorkersOpt = Annotated[str, typer.Option(metavar="N", help=WORKERS_HELP)]
SeedOpt = Annotated[int, typer.Option(
    metavar="N", help="Seed of the split, the new weights and the augmentation (same seed, same run).")]
PatienceOpt = Annotated[Optional[int], typer.Option(
    metavar="N", show_default="never stop early",
    help="Stop after N epochs without a better validation accuracy.")]
CallbackOpt = Annotated[Optional[list[str]], typer.Option(
    "--callback", metavar="NAME", show_default="none",
    help="Also run this training callback, e.g. tensorboard (repeatable; see `cvkit list callbacks`); its "
         "options: --opt callback.NAME.KEY=VALUE.")]
OnBadImageOpt = Annotated[str, typer.Option(
    metavar="error|skip",
    help="An unreadable image: error stops at it, naming it; skip checks every image first and leaves "
         "out and lists the unreadable ones.")]
OutOpt = Annotated[Optional[str], typer.Option(
    metavar="DIR", show_default="runs/MODEL-DATE-TIME", help="Run directory to write.")]
ResumeOpt = Annotated[Optional[str], typer.Option(
    metavar="RUN", show_default=False,
    help="Continue a run from its last.pt (a run directory or a checkpoint); raise --epochs to train "
         "a finished run further.")]
ConfigOpt = Annotated[Optional[str], typer.Option(
    metavar="FILE", show_default=False,
    help="YAML file of these options (options on the command line win).")]
NprocOpt = Annotated[Optional[int], typer.Option(
    min=1, metavar="N", show_default="1, no torchrun",
    help="Train with N processes on this machine through torchrun (distributed data-parallel: one per "
         "GPU, or gloo on the CPU); --batch-size is then the global batch.")]


def train_cmd(
    data: DataArg = None,
    model: ModelOpt = D.model,
    epochs: EpochsOpt = D.epochs,
    batch_size: BatchSizeOpt = D.batch_size,
    recipe: RecipeOpt = D.recipe,
    lr: LrOpt = None,
    optimizer: OptimizerOpt = None,
    loss: LossOpt = None,
    scheduler: SchedulerOpt = None,
    warmup_epochs: WarmupOpt = None,
    mixup: MixupOpt = D.mixup,
    cutmix: CutmixOpt = D.cutmix,
    ema: EmaOpt = None,
    accumulate: AccumulateOpt = D.accumulate,
    clip_grad: ClipGradOpt = None,
    balance: BalanceOpt = None,
    transforms: TransformsOpt = None,
    weights: WeightsOpt = None,
    dataset: DatasetOpt = D.dataset,
    val_split: ValSplitOpt = None,
    device: DeviceOpt = D.device,
    precision: PrecisionOpt = D.precision,
    workers: WorkersOpt = str(D.workers),
    seed: SeedOpt = D.seed,
    patience: PatienceOpt = None,
    callback: CallbackOpt = None,
    on_bad_image: OnBadImageOpt = D.on_bad_image,
    out: OutOpt = None,
    resume: ResumeOpt = None,
    config: ConfigOpt = None,
    nproc: NprocOpt = None,
    opt: OptOpt = None,
    json: JsonOpt = False,
    ctx: typer.Context = None,
):
    """Train a model on a folder of images; writes a run directory with checkpoints, metrics and plots."""
    from cvkit.commands.train import train_command
    from cvkit.options import parse_opts

    if nproc is not None:
        from cvkit.distributed import launch, strip_nproc

        raise typer.Exit(launch(nproc, strip_nproc(_LAUNCH_ARGV)))

    values = dict(data=data, model=model, epochs=epochs, batch_size=batch_size, recipe=recipe, lr=lr,
                  optimizer=optimizer, loss=loss, scheduler=scheduler, warmup_epochs=warmup_epochs, mixup=mixup,
                  cutmix=cutmix, ema=ema, accumulate=accumulate, clip_grad=clip_grad, balance=balance,
                  transforms=transforms, weights=weights, dataset=dataset,
                  val_split=val_split, device=device, precision=precision, workers=workers, seed=seed,
                  patience=patience, callbacks=callback, on_bad_image=on_bad_image, out=out,
                  options=parse_opts(opt) or None)
    given = {k: v for k, v in values.items() if v is not None and _given(ctx, k)}  # a config file fills the rest
    summary = train_command(cli_values=given,
                            config_file=config, resume=resume, json=json)
    if json and (_world_size() <= 1 or os.environ.get("RANK") in (None, "", "0")):
        # distributed: rank 0 speaks for the job
        ui.print_json(summary)


def register(app: typer.Typer) -> None:
    app.command("train", rich_help_panel="Train and use")(train_cmd)
