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

from cvkit import __version__, ui, usage
from cvkit.config import TrainConfig
from cvkit.errors import CvkitError, message_of
from cvkit.interrupts import Interrupted, TrainingStopped, exit_on_signals
from cvkit.plugins import check_strict, get_plugins, strict

REGISTRY_NAMES = ["models", "transforms", "losses", "optimizers", "schedulers", "datasets"]
D = TrainConfig()  # train's defaults, shown in its --help

DEVICE_HELP = "Where to run: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."
PRECISION_HELP = ("Number format: auto (bf16 where the GPU or CPU computes it natively, fp16 on older GPUs, "
                  "else fp32), fp32, bf16 or fp16.")
WORKERS_HELP = "Processes that load images, or auto (from the CPU cores and the data's size)."

JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="Print machine-readable JSON on stdout.")]
OptOpt = Annotated[Optional[list[str]], typer.Option(
    "--opt", metavar="KIND.KEY=VALUE", show_default=False,
    help="Extra keyword for a factory, e.g. optimizer.momentum=0.5 or loss.label_smoothing=0.1 (repeatable).")]
CheckpointOpt = Annotated[Optional[str], typer.Option(
    "--checkpoint", "-c", metavar="CHECKPOINT", show_default="best.pt of the newest run in ./runs/",
    help="Checkpoint file or run directory.")]


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
        verbose: Annotated[bool, typer.Option("--verbose", "-v", metavar="", help="Show tracebacks for errors.")] = False,
        version: Annotated[bool, typer.Option("--version", metavar="", callback=_version, is_eager=True,
                                              help="Print cvkit's version.")] = False,
        trust_checkpoints: Annotated[bool, typer.Option(
            "--trust-checkpoints", metavar="",
            help="Load checkpoints that hold Python objects with full pickle, which can run any code: "
                 "only for files from people you trust.")] = False,
    ):
        """cvkit: image classifiers from the command line."""
        if trust_checkpoints:
            from cvkit.checkpoint import trust_checkpoints as trust

            trust()

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
            metavar="KIND", show_default="all of them", help=f"What to list: {', '.join(REGISTRY_NAMES)}.")] = None,
        pattern: Annotated[Optional[str], typer.Argument(
            metavar="PATTERN", show_default=False, help="Only names matching this glob, e.g. 'resnet*'.")] = None,
        json: JsonOpt = False,
    ):
        """List registered models, transforms, losses, optimizers, schedulers or datasets."""
        from cvkit.commands.listing import list_entries, render_entries

        report = list_entries(get_plugins(), kind, pattern)
        ui.print_json(report) if json else render_entries(report)

    @app.command("inspect-grad", rich_help_panel="Inspect")
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

    @app.command("train", rich_help_panel="Train and use")
    def train_cmd(
        data: Annotated[Optional[str], typer.Argument(
            metavar="DATA", show_default=False,
            help="Image folder: DATA/train/<class>/* and DATA/val/<class>/*, or DATA/<class>/* with --val-split.")] = None,
        model: Annotated[str, typer.Option(
            "--model", "-m", metavar="NAME",
            help="Model to train: net (the chapter's LeNet), resnet18-finetune, resnet18-frozen, or a plugin's "
                 "(see `cvkit list models`).")] = D.model,
        epochs: Annotated[int, typer.Option(
            metavar="N", help="Passes over the training images (the chapter trains 25).")] = D.epochs,
        batch_size: Annotated[int, typer.Option(
            metavar="N", help="Images per optimizer step (with --nproc: across all processes).")] = D.batch_size,
        lr: Annotated[float, typer.Option(metavar="LR", help="Learning rate of the optimizer.")] = D.lr,
        optimizer: Annotated[str, typer.Option(
            metavar="NAME", help="Optimizer: sgd is the chapter's SGD with momentum 0.9 "
                                 "(see `cvkit list optimizers`).")] = D.optimizer,
        loss: Annotated[str, typer.Option(
            metavar="NAME", help="Loss function (see `cvkit list losses`).")] = D.loss,
        scheduler: Annotated[str, typer.Option(
            metavar="NAME", help="Learning-rate schedule: step is the chapter's StepLR, lr x0.1 every 7 epochs "
                                 "(see `cvkit list schedulers`).")] = D.scheduler,
        transforms: Annotated[Optional[str], typer.Option(
            metavar="NAME", show_default="the model's",
            help="Augmentation and preprocessing (see `cvkit list transforms`).")] = None,
        weights: Annotated[Optional[str], typer.Option(
            metavar="WEIGHTS", show_default="the model's: imagenet for resnets",
            help="Starting weights: imagenet (downloaded once), none (random), or a state dict or cvkit "
                 "checkpoint file.")] = None,
        dataset: Annotated[str, typer.Option(
            metavar="NAME", help="Format of DATA (see `cvkit list datasets`).")] = D.dataset,
        val_split: Annotated[Optional[float], typer.Option(
            metavar="FRACTION", show_default="none: DATA has val/",
            help="Hold out this fraction of each class for validation (for the DATA/<class>/* layout).")] = None,
        device: Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)] = D.device,
        precision: Annotated[str, typer.Option(metavar="PRECISION", help=PRECISION_HELP)] = D.precision,
        workers: Annotated[str, typer.Option(metavar="N", help=WORKERS_HELP)] = str(D.workers),
        seed: Annotated[int, typer.Option(
            metavar="N", help="Seed of the split, the new weights and the augmentation (same seed, same run).")] = D.seed,
        patience: Annotated[Optional[int], typer.Option(
            metavar="N", show_default="never stop early",
            help="Stop after N epochs without a better validation accuracy.")] = None,
        on_bad_image: Annotated[str, typer.Option(
            metavar="error|skip",
            help="An unreadable image: error stops at it, naming it; skip checks every image first and leaves "
                 "out and lists the unreadable ones.")] = D.on_bad_image,
        out: Annotated[Optional[str], typer.Option(
            metavar="DIR", show_default="runs/MODEL-DATE-TIME", help="Run directory to write.")] = None,
        resume: Annotated[Optional[str], typer.Option(
            metavar="RUN", show_default=False,
            help="Continue a run from its last.pt (a run directory or a checkpoint); raise --epochs to train "
                 "a finished run further.")] = None,
        config: Annotated[Optional[str], typer.Option(
            metavar="FILE", show_default=False,
            help="YAML file of these options (options on the command line win).")] = None,
        nproc: Annotated[Optional[int], typer.Option(
            min=1, metavar="N", show_default="1, no torchrun",
            help="Train with N processes on this machine through torchrun (distributed data-parallel: one per "
                 "GPU, or gloo on the CPU); --batch-size is then the global batch.")] = None,
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

        values = dict(data=data, model=model, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
                      loss=loss, scheduler=scheduler, transforms=transforms, weights=weights, dataset=dataset,
                      val_split=val_split, device=device, precision=precision, workers=workers, seed=seed,
                      patience=patience, on_bad_image=on_bad_image, out=out, options=parse_opts(opt) or None)
        given = {k: v for k, v in values.items() if v is not None and _given(ctx, k)}  # a config file fills the rest
        summary = train_command(cli_values=given,
                                config_file=config, resume=resume, json=json)
        if json and (_world_size() <= 1 or os.environ.get("RANK") in (None, "", "0")):
            # distributed: rank 0 speaks for the job
            ui.print_json(summary)

    @app.command("eval", rich_help_panel="Train and use")
    def eval_cmd(
        data: Annotated[Optional[str], typer.Argument(
            metavar="DATA", show_default="the run's own validation split",
            help="Folder of class folders, or a tree with val/.")] = None,
        checkpoint: CheckpointOpt = None,
        batch_size: Annotated[int, typer.Option(min=1, metavar="N", help="Images per batch.")] = 64,
        device: Annotated[str, typer.Option(metavar="DEVICE", help=DEVICE_HELP)] = "auto",
        precision: Annotated[str, typer.Option(metavar="PRECISION", help=PRECISION_HELP)] = "auto",
        workers: Annotated[str, typer.Option(metavar="N", help=WORKERS_HELP)] = "auto",
        out: Annotated[Optional[str], typer.Option(
            metavar="DIR", show_default="no pictures",
            help="Also write confusion_matrix.png and misclassified.png into this folder.")] = None,
        json: JsonOpt = False,
    ):
        """Evaluate a checkpoint: loss, top-1/top-5, per-class precision/recall/F1, confusion matrix."""
        from cvkit.commands.evaluate import evaluate_checkpoint, render_eval

        report = evaluate_checkpoint(data=data, checkpoint=checkpoint, batch_size=batch_size, device=device,
                                     precision=precision, workers=workers, out=out, show_progress=not json)
        ui.print_json(report) if json else render_eval(report)

    @app.command("predict", rich_help_panel="Train and use")
    def predict_cmd(
        images: Annotated[list[str], typer.Argument(
            metavar="IMAGE", show_default=False, help="Image files, folders or globs (one or more).")],
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
        json: JsonOpt = False,
    ):
        """Predict the top-k classes of images with a trained checkpoint."""
        from cvkit.commands.predict import predict_images, predict_summary, predictions_csv, render_predictions

        if csv and json:
            raise typer.BadParameter("choose one of --csv and --json")
        report = predict_images(images, checkpoint=checkpoint, top_k=top_k, batch_size=batch_size,
                                device=device, precision=precision, grid=grid, grid_input=grid_input)
        for item in report["skipped"]:  # on stderr, so --json and --csv stay clean
            ui.warn(f"skipped {item['path']}: {item['reason']}")
        if json:
            ui.print_json([{"path": r["path"], "predictions": r["predictions"]} for r in report["results"]])
        elif csv:
            sys.stdout.write(predictions_csv(report))
            sys.stdout.flush()  # the data first: a reader that went away stops cvkit before the summary
        else:
            render_predictions(report)
        if json or csv:  # stdout holds only the data
            ui.err.print(predict_summary(report), markup=False, highlight=False)

    @app.command("preview", rich_help_panel="Train and use")
    def preview_cmd(
        data: Annotated[str, typer.Argument(metavar="DATA", help="Image folder, as for train.")],
        model: Annotated[str, typer.Option(
            "--model", "-m", metavar="NAME", help="Model whose input size and transforms to use.")] = "net",
        transforms: Annotated[Optional[str], typer.Option(
            metavar="NAME", show_default="the model's", help="Transforms to preview.")] = None,
        out: Annotated[str, typer.Option(metavar="FILE.png", help="PNG file to write.")] = "preview.png",
        count: Annotated[int, typer.Option(min=1, max=64, metavar="N", help="Images in the grid.")] = 16,
        val_split: Annotated[Optional[float], typer.Option(
            metavar="FRACTION", show_default=False, help="As for train, for the DATA/<class>/* layout.")] = None,
        seed: Annotated[int, typer.Option(metavar="N", help="Which images and augmentations.")] = 0,
    ):
        """Save a grid of one augmented training batch with class names (the chapter's imshow)."""
        from cvkit.commands.preview import preview_batch

        result = preview_batch(data, model=model, transforms=transforms, out=out, count=count, seed=seed,
                               val_split=val_split)
        ui.out.print(result["path"], markup=False, highlight=False)

    data_app = typer.Typer(no_args_is_help=True, help="Make and check image folders.")
    app.add_typer(data_app, name="data", rich_help_panel="Data")

    @data_app.command("demo")
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

    @data_app.command("check")
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

    @data_app.command("download")
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

    if plugins is not None:
        plugins.add_commands(app)
    return app


