"""The training loop: the chapter's ``train_model``, done right.

Per epoch a train phase and a validation phase; the scheduler steps after the epoch's optimizer
steps; the best validation accuracy's weights are kept, saved as ``best.pt`` and are the final model;
``last.pt`` is written every epoch so a run can resume. Frozen parameters never reach the optimizer.
``run_phase`` is the one loop over batches, used for training, validation and ``cvkit eval``.
"""

from __future__ import annotations

import contextlib
import shlex
import signal
import time
import warnings
from pathlib import Path

from cvkit import ui
from cvkit.accel import (CACHE_BUDGET_BYTES, CachedSamples, cache_decoded_images, cacheable_head, caches_enabled,
                         extract_features, frozen_backbone_model, frozen_head, to_channels_last, use_channels_last)
from cvkit.build import (ModelSpec, decode_min_side, build_loss, build_model, build_optimizer, build_scheduler,
                         build_transform, model_spec)
from cvkit.checkpoint import find_checkpoint, load_checkpoint, make_checkpoint, save_checkpoint
from cvkit.config import TrainConfig, write_config
from cvkit.data import load_splits, make_loader, resolve_workers
from cvkit.device import resolve_device, resolve_precision
from cvkit.engine.checks import data_warnings, model_warnings
from cvkit.engine.display import epochs_planned, print_epoch_row, print_summary
from cvkit.engine.phase import autocast, confusion_matrix, first_nonfinite, loader_failure, run_phase  # noqa: F401
from cvkit.engine.rng import rng_state, seed_everything, set_rng_state
from cvkit.engine.rundir import (JOB_MARKER, RUNS_DIR, clean_stale_temp_files, new_run_dir, write_metrics,
                                 write_reports, writing)
