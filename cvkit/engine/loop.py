"""The epoch loop: per epoch a train phase and a validation phase, the scheduler's step, the epoch's
row, then the callbacks; a stop signal or a lost peer ends it with the run saved as far as it went."""

from __future__ import annotations

import contextlib
import signal
import time
import warnings

from cvkit import ui
from cvkit.data import set_loader_epoch
from cvkit.engine.callbacks import checkpoint_payload, save_point
from cvkit.engine.phase import confusion_matrix, loader_failure, run_phase
from cvkit.engine.rng import rng_state, seed_everything
from cvkit.interrupts import GracefulStop, Interrupted, TrainingStopped, signal_name


def train_epochs(run, plan, callbacks) -> None:
    """Epochs ``run.start_epoch`` to ``--epochs``, or until a callback sets ``run.should_stop``."""
    from cvkit import distributed

    progress = ui.make_progress(enabled=run.show_progress, console=run.console)
    run.epoch = run.start_epoch
    holds = lambda: f"{run.last_file} holds {run.holds}" if run.holds else ""  # noqa: E731
    try:
        with progress, GracefulStop(cleanup=lambda: stop_workers(plan.train_loader, plan.val_loader)) as stop:
            for epoch in range(run.start_epoch, run.config.epochs + 1):
                run.epoch = epoch
                row = one_epoch(run, plan, stop, progress, callbacks)
                callbacks.call("on_epoch_end", run, row)
                if run.info.any(run.should_stop, run.device):  # a callback's stop ends every process's loop
                    break
                _stop_if_asked_late(run, stop)
    except Interrupted as exc:  # a second signal: no more saving
        raise TrainingStopped(
            f"{exc.message()} again: aborted in epoch {run.epoch}; "
            + (f"{holds()}; {run.resume_hint()}" if run.holds else "nothing was saved yet"), exc.signum) from None
    except distributed.PeerLost as exc:  # noticed in a collective of the loop: say where, and what is saved
        raise distributed.peer_lost(exc, f"epoch {run.epoch}", holds()) from None
    except RuntimeError as exc:  # a dead DataLoader worker can surface outside run_phase too
        problem = loader_failure(exc, plan.train_loader, f"epoch {run.epoch}")
        if problem is None and run.info.enabled and distributed.is_peer_failure(exc):
            distributed.ignore_the_agents_sigterm()
            problem = distributed.peer_lost(exc, f"epoch {run.epoch}", holds())
        if problem is None:
            raise
        raise problem from None
    finally:
        stop_workers(plan.train_loader, plan.val_loader)


def one_epoch(run, plan, stop, progress, callbacks=None) -> dict:
    """Train and validate one epoch; returns its row of metrics.csv (already in ``run.history``).
    ``callbacks`` hear of each optimizer step (``on_step_end``) and of the validation pass
    (``on_validation_start``, ``on_validation_end``)."""
    from cvkit.engine.callbacks import Callbacks

    from cvkit import distributed

    config, info, device, epoch = run.config, run.info, run.device, run.epoch
    callbacks = callbacks or Callbacks([])
    t0 = time.perf_counter()
    lr = run.optimizer.param_groups[0]["lr"]
    if run.interrupted and epoch == run.start_epoch:  # a per-step schedule has moved on since the epoch began
        lr = run.interrupted.get("lr", lr)
    run.epoch_lr = lr
    epoch_rng = rng_state(plan.train_loader)  # a last.pt saved in this epoch replays from here
    set_loader_epoch(plan.train_loader, epoch)  # a new order per epoch (distributed sampler, stream)
    if info.enabled:  # each process its own augmentation numbers
        seed_everything(config.seed * 1_000_003 + epoch * 1_009 + info.rank)
    phase = dict(device=device, precision=run.precision, progress=progress, epoch=epoch, stop=stop)
    tr = run_phase(plan.phase_model, plan.train_loader, run.loss_fn, optimizer=run.optimizer, scaler=run.scaler,
                   description=f"epoch {epoch}/{config.epochs} train", dist=info, on_step=callbacks.step_hook(run),
                   rule=run.rule,
                   resume=run.interrupted if epoch == run.start_epoch else None, **phase)
    rng_after_train = rng_state(plan.train_loader)  # where a stopped epoch continues
    va = None
    if "stopped_at" not in tr:
        callbacks.call("on_validation_start", run)
        va = run_phase(plan.phase_model, plan.val_loader, run.loss_fn, description=f"epoch {epoch}/{config.epochs} val",
                       collect=True, **phase)
        callbacks.call("on_validation_end", run)
    stopped = "stopped_at" in tr or "stopped_at" in va
    if info.any(stopped, device):  # all processes stop together, or none does
        _save_the_stopped_epoch(run, plan, stop, tr, epoch_rng, rng_after_train)
    tr = distributed.reduce_phase(tr, info, device)
    va = distributed.reduce_phase(va, info, device)
    if run.scheduler is not None and run.scheduler_interval == "epoch":  # per step: see SchedulerSteps
        with warnings.catch_warnings():
            # cvkit steps the scheduler after the epoch's optimizer steps; torch warns
            # anyway when a resumed epoch had no steps left in this process
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
            run.scheduler.step()
    return _record_epoch(run, plan, tr, va, lr, t0)