def _given(ctx, name: str) -> bool:
    """Whether option ``name`` was set on the command line, not left at its default."""
    source = ctx.get_parameter_source(name) if ctx is not None else None
    return source is None or source.name not in ("DEFAULT", "DEFAULT_MAP")


def _verbose(argv: list[str]) -> bool:
    if os.environ.get("CVKIT_VERBOSE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    return "--verbose" in argv or (argv[:1] == ["-v"])


_LAUNCH_ARGV: list[str] = []


def _world_size() -> int:
    """torchrun's WORLD_SIZE (1 when unset or not a number: then no rank speaks for others)."""
    try:
        return int(os.environ.get("WORLD_SIZE") or 1)
    except ValueError:
        return 1


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``cvkit`` console script: known errors become one line and an exit code.

    Run as the program (``argv`` None) after a command that imported torch, the process ends with
    ``os._exit`` once the atexit handlers have run and the output is flushed: the interpreter's
    own teardown of torch and torchvision takes about a second on 2 cores and does nothing a
    finished command needs (measured in docs/performance.md)."""
    as_program = argv is None
    try:
        _main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code
    if as_program and "torch" in sys.modules:
        _exit_now(code)
    sys.exit(code)


def _exit_now(code) -> None:
    import atexit

    if code is None:
        code = 0
    elif not isinstance(code, int):  # sys.exit("message"): printed, status 1
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()  # what the interpreter would still do: multiprocessing, tempfile, ...
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
            pass
    os._exit(code)


def _main(argv: list[str] | None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    _LAUNCH_ARGV[:] = argv  # what `train --nproc N` passes on to torchrun
    verbose = _verbose(argv)
    # --verbose is global: accept it after the command name too (typer knows it only before)
    argv = [a for a in argv if a != "--verbose"]
    try:
        with exit_on_signals():  # Ctrl-C and SIGTERM: one line and exit 130 / 143, in every command
            plugins = get_plugins()
            app = make_app(plugins)
            if strict():
                check_strict(plugins)
            for problem in plugins.problems():
                ui.warn(problem)
            code = usage.invoke(app, argv)
        if code:
            sys.exit(code)
    except CvkitError as exc:
        if verbose:
            traceback.print_exc()
        rank = os.environ.get("RANK", "")
        if _world_size() <= 1:
            ui.error(message_of(exc))
        elif rank in ("", "0") or not isinstance(exc, TrainingStopped):  # rank 0 says why the job stopped
            ui.error(f"[rank {rank}] {message_of(exc)}")
        sys.exit(exc.exit_code)
    except Interrupted as exc:
        ui.error(exc.message())
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:  # raised before the handlers were in place
        ui.error("interrupted (Ctrl-C)")
        sys.exit(130)
    except BrokenPipeError:  # the reader went away (`cvkit ... | head -1`): end quietly, as cat does
        usage.silence_stdout()
        sys.exit(usage.BROKEN_PIPE_EXIT)
