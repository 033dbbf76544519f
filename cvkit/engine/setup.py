"""Setting up a run: the checkpoint it resumes, its data, model, optimizer and scheduler, the state a
resume restores, and its run directory. The steps run in this order (the random numbers the model's
initialisation draws depend on it)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from cvkit import ui
from cvkit.build import (build_loss, build_model, build_optimizer, build_scheduler, build_transform,
                         decode_min_side, model_spec)
from cvkit.checkpoint import find_checkpoint, load_checkpoint, load_model_state
from cvkit.config import write_config
from cvkit.data import load_splits
from cvkit.device import resolve_precision
from cvkit.engine.checks import data_warnings, model_warnings
from cvkit.engine.rng import seed_everything, set_rng_state
from cvkit.engine.rundir import JOB_MARKER, clean_stale_temp_files, new_run_dir, writing
from cvkit.errors import CheckpointError, UsageError


def open_resume(config, resume: str | None, info, *, asked: bool):
    """``--resume``: (its last.pt, loaded, and the run directory), or (None, None)."""
    if not resume:
        return None, None
    ckpt_path = find_checkpoint(resume, option="--resume", name="last.pt")
    checkpoint = load_checkpoint(ckpt_path, option="--resume")
    saved = checkpoint.get("config") or {}
    if config.model != saved.get("model", config.model):
        raise CheckpointError(f"--resume {resume}: the checkpoint is of model {saved.get('model')!r}, "
                              f"not {config.model!r}")
    run_dir = ckpt_path.parent
    done = int(checkpoint["epoch"])
    if asked and done >= config.epochs:
        # An error (exit 2), not a notice with exit 0: the user asked for more training and got
        # none, and a script (`cvkit train --resume RUN && cvkit eval ...`) must notice that
        # instead of going on as if the run had trained further. Nothing in RUN changes.
        # (A torchrun restart of a job that had finished, asked=False, ends as before.)
        more = max(2 * done, done + 1)
        again = f"cvkit train --resume {shlex.quote(str(run_dir))} --epochs {more}" + (
            f" --nproc {info.world}" if info.enabled else "")
        trained = (f"{done} of {done} epochs" if done == config.epochs
                   else f"{done} epochs, more than --epochs {config.epochs}")
        raise UsageError(f"{run_dir}: already trained {trained}; to train further, raise --epochs (e.g. {again})")
    return checkpoint, run_dir


def load_data(run, checkpoint, resume) -> None:
    """The model's description, precision, per-process batch, transforms, loss, and the data's splits."""
    from cvkit import distributed

    config, plugins = run.config, run.plugins
    if config.data is None:
        raise UsageError("DATA: give the image folder to train on")
    run.spec = model_spec(config.model, plugins)
    run.precision = resolve_precision(config.precision, run.device)
    run.batch = distributed.per_process_batch(config.batch_size, run.info)  # --batch-size is the global batch
    seed_everything(config.seed)
    opts = config.options or {}
    run.transform_name = config.transforms or run.spec.default_transforms or "plain"
    run.train_tf = build_transform(run.spec, run.transform_name, train=True, options=opts.get("transform"),
                                   plugins=plugins)
    run.eval_tf = build_transform(run.spec, run.transform_name, train=False, options=opts.get("transform"),
                                  plugins=plugins)
    run.splits = load_splits(config.data, dataset=config.dataset, train_transform=run.train_tf,
                             eval_transform=run.eval_tf, val_split=config.val_split, seed=config.seed,
                             options=opts.get("dataset"), on_bad_image=config.on_bad_image,
                             min_side=decode_min_side(run.spec), plugins=plugins)
    run.classes = run.splits.classes
    run.warnings = data_warnings(run.splits)  # before the datasets are wrapped in caches
    class_weights = _balance(run) if config.balance else None
    run.loss_fn = build_loss(config.loss, options=opts.get("loss"), class_weights=class_weights, plugins=plugins)
    if hasattr(run.loss_fn, "to"):  # a loss module with class weights: on the model's device
        run.loss_fn.to(run.device)
    if checkpoint is not None and checkpoint["classes"] != run.classes:
        raise CheckpointError(f"--resume {resume}: the checkpoint's classes {checkpoint['classes']} differ "
                              f"from the data's {run.classes}")


def _balance(run):
    """``--balance``: the training split's class weights (a tensor for ``loss``); the per-sample
    weights of ``sampler`` go to ``run.sample_weights``."""
    import torch

    from cvkit.data import labels_of
    from cvkit.distributed import balance_weights

    labels = labels_of(run.splits.train)
    if labels is None:
        raise UsageError(f"--balance {run.config.balance}: the training data does not list its samples' labels "
                         f"(a stream, or a dataset plugin without .targets), so its classes cannot be counted")
    per_class, per_sample = balance_weights(labels, len(run.classes))
    run.run_record["balance"] = {"by": run.config.balance, "class_weights": [round(w, 6) for w in per_class]}
    if run.config.balance == "sampler":
        run.sample_weights = per_sample
        return None
    return torch.tensor(per_class, dtype=torch.float32)


def build_training(run, checkpoint, steps_per_epoch: int = 1) -> None:
    """Model (on its device, channels_last where it helps), optimizer, scheduler (``steps_per_epoch``:
    optimizer steps), grad scaler, and the step rule (mixing, accumulation, clipping)."""
    import torch

    from cvkit.accel import to_channels_last, use_channels_last
    from cvkit.build import scheduler_interval
    from cvkit.engine.ema import training_state
    from cvkit.engine.steps import StepRule, make_mix

    config, plugins, opts = run.config, run.plugins, run.config.options or {}
    weights = "none" if checkpoint is not None else config.weights
    model = build_model(config.model, num_classes=len(run.classes), weights=weights,
                        options=opts.get("model"), plugins=plugins)
    if checkpoint is not None:
        load_model_state(model, training_state(checkpoint))
    model.to(run.device)
    run.run_record["channels_last"] = use_channels_last(model)
    if run.run_record["channels_last"]:
        to_channels_last(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise UsageError(f"--model {config.model}: no trainable parameters")
    run.model = model
    run.warnings = model_warnings(config, run.spec, model, plugins) + run.warnings
    if run.info.is_main:  # distributed: rank 0 speaks for the job
        for message in run.warnings:
            ui.warn(message)
    run.optimizer = build_optimizer(config.optimizer, trainable, lr=config.lr, options=opts.get("optimizer"),
                                    plugins=plugins)
    run.scheduler = build_scheduler(config.scheduler, run.optimizer, epochs=config.epochs,
                                    steps_per_epoch=steps_per_epoch, warmup_epochs=config.warmup_epochs,
                                    options=opts.get("scheduler"), plugins=plugins)
    run.scheduler_interval = scheduler_interval(config.scheduler, plugins)
    run.rule = StepRule(config.accumulate, config.clip_grad, make_mix(config.mixup, config.cutmix, len(run.classes)))
    run.scaler = torch.amp.GradScaler(run.device.type, enabled=run.precision == "fp16")


def restore(run, checkpoint, resume, run_dir: Path, train_loader) -> None:
    """A resumed run's optimizer, scheduler, scaler, history, best, random state and stopped epoch."""
    run.run_dir = run_dir
    run.optimizer.load_state_dict(checkpoint["optimizer_state"])
    if run.scheduler is not None and checkpoint.get("scheduler_state"):
        run.scheduler.load_state_dict(checkpoint["scheduler_state"])
    if checkpoint.get("scaler_state"):
        run.scaler.load_state_dict(checkpoint["scaler_state"])
    run.history = list(checkpoint.get("history") or [])
    run.best = dict(checkpoint.get("best") or run.best)
    run.start_epoch = int(checkpoint["epoch"]) + 1
    best_file = run_dir / "best.pt"
    if best_file.exists():
        run.best_confusion = (load_checkpoint(best_file).get("metrics") or {}).get("confusion_matrix")
    set_rng_state(checkpoint.get("rng"), train_loader)
    run.interrupted = _continued_epoch(run, checkpoint.get("interrupted"), resume, train_loader)
    run.holds = f"epoch {run.start_epoch - 1}" + (
        f" and step {run.interrupted['step']} of epoch {run.start_epoch}" if run.interrupted else "")


