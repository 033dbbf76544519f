"""`cvkit inspect-grad`."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cvkit import ui
from cvkit.cli.options import DEVICE_HELP, JsonOpt, OptOpt


def inspect_grad_cmd(
    model: Annotated[str, typer.Option(
        "--model", "-m", metavar="NAME", help="Model to look into (see `cvkit list models`).")] = "net",
    weights: Annotated[Optional[str], typer.Option(
        metavar="WEIGHTS", show_default="the model's own",
        help="Starting weights: imagenet (a download), none (random), or a state dict or cvkit checkpoint file.")] = None,
    num_classes: Annotated[int, typer.Option(min=1, metavar="N", help="Number of outputs of the model.")] = 10,
    batch_size: Annotated[int, typer.Option(min=1, metavar="N", help="Inputs in the batch.")] = 1,
    image: Annotated[Optional[str], typer.Option(
        metavar="FILE", show_default="random input",
        help="Feed this image through the model's eval transform.")] = None,
    transforms: Annotated[Optional[str], typer.Option(
        metavar="NAME", show_default="the model's", help="Transforms that prepare --image.")] = None,
    loss: Annotated[str, typer.Option(metavar="NAME", help="Loss whose gradients are shown (see `cvkit list losses`).")] = "mse",
    depth: Annotated[int, typer.Option(min=1, metavar="N", help="Levels of the autograd graph shown.")] = 6,
    step: Annotated[bool, typer.Option(
        "--step", metavar="", help="Also take one optimizer step and show how far each parameter moved.")] = False,
    optimizer: Annotated[str, typer.Option(metavar="NAME", help="Optimizer of the --step.")] = "sgd",
    lr: Annotated[float, typer.Option(metavar="LR", help="Learning rate of the --step.")] = 0.01,
    device: Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)] = "auto",
    seed: Annotated[int, typer.Option(metavar="N", help="Seed of the random input, target and new layers.")] = 0,
    opt: OptOpt = None,
    json: JsonOpt = False,
):
    """Walk through loss, autograd graph, gradients and one SGD step on a model (the chapter's backprop lesson)."""
    from cvkit.commands.inspect_grad import inspect_grad, render_inspect_grad
    from cvkit.options import parse_opts

    report = inspect_grad(
        model=model, weights=weights, num_classes=num_classes, batch_size=batch_size, image=image,
        transforms=transforms, loss=loss, depth=depth, step=step, optimizer=optimizer, lr=lr,
        device=device, seed=seed, options=parse_opts(opt))
    ui.print_json(report) if json else render_inspect_grad(report)


def register(app: typer.Typer) -> None:
    app.command("inspect-grad", rich_help_panel="Inspect")(inspect_grad_cmd)