def _record_epoch(run, plan, tr: dict, va: dict, lr: float, t0: float) -> dict:
    """The epoch's row; the run's counters, history and best updated with it."""
    run.epochs_run += 1
    run.train_images += tr["images"]
    extra = plan.extract_seconds if run.epochs_run == 1 else 0.0  # feature extraction counts in epoch one
    run.train_seconds += tr["seconds"] + extra
    run.improved = va["accuracy"] > run.best["val_accuracy"]
    row = {"epoch": run.epoch, "train_loss": round(tr["loss"], 6),
           "train_accuracy": round(tr["accuracy"], 6), "val_loss": round(va["loss"], 6),
           "val_accuracy": round(va["accuracy"], 6), "lr": lr,
           "seconds": round(time.perf_counter() - t0 + extra, 3),
           "train_seconds": round(tr["seconds"] + extra, 6), "best": run.improved}
    run.confusion = confusion_matrix(va["targets"], va["predictions"], len(run.classes))
    run.phase_results = (tr, va)
    run.history.append(row)
    if run.improved:
        run.best = {"epoch": run.epoch, "val_accuracy": va["accuracy"], "val_loss": va["loss"]}
        run.best_confusion = run.confusion
    return row


def _save_the_stopped_epoch(run, plan, stop, tr: dict, epoch_rng: dict, rng_after_train: dict) -> None:
    """A stop signal in the middle of an epoch: save the train steps done so far, then stop."""
    epoch, train_loader = run.epoch, plan.train_loader
    step = tr.get("stopped_at", len(train_loader))
    record = {"epoch": epoch, "step": step, "steps": len(train_loader),
              "batch_size": run.config.batch_size, "images": len(run.splits.train),
              "totals": tr["totals"], "rng": rng_after_train,
              "signal": signal_name(stop.requested or signal.SIGTERM), "processes": run.info.world,
              "lr": run.epoch_lr}
    payload = checkpoint_payload(run, epoch=epoch - 1, rng=epoch_rng, interrupted=record,
                                 metrics={"epoch": epoch, "step": step, "train_loss": tr["loss"],
                                          "train_accuracy": tr["accuracy"]})
    save_point(run, payload, epoch)
    run.info.barrier()  # last.pt is written before any process leaves
    signum = stop.requested or signal.SIGTERM  # another process got the signal
    raise TrainingStopped(
        f"{signal_name(signum)}: stopped in epoch {epoch} after step {step} of "
        f"{len(train_loader)}; saved {run.last_file}; {run.resume_hint()}", signum)


def _stop_if_asked_late(run, stop) -> None:
    """A signal that came during validation or a save: the epoch is saved, stop now."""
    late = run.info.any(bool(stop.requested), run.device)
    if late and run.epoch < run.config.epochs:
        run.info.barrier()
        signum = stop.requested or signal.SIGTERM
        raise TrainingStopped(
            f"{signal_name(signum)}: stopped after epoch {run.epoch} of {run.config.epochs}; "
            f"saved {run.last_file}; {run.resume_hint()}", signum)


def stop_workers(*loaders) -> None:
    """Shut down the persistent DataLoader workers now, not at interpreter exit: after a signal to
    the process group a worker may be dead already, and torch's own shutdown at exit would then
    print a traceback for it after cvkit's one-line message. Runs as the ``cleanup`` of
    :class:`GracefulStop` (a worker dying late is held back there) and again, a no-op, on errors."""
    for loader in loaders:
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            with contextlib.suppress(RuntimeError):  # "DataLoader worker ... is killed by signal"
                iterator._shutdown_workers()
            loader._iterator = None