def _continued_epoch(run, interrupted, resume, train_loader) -> dict | None:
    """The stopped epoch's record, when it can continue exactly where it stopped."""
    if interrupted and (interrupted.get("steps"), interrupted.get("batch_size"), interrupted.get("images")) != (
            len(train_loader), run.config.batch_size, len(run.splits.train)):
        ui.warn(f"--resume {resume}: epoch {interrupted['epoch']} stopped after step {interrupted['step']}, "
                f"but the training images or --batch-size differ now; that epoch starts again from its "
                f"first batch, with the weights saved at the stop")
        return None
    if interrupted and (run.info.enabled or interrupted.get("processes", 1) > 1):
        # each process drew its own augmentation numbers; the stopped epoch is redone instead
        if run.info.is_main:
            ui.warn(f"--resume {resume}: epoch {interrupted['epoch']} stopped after step {interrupted['step']} "
                    f"in distributed training; that epoch starts again from its first batch, with the "
                    f"weights saved at the stop")
        return None
    return interrupted


def claim_run_dir(run) -> None:
    """A new run's directory: rank 0 names it, every process gets the same name (or the same error)."""
    from cvkit import distributed

    config, info = run.config, run.info
    problem, run_dir = None, None
    if info.is_main:
        run_dir = Path(config.out) if config.out else new_run_dir(config.model)
        if (run_dir / "last.pt").exists() or (run_dir / "best.pt").exists():
            problem = f"--out {run_dir}: already holds a run; use --resume {run_dir} or another --out"
    run_dir, problem = distributed.broadcast((run_dir, problem), info)
    if problem:
        raise UsageError(problem)
    run.run_dir = run_dir


def write_run_files(run) -> None:
    """Rank 0 creates the run directory and writes config.yaml, split.json and torchrun's job marker."""
    if not run.info.is_main:
        return
    run_dir = run.run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"--out {run_dir}: cannot create the run directory ({exc.strerror or exc})") from None
    clean_stale_temp_files(run_dir)
    with writing(run_dir / "config.yaml"):
        write_config(run.config, run_dir / "config.yaml")
    if run.splits.layout.get("layout") == "split":
        with writing(run_dir / "split.json"):
            (run_dir / "split.json").write_text(json.dumps(run.splits.layout, indent=1))
    if run.info.run_id:
        with writing(run_dir / JOB_MARKER):
            (run_dir / JOB_MARKER).write_text(run.info.run_id + "\n")