from cvkit.errors import CheckpointError, NumericalError, UsageError
from cvkit.interrupts import GracefulStop, Interrupted, TrainingStopped, signal_name
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
    import torch

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
    import torch

    from cvkit import distributed

    checkpoint = None
    if resume:
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
            raise UsageError(f"{run_dir}: already trained {trained}; to train further, raise --epochs "
                             f"(e.g. {again})")
    if config.data is None:
        raise UsageError("DATA: give the image folder to train on")

    spec: ModelSpec = model_spec(config.model, plugins)
    precision = resolve_precision(config.precision, device)
    batch = distributed.per_process_batch(config.batch_size, info)  # --batch-size is the global batch
    seed_everything(config.seed)
    opts = config.options or {}

    transform_name = config.transforms or spec.default_transforms or "plain"
    train_tf = build_transform(spec, transform_name, train=True, options=opts.get("transform"), plugins=plugins)
    eval_tf = build_transform(spec, transform_name, train=False, options=opts.get("transform"), plugins=plugins)
    loss_fn = build_loss(config.loss, options=opts.get("loss"), plugins=plugins)
    splits = load_splits(config.data, dataset=config.dataset, train_transform=train_tf, eval_transform=eval_tf,
                         val_split=config.val_split, seed=config.seed, options=opts.get("dataset"),
                         on_bad_image=config.on_bad_image, min_side=decode_min_side(spec), plugins=plugins)
    skipped = splits.layout.get("skipped") or []
    classes = splits.classes
    run_warnings = data_warnings(splits)  # before the datasets are wrapped in caches
    if checkpoint is not None and checkpoint["classes"] != classes:
        raise CheckpointError(f"--resume {resume}: the checkpoint's classes {checkpoint['classes']} differ "
                              f"from the data's {classes}")

    workers = resolve_workers(config.workers, len(splits.train), spec.input_size, processes=info.local_world)
    deterministic = bool(plugins["transforms"].get(transform_name).meta.get("deterministic"))
    decoded = None
    if not deterministic:
        # random augmentation: keep the decoded pictures of a small set in memory; decoding the
        # training pictures counts in epoch one's training time, like feature extraction
        decoded = cache_decoded_images([splits.train], workers=workers)
        if decoded is not None and workers > 0 and config.workers in (None, "auto") and device.type == "cpu":
            # what is left per image (the augmentation) is cheaper in this process than the
            # hand-over from worker processes that share its cores (measured: docs/performance.md)
            workers = 0
    if workers == 0 and caches_enabled():  # keep transformed samples where that cannot change them
        if deterministic:
            splits.train = CachedSamples(splits.train)
        splits.val = CachedSamples(splits.val)
    train_loader = make_loader(splits.train, batch_size=batch, shuffle=True, workers=workers, device=device,
                               seed=config.seed, sampler=distributed.train_sampler(splits.train, info, config.seed))
    val_loader = make_loader(splits.val, batch_size=batch, shuffle=False, workers=workers, device=device,
                             seed=config.seed, sampler=distributed.eval_sampler(splits.val, info))

    weights = "none" if checkpoint is not None else config.weights
    model = build_model(config.model, num_classes=len(classes), weights=weights,
                        options=opts.get("model"), plugins=plugins)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model_state"])
    model.to(device)
    channels_last = use_channels_last(model)
    if channels_last:
        to_channels_last(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise UsageError(f"--model {config.model}: no trainable parameters")
    run_warnings = model_warnings(config, spec, model, plugins) + run_warnings
    if info.is_main:  # distributed: rank 0 speaks for the job
        for message in run_warnings:
            ui.warn(message)
    optimizer = build_optimizer(config.optimizer, trainable, lr=config.lr, options=opts.get("optimizer"),
                                plugins=plugins)
    scheduler = build_scheduler(config.scheduler, optimizer, epochs=config.epochs,
                                options=opts.get("scheduler"), plugins=plugins)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    history: list[dict] = []
    interrupted = None
    best = {"epoch": 0, "val_accuracy": -1.0}
    start_epoch = 1
    best_confusion = None
    if checkpoint is not None:
        optimizer.load_state_dict(checkpoint["optimizer_state"])
        if scheduler is not None and checkpoint.get("scheduler_state"):
            scheduler.load_state_dict(checkpoint["scheduler_state"])
        if checkpoint.get("scaler_state"):
            scaler.load_state_dict(checkpoint["scaler_state"])
        history = list(checkpoint.get("history") or [])
        best = dict(checkpoint.get("best") or best)
        start_epoch = int(checkpoint["epoch"]) + 1
        best_file = run_dir / "best.pt"
        if best_file.exists():
            best_confusion = (load_checkpoint(best_file).get("metrics") or {}).get("confusion_matrix")
        set_rng_state(checkpoint.get("rng"), train_loader)
        interrupted = checkpoint.get("interrupted")
        if interrupted and (interrupted.get("steps"), interrupted.get("batch_size"), interrupted.get("images")) != (
                len(train_loader), config.batch_size, len(splits.train)):
            ui.warn(f"--resume {resume}: epoch {interrupted['epoch']} stopped after step {interrupted['step']}, "
                    f"but the training images or --batch-size differ now; that epoch starts again from its "
                    f"first batch, with the weights saved at the stop")
            interrupted = None
        if interrupted and (info.enabled or interrupted.get("processes", 1) > 1):
            # each process drew its own augmentation numbers; the stopped epoch is redone instead
            if info.is_main:
                ui.warn(f"--resume {resume}: epoch {interrupted['epoch']} stopped after step {interrupted['step']} "
                        f"in distributed training; that epoch starts again from its first batch, with the "
                        f"weights saved at the stop")
            interrupted = None
    else:
        # rank 0 names the run directory; every process gets the same name (or the same error)
        problem = None
        if info.is_main:
            run_dir = Path(config.out) if config.out else new_run_dir(config.model)
            if (run_dir / "last.pt").exists() or (run_dir / "best.pt").exists():
                problem = f"--out {run_dir}: already holds a run; use --resume {run_dir} or another --out"
        else:
            run_dir = None
        run_dir, problem = distributed.broadcast((run_dir, problem), info)
        if problem:
            raise UsageError(problem)
    if info.is_main:  # only rank 0 writes the run directory
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"--out {run_dir}: cannot create the run directory ({exc.strerror or exc})") from None
        clean_stale_temp_files(run_dir)
        with writing(run_dir / "config.yaml"):
            write_config(config, run_dir / "config.yaml")
        if splits.layout.get("layout") == "split":
            import json

            with writing(run_dir / "split.json"):
                (run_dir / "split.json").write_text(json.dumps(splits.layout, indent=1))
        if info.run_id:
            with writing(run_dir / JOB_MARKER):
                (run_dir / JOB_MARKER).write_text(info.run_id + "\n")

    # A frozen backbone under a deterministic transform gives the same features every epoch:
    # compute them once, then each epoch trains only the head on them.
    phase_model, extract_seconds = model, 0.0
    head = cacheable_head(model, spec.head, deterministic)
    if head is not None:
        from torch.utils.data import TensorDataset

        t0 = time.perf_counter()
        plain_train = make_loader(splits.train, batch_size=batch, shuffle=False, workers=workers, device=device)
        train_features = TensorDataset(*extract_features(model, head, plain_train, device=device,
                                                         precision=precision))
        val_features = TensorDataset(*extract_features(model, head, val_loader, device=device,
                                                       precision=precision))
        extract_seconds = time.perf_counter() - t0
        phase_model = getattr(model, head)
        train_loader = make_loader(train_features, batch_size=batch, shuffle=True, workers=0, device=device,
                                   seed=config.seed, sampler=distributed.train_sampler(train_features, info, config.seed))
        val_loader = make_loader(val_features, batch_size=batch, shuffle=False, workers=0,  # this process's shard
                                 device=device)
        if checkpoint is not None:
            set_rng_state(checkpoint.get("rng"), train_loader)
    elif (frozen := frozen_head(model, spec.head)) is not None:
        # random augmentation: the backbone runs every step, but fused and without autograd
        phase_model = frozen_backbone_model(model, frozen)
    if decoded is not None:
        extract_seconds += decoded["seconds"]
        if not isinstance(splits.val, CachedSamples):
            kept_val = cache_decoded_images([splits.val], workers=workers, budget=CACHE_BUDGET_BYTES - decoded["bytes"])
            decoded["images"] += kept_val["images"] if kept_val else 0
    frozen_backbone = phase_model is not model and head is None
    if info.enabled:  # gradients of the trainable parameters are averaged across processes
        from torch.nn.parallel import DistributedDataParallel

        phase_model = DistributedDataParallel(phase_model, device_ids=[device] if device.type == "cuda" else None)

    config_record = {**config.as_dict(), "out": str(run_dir)}
    run_record = {"device": str(device), "precision": precision, "workers": workers,
                  "transforms": transform_name, "layout": splits.layout.get("layout"),
                  "channels_last": channels_last, "cached_features": head is not None,
                  "frozen_backbone": frozen_backbone,
                  "decoded_images_kept": decoded["images"] if decoded else 0,
                  "processes": info.world, "backend": info.backend, "warnings": run_warnings}
    if not show_progress:
        console = ui.err if console is ui.out else console
    if show_progress:
        frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
        console.print(
            f"[bold]cvkit train[/] {config.model} on {config.data}: {len(splits.train)} train / "
            f"{len(splits.val)} val images, {len(classes)} classes, {device} {precision}, "
            f"{epochs_planned(config.epochs, start_epoch)}, lr {config.lr:g}, "
            + (f"batch {config.batch_size} ({batch} per process x {info.world} processes, {info.backend})"
               if info.enabled else f"batch {config.batch_size}") + f", workers {workers}"
            + (f", {frozen:,} frozen parameters" if frozen else "") + f" -> {run_dir}")
        if interrupted:
            console.print(f"continuing epoch {interrupted['epoch']} after step {interrupted['step']} of "
                          f"{interrupted['steps']} (its first batches are read again, not trained on)")

    patience_left = config.patience
    epochs_run = 0
    train_images, train_seconds = 0, 0.0
    last_file = run_dir / "last.pt"
    resume_hint = f"continue with: cvkit train --resume {shlex.quote(str(run_dir))}" + (
        f" --nproc {info.world}" if info.enabled else "")
    holds = None  # what last.pt holds, for the message of an abort
    if checkpoint is not None:
        holds = f"epoch {start_epoch - 1}" + (f" and step {interrupted['step']} of epoch {start_epoch}"
                                              if interrupted else "")

    def save_point(payload, epoch, best_too=False):
        if payload is None:  # not rank 0: only rank 0 writes
            return
        bad = first_nonfinite(payload["model_state"].items())
        if bad is not None:  # never save, or keep as best, weights that are not finite
            raise NumericalError(f"weight {bad} is not finite in epoch {epoch}; not saved"
                                 + (f" ({last_file} keeps {holds})" if holds else "") + "; try a lower --lr")
        if best_too:  # best.pt: the weights of the best validation accuracy so far
            save_checkpoint(payload, run_dir / "best.pt")
        save_checkpoint(payload, last_file)

    epoch = start_epoch
    progress = ui.make_progress(enabled=show_progress, console=console)
    try:
        with progress, GracefulStop(cleanup=lambda: _stop_workers(train_loader, val_loader)) as stop:
            for epoch in range(start_epoch, config.epochs + 1):
                t0 = time.perf_counter()
                lr = optimizer.param_groups[0]["lr"]
                epoch_rng = rng_state(train_loader)  # a last.pt saved in this epoch replays from here
                if info.enabled:  # a new shard order per epoch; each process its own augmentation numbers
                    train_loader.sampler.set_epoch(epoch)
                    seed_everything(config.seed * 1_000_003 + epoch * 1_009 + info.rank)
                tr = run_phase(phase_model, train_loader, loss_fn, device=device, precision=precision,
                               optimizer=optimizer, scaler=scaler, progress=progress,
                               description=f"epoch {epoch}/{config.epochs} train", epoch=epoch, stop=stop,
                               resume=interrupted if epoch == start_epoch else None, dist=info)
                rng_after_train = rng_state(train_loader)  # where a stopped epoch continues
                va = None
                if "stopped_at" not in tr:
                    va = run_phase(phase_model, val_loader, loss_fn, device=device, precision=precision,
                                   progress=progress, description=f"epoch {epoch}/{config.epochs} val",
                                   epoch=epoch, collect=True, stop=stop)
                stopped = "stopped_at" in tr or "stopped_at" in va
                stopped = info.any(stopped, device)  # all processes stop together, or none does
                if not stopped:
                    tr = distributed.reduce_phase(tr, info, device)
                    va = distributed.reduce_phase(va, info, device)
                if stopped:  # save the train steps done in this epoch
                    step = tr.get("stopped_at", len(train_loader))
                    record = {"epoch": epoch, "step": step, "steps": len(train_loader),
                              "batch_size": config.batch_size, "images": len(splits.train),
                              "totals": tr["totals"], "rng": rng_after_train,
                              "signal": signal_name(stop.requested or signal.SIGTERM), "processes": info.world}
                    payload = None if not info.is_main else make_checkpoint(
                        model=model, spec=spec, classes=classes, transform_name=transform_name, transform=eval_tf,
                        config=config_record, run=run_record, epoch=epoch - 1, history=history,
                        optimizer=optimizer, scheduler=scheduler, scaler=scaler, best=best, rng=epoch_rng,
                        metrics={"epoch": epoch, "step": step, "train_loss": tr["loss"],
                                 "train_accuracy": tr["accuracy"]},
                        interrupted=record)
                    save_point(payload, epoch)
                    info.barrier()  # last.pt is written before any process leaves
                    signum = stop.requested or signal.SIGTERM  # another process got the signal
                    raise TrainingStopped(
                        f"{signal_name(signum)}: stopped in epoch {epoch} after step {step} of "
                        f"{len(train_loader)}; saved {last_file}; {resume_hint}", signum)
                if scheduler is not None:
                    with warnings.catch_warnings():
                        # cvkit steps the scheduler after the epoch's optimizer steps; torch warns
                        # anyway when a resumed epoch had no steps left in this process
                        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)`")
                        scheduler.step()
                epochs_run += 1
                train_images += tr["images"]
                extra = extract_seconds if epochs_run == 1 else 0.0  # feature extraction counts in epoch one
                train_seconds += tr["seconds"] + extra
                improved = va["accuracy"] > best["val_accuracy"]
                row = {"epoch": epoch, "train_loss": round(tr["loss"], 6),
                       "train_accuracy": round(tr["accuracy"], 6), "val_loss": round(va["loss"], 6),
                       "val_accuracy": round(va["accuracy"], 6), "lr": lr,
                       "seconds": round(time.perf_counter() - t0 + extra, 3),
                       "train_seconds": round(tr["seconds"] + extra, 6), "best": improved}
                confusion = confusion_matrix(va["targets"], va["predictions"], len(classes))
                new_best = {"epoch": epoch, "val_accuracy": va["accuracy"], "val_loss": va["loss"]}
                payload = None if not info.is_main else make_checkpoint(
                    model=model, spec=spec, classes=classes, transform_name=transform_name, transform=eval_tf,
                    config=config_record, run=run_record, epoch=epoch, history=[*history, row],
                    optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                    best=new_best if improved else best, rng=rng_state(train_loader),
                    metrics={**row, "confusion_matrix": confusion})
                save_point(payload, epoch, best_too=improved)
                holds = f"epoch {epoch}"
                history.append(row)
                if improved:
                    best, best_confusion = new_best, confusion
                if info.is_main:
                    with writing(run_dir / "metrics.csv"):
                        write_metrics(history, run_dir / "metrics.csv")
                if show_progress:
                    print_epoch_row(console, [
                        f"{epoch}/{config.epochs}", f"{tr['loss']:.4f}", f"{tr['accuracy']:.3f}", f"{va['loss']:.4f}",
                        f"{va['accuracy']:.3f}", f"{lr:.2g}", f"{row['seconds']:.1f}s",
                        "[green]best[/]" if improved else ""], first=epoch == start_epoch)
                if config.patience:
                    patience_left = config.patience if improved else patience_left - 1
                    if patience_left <= 0:
                        if show_progress:
                            console.print(f"early stop: no better val accuracy for {config.patience} epochs")
                        break
                late = info.any(bool(stop.requested), device)
                if late and epoch < config.epochs:  # came during validation or a save
                    info.barrier()
                    signum = stop.requested or signal.SIGTERM
                    raise TrainingStopped(
                        f"{signal_name(signum)}: stopped after epoch {epoch} of {config.epochs}; "
                        f"saved {last_file}; {resume_hint}", signum)
    except Interrupted as exc:  # a second signal: no more saving
        raise TrainingStopped(
            f"{exc.message()} again: aborted in epoch {epoch}; "
            + (f"{last_file} holds {holds}; {resume_hint}" if holds else "nothing was saved yet"),
            exc.signum) from None
    except distributed.PeerLost as exc:  # noticed in a collective of the loop: say where, and what is saved
        raise distributed.peer_lost(exc, f"epoch {epoch}", f"{last_file} holds {holds}" if holds else "") from None
    except RuntimeError as exc:  # a dead DataLoader worker can surface outside run_phase too
        problem = loader_failure(exc, train_loader, f"epoch {epoch}")
        if problem is None and info.enabled and distributed.is_peer_failure(exc):
            distributed.ignore_the_agents_sigterm()
            problem = distributed.peer_lost(exc, f"epoch {epoch}", f"{last_file} holds {holds}" if holds else "")
        if problem is None:
            raise
        raise problem from None
    finally:
        _stop_workers(train_loader, val_loader)

    if info.is_main:
        write_reports(run_dir, history, best_confusion, classes, shows=f"{config.model} ({run_dir})",
                       data=str(config.data), best_epoch=best["epoch"])
    seconds = time.perf_counter() - started
    summary = {
        "run_dir": str(run_dir),
        "model": config.model,
        "classes": classes,
        "best_epoch": best["epoch"],
        "best_val_accuracy": best["val_accuracy"] if best["val_accuracy"] >= 0 else None,
        "epochs_run": epochs_run,
        "last_epoch": history[-1]["epoch"] if history else start_epoch - 1,
        "seconds": round(seconds, 3),
        "train_images_per_second": round(train_images / train_seconds, 2) if train_seconds > 0 else None,
        "device": str(device),
        "precision": precision,
        "skipped_images": skipped,
        "best_checkpoint": str(run_dir / "best.pt"),
        "last_checkpoint": str(run_dir / "last.pt"),
        "warnings": run_warnings,  # why this run cannot learn as configured (see model_warnings, data_warnings)
    }
    if show_progress:
        print_summary(summary, console)
    return summary


def _stop_workers(*loaders) -> None:
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


