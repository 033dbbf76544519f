"""The cvkit command line: thin Typer wrappers over plain functions in ``cvkit.commands``.

Nothing here imports torch: commands import it when they run, so ``cvkit --help`` and the listing
commands stay fast.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated, Optional

import typer

from cvkit import __version__, ui
from cvkit.errors import CvkitError
from cvkit.plugins import check_strict, get_plugins

REGISTRY_NAMES = ["models", "transforms", "losses", "optimizers", "schedulers", "datasets"]

JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
OptOpt = Annotated[Optional[list[str]], typer.Option(
    "--opt", metavar="KIND.KEY=VALUE",
    help="Extra option for a factory, e.g. optimizer.momentum=0.5 (repeatable).")]


def _version(value: bool):
    if value:
        ui.out.print(f"cvkit {__version__}")
        raise typer.Exit()


def make_app(plugins=None) -> typer.Typer:
    """The Typer app with cvkit's commands and those the plugins add."""
    app = typer.Typer(
        name="cvkit", no_args_is_help=True, add_completion=False,
        pretty_exceptions_show_locals=False,
        help="Train, check and use image classifiers with PyTorch. Models, transforms, losses, "
             "optimizers and datasets come from plugins (see `cvkit plugins`).",
    )

    @app.callback()
    def root(
        verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show tracebacks for errors.")] = False,
        version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                              help="Print cvkit's version.")] = False,
    ):
        """cvkit: image classifiers from the command line."""

    @app.command("device", rich_help_panel="Inspect")
    def device_cmd(json: JsonOpt = False):
        """Show versions, CPU, GPUs and the device and precision that `auto` picks."""
        from cvkit.commands.device import device_report, render_device_report

        report = device_report()
        ui.print_json(report) if json else render_device_report(report)

    @app.command("plugins", rich_help_panel="Plugins")
    def plugins_cmd(json: JsonOpt = False):
        """List installed plugins: where they come from, their hooks, what they registered, and failures."""
        from cvkit.commands.listing import plugins_report, render_plugins

        report = plugins_report(get_plugins())
        ui.print_json(report) if json else render_plugins(report)

    @app.command("list", rich_help_panel="Plugins")
    def list_cmd(
        kind: Annotated[Optional[str], typer.Argument(
            help=f"What to list: {', '.join(REGISTRY_NAMES)} (default: all).")] = None,
        pattern: Annotated[Optional[str], typer.Argument(help="Only names matching this glob, e.g. 'resnet*'.")] = None,
        json: JsonOpt = False,
    ):
        """List registered models, transforms, losses, optimizers, schedulers or datasets."""
        from cvkit.commands.listing import list_entries, render_entries

        report = list_entries(get_plugins(), kind, pattern)
        ui.print_json(report) if json else render_entries(report)

    @app.command("inspect-grad", rich_help_panel="Inspect")
    def inspect_grad_cmd(
        model: Annotated[str, typer.Option("--model", "-m", help="Registered model name (see `cvkit list models`).")] = "net",
        weights: Annotated[Optional[str], typer.Option(
            help="imagenet, none, or a state dict / cvkit checkpoint file (default: the model's own).")] = None,
        num_classes: Annotated[int, typer.Option(min=1, help="Number of outputs of the model.")] = 10,
        batch_size: Annotated[int, typer.Option(min=1, help="Inputs in the batch.")] = 1,
        image: Annotated[Optional[str], typer.Option(help="Feed this image through the model's eval transform instead of random input.")] = None,
        transforms: Annotated[Optional[str], typer.Option(help="Transforms for --image (default: the model's).")] = None,
        loss: Annotated[str, typer.Option(help="Registered loss name.")] = "mse",
        depth: Annotated[int, typer.Option(min=1, help="Depth of the autograd graph shown.")] = 6,
        step: Annotated[bool, typer.Option("--step", help="Also take one optimizer step and show how far each parameter moved.")] = False,
        optimizer: Annotated[str, typer.Option(help="Optimizer for --step.")] = "sgd",
        lr: Annotated[float, typer.Option(help="Learning rate for --step.")] = 0.01,
        device: Annotated[str, typer.Option(help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps.")] = "auto",
        seed: Annotated[int, typer.Option(help="Seed for the random input, target and new layers.")] = 0,
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

    @app.command("train", rich_help_panel="Train and use")
    def train_cmd(
        data: Annotated[Optional[str], typer.Argument(
            help="Image folder: DATA/train/<class>/* and DATA/val/<class>/*, or DATA/<class>/* with --val-split.")] = None,
        model: Annotated[Optional[str], typer.Option("--model", "-m", help="Registered model [default: net].")] = None,
        epochs: Annotated[Optional[int], typer.Option(help="Epochs [default: 25, as in the chapter].")] = None,
        batch_size: Annotated[Optional[int], typer.Option(help="Images per batch [default: 32].")] = None,
        lr: Annotated[Optional[float], typer.Option(help="Learning rate [default: 0.001].")] = None,
        optimizer: Annotated[Optional[str], typer.Option(help="Registered optimizer [default: sgd].")] = None,
        loss: Annotated[Optional[str], typer.Option(help="Registered loss [default: cross-entropy].")] = None,
        scheduler: Annotated[Optional[str], typer.Option(help="Registered scheduler [default: step].")] = None,
        transforms: Annotated[Optional[str], typer.Option(help="Registered transforms [default: the model's].")] = None,
        weights: Annotated[Optional[str], typer.Option(help="imagenet, none or a weights file [default: the model's].")] = None,
        dataset: Annotated[Optional[str], typer.Option(help="Registered dataset format [default: imagefolder].")] = None,
        val_split: Annotated[Optional[float], typer.Option(help="Hold out this fraction of each class for validation (DATA/<class> layout).")] = None,
        device: Annotated[Optional[str], typer.Option(help="auto (cuda, mps, cpu), cpu, cuda, cuda:N, mps [default: auto].")] = None,
        precision: Annotated[Optional[str], typer.Option(help="auto, fp32, bf16, fp16 [default: auto].")] = None,
        workers: Annotated[Optional[str], typer.Option(help="DataLoader worker processes, or auto [default: auto].")] = None,
        seed: Annotated[Optional[int], typer.Option(help="Random seed [default: 0].")] = None,
        patience: Annotated[Optional[int], typer.Option(help="Stop after this many epochs without a better val accuracy.")] = None,
        out: Annotated[Optional[str], typer.Option(help="Run directory [default: a new one under ./runs/].")] = None,
        resume: Annotated[Optional[str], typer.Option(help="Continue a run: its directory or a checkpoint.")] = None,
        config: Annotated[Optional[str], typer.Option(help="YAML file of options (the command line wins).")] = None,
        opt: OptOpt = None,
        json: JsonOpt = False,
    ):
        """Train a model on a folder of images; writes a run directory with checkpoints, metrics and plots."""
        from cvkit.commands.train import train_command
        from cvkit.options import parse_opts

        values = dict(data=data, model=model, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                      loss=loss, scheduler=scheduler, transforms=transforms, weights=weights, dataset=dataset,
                      val_split=val_split, device=device, precision=precision, workers=workers, seed=seed,
                      patience=patience, out=out, options=parse_opts(opt) or None)
        summary = train_command(cli_values={k: v for k, v in values.items() if v is not None},
                                config_file=config, resume=resume, json=json)
        if json:
            ui.print_json(summary)

    if plugins is not None:
        plugins.add_commands(app)
    return app


def _verbose(argv: list[str]) -> bool:
    if os.environ.get("CVKIT_VERBOSE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    return any(a in ("--verbose", "-v") for a in argv)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``cvkit`` console script: known errors become one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        plugins = get_plugins()
        app = make_app(plugins)
        for problem in plugins.problems():
            ui.warn(problem)
        check_strict(plugins)
        app(args=argv, prog_name="cvkit")
    except CvkitError as exc:
        if _verbose(argv):
            traceback.print_exc()
        ui.error(str(exc))
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        ui.error("interrupted")
        sys.exit(130)
