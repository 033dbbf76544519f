"""What reacts to the epoch loop: callbacks, and the engine's own ones.

A callback is any object; the loop calls whichever of these methods it has, in the order the
callbacks were given: ``on_train_start(run)``, ``on_epoch_end(run, metrics)`` (``metrics``: the
epoch's row of metrics.csv), ``on_train_end(run, summary)``. The engine's own reactions to an epoch
are callbacks of that kind, first in the list: the checkpoints, metrics.csv and the epoch table;
then come the plugins' callbacks the user named (``--callback``; ``--patience`` is early-stopping's).
"""

from __future__ import annotations

from cvkit.checkpoint import make_checkpoint, save_checkpoint
from cvkit.engine.display import print_epoch_row
from cvkit.engine.phase import first_nonfinite
from cvkit.engine.rng import rng_state
from cvkit.engine.rundir import write_metrics, writing
from cvkit.errors import CvkitError, NumericalError, PluginError, UsageError


class Callbacks:
    """Calls the callbacks' methods in order, skipping the methods a callback does not have.

    ``callbacks``: the engine's own objects, and ``Registered`` ones (a plugin's): an exception in a
    plugin's callback stops training as that plugin's error (exit 5), with what last.pt holds."""

    def __init__(self, callbacks: list):
        self.callbacks = list(callbacks)

    def call(self, method: str, run, *args) -> None:
        for callback in self.callbacks:
            target = callback.obj if isinstance(callback, Registered) else callback
            function = getattr(target, method, None)
            if function is None:
                continue
            if not isinstance(callback, Registered):
                function(run, *args)
                continue
            try:
                function(run, *args)
            except Exception as exc:
                raise callback.failed(method, exc, run) from exc
            if run.should_stop and run.stopped_by is None:
                run.stopped_by = callback.name

    def step_hook(self, run):
        """``on_step(step, loss)`` for the loop when a callback has ``on_step_end``, else None (no cost);
        the step's loss value is ``run.step_loss`` for the callbacks."""
        if not any(hasattr(getattr(c, "obj", c), "on_step_end") for c in self.callbacks):
            return None
        def on_step(step: int, loss: float) -> None:
            run.step_loss = loss
            self.call("on_step_end", run, step)

        return on_step


class Registered:
    """A plugin's callback as the user named it."""

    def __init__(self, name: str, plugin: str, obj):
        self.name, self.plugin, self.obj = name, plugin, obj

    def failed(self, method: str, exc: Exception, run) -> PluginError:
        kept = (f"{run.last_file} holds {run.holds}; {run.resume_hint()}" if run.holds and run.run_dir
                else "nothing was saved yet")
        what = str(exc) if isinstance(exc, CvkitError) else f"{type(exc).__name__}: {exc}"
        return PluginError(f"callback {self.name!r} of plugin {self.plugin!r} failed in {method}: {what}; "
                           f"training stopped; {kept}")


def build_callbacks(config, plugins) -> list[Registered]:
    """The callbacks ``--callback`` (and ``--patience``, for early-stopping) name, built with their
    ``--opt callback.NAME.KEY=VALUE`` options."""
    names = list(dict.fromkeys(config.callbacks or []))
    given = (config.options or {}).get("callback") or {}
    options: dict[str, dict] = {}
    for key, value in given.items():
        name, dot, option = key.rpartition(".")
        if not dot or name not in names and not (name == "early-stopping" and config.patience):
            raise UsageError(f"--opt callback.{key}: expected callback.NAME.KEY=VALUE for a callback given "
                             f"with --callback (given: {', '.join(names) or 'none'})")
        options.setdefault(name, {})[option] = value
    if config.patience and "early-stopping" not in names:
        names.append("early-stopping")
    if config.patience:
        options.setdefault("early-stopping", {}).setdefault("patience", config.patience)
    built = []
    for name in names:
        entry = plugins["callbacks"].get(name, option="--callback")
        try:
            built.append(Registered(name, entry.plugin, entry.create(options=options.get(name))))
        except UsageError as exc:  # an option the factory does not take: name the callback in --opt's form
            message = str(exc)
            if message.startswith("--opt callback.") and not message.startswith(f"--opt callback.{name}."):
                message = message.replace("--opt callback.", f"--opt callback.{name}.", 1)
            raise UsageError(message) from None
    return built


def checkpoint_payload(run, *, epoch: int, rng: dict, metrics: dict, interrupted: dict | None = None):
    """What ``last.pt`` (and ``best.pt``) hold after ``epoch``; None in processes other than rank 0."""
    if not run.info.is_main:
        return None
    payload = make_checkpoint(
        model=run.model, spec=run.spec, classes=run.classes, transform_name=run.transform_name,
        transform=run.eval_tf, config=run.config_record, run=run.run_record, epoch=epoch, history=run.history,
        optimizer=run.optimizer, scheduler=run.scheduler, scaler=run.scaler, best=run.best, rng=rng,
        metrics=metrics, interrupted=interrupted)
    if run.callbacks is not None:  # e.g. --ema puts its averaged weights in
        run.callbacks.call("on_checkpoint", run, payload)
    return payload


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


class SchedulerSteps:
    """A scheduler registered with ``interval="step"`` steps after every optimizer step."""

    def on_step_end(self, run, step: int) -> None:
        run.scheduler.step()


def engine_callbacks(run, plan) -> list:
    """The engine's own callbacks, in the order they run: the per-step ones first (the schedule,
    then the weight average of the stepped weights), then those after each epoch."""
    from cvkit.engine.ema import WeightAverage

    callbacks = []
    if run.scheduler is not None and run.scheduler_interval == "step":
        callbacks.append(SchedulerSteps())
    if run.config.ema:
        callbacks.append(WeightAverage(run.config.ema))
    callbacks += [SaveCheckpoints(plan.train_loader), MetricsFile()]
    if run.show_progress:
        callbacks.append(EpochTable())
    return callbacks
