"""The training loop: the chapter's ``train_model``, done right.

Per epoch a train phase and a validation phase; the scheduler steps after the epoch's optimizer
steps; the best validation accuracy's weights are kept, saved as ``best.pt`` and are the final model;
``last.pt`` is written every epoch so a run can resume. Frozen parameters never reach the optimizer.
``run_phase`` is the one loop over batches, used for training, validation and ``cvkit eval``.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from cvkit import ui
from cvkit.config import TrainConfig
from cvkit.device import resolve_device
from cvkit.engine import setup
from cvkit.engine.callbacks import Callbacks, build_callbacks, engine_callbacks
from cvkit.engine.display import epochs_planned, print_summary
from cvkit.engine.loop import train_epochs
from cvkit.engine.plan import choose_phase_model, make_loaders
from cvkit.engine.run import Run
from cvkit.engine.rundir import JOB_MARKER, RUNS_DIR, write_reports
from cvkit.plugins import Plugins, get_plugins


def fit(config: TrainConfig, *, resume: str | None = None, plugins: Plugins | None = None,
        show_progress: bool = True, console=None) -> dict:
    """Train ``config.model`` on ``config.data``; returns the run's summary (JSON-ready).

    ``best.pt`` and ``last.pt`` are saved atomically after each epoch, never with weights that are
    not finite. ``resume`` continues from a run's ``last.pt`` exactly as if it had not stopped
    (same seed, ``--workers 0``; with worker processes the augmentation's random numbers differ,
    as persistent workers cannot be re-seeded where they were).

    SIGINT or SIGTERM (see :class:`~cvkit.interrupts.GracefulStop`) during the train phase stops
    after the current optimizer step and saves ``last.pt`` with the weights, optimizer and scaler
    of that moment, ``epoch`` = the last completed epoch, ``rng`` = the random state at the start
    of the stopped epoch, and ``interrupted`` = {epoch, step, steps, batch_size, images, totals
    (running loss and accuracy sums), rng (the random state at the stop), signal}. ``--resume``
    then replays the stopped epoch's first ``step`` batches through the loader without training
    on them and continues at the next step: no finished step is lost or done twice. (If the data or
    batch size changed, the stopped epoch restarts from its first batch with the saved weights.)
    During validation or a save, the epoch is finished and saved first. Then
    :class:`~cvkit.interrupts.TrainingStopped` says how to resume (exit 130 / 143); a second
    signal aborts at once, leaving the last saved checkpoint.
    """
    from cvkit import distributed

    plugins = plugins or get_plugins()
    console = console or ui.out
    started = time.perf_counter()
    info = distributed.from_env()  # torchrun's RANK / WORLD_SIZE; one process without it
    device = distributed.setup(info, resolve_device(config.device))
    try:
        asked = resume is not None  # the user's --resume, not a torchrun restart's own run
        resume = resume or _restarted_run(config, info)
        return _fit(config, resume=resume, plugins=plugins, show_progress=show_progress and info.is_main,
                    console=console, started=started, info=info, device=device, asked=asked)
    finally:
        distributed.teardown(info)


def _restarted_run(config: TrainConfig, info) -> str | None:
    """Under torchrun with ``--max-restarts``, a restarted job continues its own run: the ``--out``
    directory, or the run under ./runs/ marked with this job's rendezvous id, if it has ``last.pt``
    (decided by rank 0, the same for all processes)."""
    from cvkit import distributed

    if info.restart < 1:
        return None
    found = None
    if info.is_main:
        if config.out:
            found = config.out if (Path(config.out) / "last.pt").exists() else None
        elif info.run_id and Path(RUNS_DIR).is_dir():
            for marker in sorted(Path(RUNS_DIR).glob(f"*/{JOB_MARKER}")):
                with contextlib.suppress(OSError):
                    if marker.read_text().strip() == info.run_id and (marker.parent / "last.pt").exists():
                        found = str(marker.parent)
    found = distributed.broadcast(found, info)
    if found and info.is_main:
        ui.warn(f"torchrun restart {info.restart}: continuing {found} from its last.pt")
    return found


def _fit(config: TrainConfig, *, resume, plugins, show_progress, console, started, info, device,
         asked: bool = True) -> dict:
    """The engine's steps in order: set up, plan, loop, report (see docs/architecture.md)."""
    run = Run(config=config, plugins=plugins, info=info, device=device, console=console,
              show_progress=show_progress, started=started)
    checkpoint, run_dir = setup.open_resume(config, resume, info, asked=asked)
    chosen = build_callbacks(config, plugins)  # a callback that cannot be built stops here, before the data
    setup.load_data(run, checkpoint, resume)
    plan = make_loaders(run)
    setup.build_training(run, checkpoint, steps_per_epoch=-(-len(plan.train_loader) // config.accumulate))
    if checkpoint is not None:
        setup.restore(run, checkpoint, resume, run_dir, plan.train_loader)
    else:
        setup.claim_run_dir(run)
    setup.write_run_files(run)
    choose_phase_model(run, plan, checkpoint)
    run.config_record = {**config.as_dict(), "out": str(run.run_dir)}
    if not show_progress:
        run.console = ui.err if console is ui.out else console
    if show_progress:
        _say_what_runs(run, plan)
    run.checkpoint = checkpoint
    run.callbacks = callbacks = Callbacks(engine_callbacks(run, plan) + chosen)
    callbacks.call("on_train_start", run)
    train_epochs(run, plan, callbacks)
    if info.is_main:
        write_reports(run.run_dir, run.history, run.best_confusion, run.classes,
                      shows=f"{config.model} ({run.run_dir})", data=str(config.data), best_epoch=run.best["epoch"])
    summary = _summary(run)
    callbacks.call("on_train_end", run, summary)
    if show_progress:
        print_summary(summary, run.console)
    return summary


def _say_what_runs(run, plan) -> None:
    """The first line: model, data, device and precision, epochs, lr, batch, workers, run directory."""
    config, info = run.config, run.info
    frozen = sum(p.numel() for p in run.model.parameters() if not p.requires_grad)
    run.console.print(
        f"[bold]cvkit train[/] {config.model} on {config.data}: {len(run.splits.train)} train / "
        f"{len(run.splits.val)} val images, {len(run.classes)} classes, {run.device} {run.precision}, "
        f"{epochs_planned(config.epochs, run.start_epoch)}, {config.optimizer} lr {config.lr:g} {config.scheduler}"
        f" (recipe {config.recipe}), "
        + (f"batch {config.batch_size} ({run.batch} per process x {info.world} processes, {info.backend})"
           if info.enabled else f"batch {config.batch_size}") + f", workers {plan.workers}"
        + (f", {frozen:,} frozen parameters" if frozen else "") + f" -> {run.run_dir}")
    if run.interrupted:
        run.console.print(f"continuing epoch {run.interrupted['epoch']} after step {run.interrupted['step']} of "
                          f"{run.interrupted['steps']} (its first batches are read again, not trained on)")


def _summary(run) -> dict:
    """What ``cvkit train --json`` prints."""
    best, history = run.best, run.history
    return {
        "run_dir": str(run.run_dir),
        "model": run.config.model,
        "classes": run.classes,
        "best_epoch": best["epoch"],
        "best_val_accuracy": best["val_accuracy"] if best["val_accuracy"] >= 0 else None,
        "epochs_run": run.epochs_run,
        "last_epoch": history[-1]["epoch"] if history else run.start_epoch - 1,
        "seconds": round(time.perf_counter() - run.started, 3),
        "train_images_per_second": (round(run.train_images / run.train_seconds, 2) if run.train_seconds > 0
                                    else None),
        "device": str(run.device),
        "precision": run.precision,
        "skipped_images": run.splits.layout.get("skipped") or [],
        "best_checkpoint": str(run.run_dir / "best.pt"),
        "last_checkpoint": str(run.run_dir / "last.pt"),
        "warnings": run.warnings,  # why this run cannot learn as configured (see cvkit.engine.checks)
        "stopped_by": run.stopped_by,  # the callback that ended training early (early-stopping: --patience)
    }
