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
from cvkit.errors import CvkitError, message_of
from cvkit.interrupts import Interrupted, TrainingStopped, exit_on_signals
from cvkit.plugins import check_strict, get_plugins, strict

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
        trust_checkpoints: Annotated[bool, typer.Option(
            "--trust-checkpoints",
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
        on_bad_image: Annotated[Optional[str], typer.Option(
            help="error: stop at an unreadable image, naming it; skip: check every image first, leave out "
                 "and list the unreadable ones [default: error].")] = None,
        out: Annotated[Optional[str], typer.Option(help="Run directory [default: a new one under ./runs/].")] = None,
        resume: Annotated[Optional[str], typer.Option(help="Continue a run: its directory or a checkpoint.")] = None,
        config: Annotated[Optional[str], typer.Option(help="YAML file of options (the command line wins).")] = None,
        nproc: Annotated[Optional[int], typer.Option(
            min=1, help="Train with N processes on this machine through torchrun (distributed data-parallel: "
                        "one per GPU, or gloo on the CPU); --batch-size is then the global batch.")] = None,
        opt: OptOpt = None,
        json: JsonOpt = False,
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
        summary = train_command(cli_values={k: v for k, v in values.items() if v is not None},
                                config_file=config, resume=resume, json=json)
        if json and (_world_size() <= 1 or os.environ.get("RANK") in (None, "", "0")):
            # distributed: rank 0 speaks for the job
            ui.print_json(summary)

    @app.command("eval", rich_help_panel="Train and use")
    def eval_cmd(
        data: Annotated[Optional[str], typer.Argument(
            help="Folder of class folders, or a tree with val/ [default: the run's own validation split].")] = None,
        checkpoint: Annotated[Optional[str], typer.Option(
            "--checkpoint", "-c", help="Checkpoint or run directory [default: best.pt of the newest run in ./runs/].")] = None,
        batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 64,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
        precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16.")] = "auto",
        workers: Annotated[str, typer.Option(help="DataLoader worker processes, or auto.")] = "auto",
        out: Annotated[Optional[str], typer.Option(help="Also write confusion_matrix.png and misclassified.png here.")] = None,
        json: JsonOpt = False,
    ):
        """Evaluate a checkpoint: loss, top-1/top-5, per-class precision/recall/F1, confusion matrix."""
        from cvkit.commands.evaluate import evaluate_checkpoint, render_eval

        report = evaluate_checkpoint(data=data, checkpoint=checkpoint, batch_size=batch_size, device=device,
                                     precision=precision, workers=workers, out=out, show_progress=not json)
        ui.print_json(report) if json else render_eval(report)

    @app.command("predict", rich_help_panel="Train and use")
    def predict_cmd(
        images: Annotated[list[str], typer.Argument(help="Image files, folders or globs.")],
        checkpoint: Annotated[Optional[str], typer.Option(
            "--checkpoint", "-c", help="Checkpoint or run directory [default: best.pt of the newest run in ./runs/].")] = None,
        top_k: Annotated[int, typer.Option(min=1, help="Classes shown per image.")] = 3,
        batch_size: Annotated[int, typer.Option(min=1, help="Images per batch.")] = 32,
        device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:N or mps.")] = "auto",
        precision: Annotated[str, typer.Option(help="auto, fp32, bf16 or fp16.")] = "auto",
        grid: Annotated[Optional[str], typer.Option(help="Also draw the images with their predicted labels into this PNG.")] = None,
        csv: Annotated[bool, typer.Option("--csv", help="Print CSV (path, rank, label, probability) on stdout.")] = False,
        json: JsonOpt = False,
    ):
        """Predict the top-k classes of images with a trained checkpoint."""
        from cvkit.commands.predict import predict_images, predict_summary, predictions_csv, render_predictions

        if csv and json:
            raise typer.BadParameter("choose one of --csv and --json")
        report = predict_images(images, checkpoint=checkpoint, top_k=top_k, batch_size=batch_size,
                                device=device, precision=precision, grid=grid)
        for item in report["skipped"]:  # on stderr, so --json and --csv stay clean
            ui.warn(f"skipped {item['path']}: {item['reason']}")
        if json:
            ui.print_json([{"path": r["path"], "predictions": r["predictions"]} for r in report["results"]])
        elif csv:
            sys.stdout.write(predictions_csv(report))
        else:
            render_predictions(report)
        if json or csv:  # stdout holds only the data
            ui.err.print(predict_summary(report), markup=False, highlight=False, soft_wrap=True)

    @app.command("preview", rich_help_panel="Train and use")
    def preview_cmd(
        data: Annotated[str, typer.Argument(help="Image folder, as for train.")],
        model: Annotated[str, typer.Option("--model", "-m", help="Model whose input size and transforms to use.")] = "net",
        transforms: Annotated[Optional[str], typer.Option(help="Transforms [default: the model's].")] = None,
        out: Annotated[str, typer.Option(help="PNG file to write.")] = "preview.png",
        count: Annotated[int, typer.Option(min=1, max=64, help="Images in the grid.")] = 16,
        val_split: Annotated[Optional[float], typer.Option(help="As for train, for the DATA/<class> layout.")] = None,
        seed: Annotated[int, typer.Option(help="Which images and augmentations.")] = 0,
    ):
        """Save a grid of one augmented training batch with class names (the chapter's imshow)."""
        from cvkit.commands.preview import preview_batch

        result = preview_batch(data, model=model, transforms=transforms, out=out, count=count, seed=seed,
                               val_split=val_split)
        ui.out.print(result["path"], markup=False, highlight=False, soft_wrap=True)  # a path is never wrapped

    data_app = typer.Typer(no_args_is_help=True, help="Make and check image folders.")
    app.add_typer(data_app, name="data", rich_help_panel="Data")

    @data_app.command("demo")
    def data_demo_cmd(
        folder: Annotated[str, typer.Argument(help="Where to draw the demo tree (train/ and val/).")] = "data/shapes",
        seed: Annotated[int, typer.Option(help="Seed of the drawing (same seed, same images).")] = 0,
        json: JsonOpt = False,
    ):
        """Draw the built-in synthetic shapes dataset (circles, squares, triangles, stars), offline."""
        from cvkit.commands.data import make_demo_data

        result = make_demo_data(folder, seed=seed)
        ui.print_json(result) if json else ui.out.print(
            f"{result['root']}: {result['counts']['train']} train / {result['counts']['val']} val images "
            f"of {', '.join(result['classes'])}" + ("" if result.get("created") else " (already there)"))

    @data_app.command("check")
    def data_check_cmd(
        data: Annotated[str, typer.Argument(help="Image folder, as for train.")],
        quick: Annotated[bool, typer.Option("--quick", help="Only the structure: skip decoding and hashing every image.")] = False,
        json: JsonOpt = False,
    ):
        """Check an image folder before training: class counts per split, imbalance, empty or missing
        classes, unreadable images, val images duplicated in train. Changes nothing; exit 3 on errors."""
        from cvkit.commands.data import render_check
        from cvkit.data import check_data

        report = check_data(data, deep=not quick)
        ui.print_json(report) if json else render_check(report)
        if report["errors"] or report.get("unreadable"):
            raise typer.Exit(3)

    @data_app.command("download")
    def data_download_cmd(
        name: Annotated[str, typer.Argument(help="cifar10, mnist or fashion-mnist.")],
        folder: Annotated[str, typer.Argument(help="Where to write the ImageFolder tree.")],
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
            app(args=argv, prog_name="cvkit")
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
