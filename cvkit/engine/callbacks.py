"""What reacts to the epoch loop: callbacks, and the engine's own ones.

A callback is any object; the loop calls whichever of these methods it has, in the order the
callbacks were given: ``on_train_start(run)``, ``on_epoch_end(run, metrics)`` (``metrics``: the
epoch's row of metrics.csv), ``on_train_end(run, summary)``. The engine's own reactions to an epoch
are callbacks of that kind, first in the list: the checkpoints, metrics.csv, the epoch table and
``--patience``.
"""

from __future__ import annotations

from cvkit.checkpoint import make_checkpoint, save_checkpoint
from cvkit.engine.display import print_epoch_row
from cvkit.engine.phase import first_nonfinite
from cvkit.engine.rng import rng_state
from cvkit.engine.rundir import write_metrics, writing
from cvkit.errors import NumericalError


class Callbacks:
    """Calls the callbacks' methods in order, skipping the methods a callback does not have."""

    def __init__(self, callbacks: list):
        self.callbacks = list(callbacks)

    def call(self, method: str, run, *args) -> None:
        for callback in self.callbacks:
            function = getattr(callback, method, None)
            if function is not None:
                function(run, *args)


def checkpoint_payload(run, *, epoch: int, rng: dict, metrics: dict, interrupted: dict | None = None):
    """What ``last.pt`` (and ``best.pt``) hold after ``epoch``; None in processes other than rank 0."""
    if not run.info.is_main:
        return None
    return make_checkpoint(
        model=run.model, spec=run.spec, classes=run.classes, transform_name=run.transform_name,
        transform=run.eval_tf, config=run.config_record, run=run.run_record, epoch=epoch, history=run.history,
        optimizer=run.optimizer, scheduler=run.scheduler, scaler=run.scaler, best=run.best, rng=rng,
        metrics=metrics, interrupted=interrupted)


def save_point(run, payload, epoch: int, *, best_too: bool = False) -> None:
    """Write last.pt (and best.pt), never with weights that are not finite."""
    if payload is None:  # not rank 0: only rank 0 writes
        return
    bad = first_nonfinite(payload["model_state"].items())
    if bad is not None:  # never save, or keep as best, weights that are not finite
        raise NumericalError(f"weight {bad} is not finite in epoch {epoch}; not saved"
                             + (f" ({run.last_file} keeps {run.holds})" if run.holds else "") + "; try a lower --lr")
    if best_too:  # best.pt: the weights of the best validation accuracy so far
        save_checkpoint(payload, run.run_dir / "best.pt")
    save_checkpoint(payload, run.last_file)


class SaveCheckpoints:
    """last.pt after every epoch; best.pt too when the epoch is the best so far."""

    def __init__(self, train_loader):
        self.train_loader = train_loader

    def on_epoch_end(self, run, metrics: dict) -> None:
        payload = checkpoint_payload(run, epoch=run.epoch, rng=rng_state(self.train_loader),
                                     metrics={**metrics, "confusion_matrix": run.confusion})
        save_point(run, payload, run.epoch, best_too=run.improved)
        run.holds = f"epoch {run.epoch}"


class MetricsFile:
    """metrics.csv, rewritten whole (and atomically) after every epoch."""

    def on_epoch_end(self, run, metrics: dict) -> None:
        if run.info.is_main:
            with writing(run.run_dir / "metrics.csv"):
                write_metrics(run.history, run.run_dir / "metrics.csv")


class EpochTable:
    """The row of the epoch table (the header with the first one)."""

    def on_epoch_end(self, run, metrics: dict) -> None:
        tr, va = run.phase_results
        print_epoch_row(run.console, [
            f"{run.epoch}/{run.config.epochs}", f"{tr['loss']:.4f}", f"{tr['accuracy']:.3f}", f"{va['loss']:.4f}",
            f"{va['accuracy']:.3f}", f"{metrics['lr']:.2g}", f"{metrics['seconds']:.1f}s",
            "[green]best[/]" if run.improved else ""], first=run.epoch == run.start_epoch)


class Patience:
    """``--patience N``: stop after N epochs without a better validation accuracy."""

    name = "early-stopping"

    def __init__(self, patience: int):
        self.patience = self.left = patience

    def on_epoch_end(self, run, metrics: dict) -> None:
        self.left = self.patience if run.improved else self.left - 1
        if self.left <= 0:
            if run.show_progress:
                run.console.print(f"early stop: no better val accuracy for {self.patience} epochs")
            run.should_stop = True
            run.stopped_by = self.name


def engine_callbacks(run, plan) -> list:
    """The engine's own callbacks, in the order they run after each epoch."""
    callbacks = [SaveCheckpoints(plan.train_loader), MetricsFile()]
    if run.show_progress:
        callbacks.append(EpochTable())
    if run.config.patience:
        callbacks.append(Patience(run.config.patience))
    return callbacks
