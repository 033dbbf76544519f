"""The training loop: the chapter's ``train_model``, done right.

Per epoch a train phase and a validation phase; the scheduler steps after the epoch's optimizer
steps; the best validation accuracy's weights are kept, saved as ``best.pt`` and are the final model;
``last.pt`` is written every epoch so a run can resume. Frozen parameters never reach the optimizer.
``run_phase`` is the one loop over batches, used for training, validation and ``cvkit eval``.
"""

from __future__ import annotations

import contextlib
import csv
import math
import os
import random
import shlex
import signal
import time
import warnings
from datetime import datetime
from pathlib import Path

from cvkit import ui
from cvkit.accel import (CACHE_BUDGET_BYTES, CachedSamples, cache_decoded_images, cacheable_head, caches_enabled, extract_features, frozen_backbone_model,
                         frozen_head, to_channels_last, use_channels_last)
from cvkit.build import (ModelSpec, decode_min_side, build_loss, build_model, build_optimizer, build_scheduler,
                         build_transform, model_spec)
from cvkit.checkpoint import find_checkpoint, load_checkpoint, make_checkpoint, save_checkpoint
from cvkit.config import TrainConfig, write_config
from cvkit.data import LOADER_TIMEOUT_ENV, load_splits, make_loader, resolve_workers
from cvkit.device import resolve_device, resolve_precision
from cvkit.errors import CheckpointError, DataError, NumericalError, UsageError
from cvkit.interrupts import GracefulStop, Interrupted, TrainingStopped, signal_name
from cvkit.plugins import Plugins, get_plugins

RUNS_DIR = "runs"


def autocast(device, precision: str):
    """Mixed precision for the forward pass and the loss; nothing for fp32."""
    import torch

    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def run_phase(model, loader, loss_fn, *, device, precision: str = "fp32", optimizer=None, scaler=None,
              progress=None, description: str = "", epoch: int = 0, label_map=None,
              collect: bool = False, topk: int = 1, stop=None, resume: dict | None = None, dist=None) -> dict:
    """One pass over ``loader``: trains when ``optimizer`` is given, else evaluates.

    Returns mean loss, accuracy (and top-k accuracy), the image count and rate, and with ``collect``
    the predicted and true labels in loader order (for confusion matrices).

    A loss that is not finite, or (training) weights that are not finite after a step, raise
    :class:`NumericalError` naming the epoch and step. A DataLoader worker that dies or hangs
    raises :class:`DataError`.

    ``stop`` (a :class:`~cvkit.interrupts.GracefulStop`) is checked after each training step; once
    it is set the pass ends there and the result has ``stopped_at`` (steps done). Training results
    have ``totals`` (the running sums). A validation pass stops early only when the signal also
    killed the DataLoader workers. ``resume`` (the ``interrupted`` record of a checkpoint)
    continues such a pass exactly: its first ``step`` batches are loaded again but not trained on,
    so the sampler's order and the random numbers the augmentation draws are as they were, then
    the random state of the moment of the stop is restored and the sums carry on.

    ``dist`` (a :class:`~cvkit.distributed.Dist` of several processes): each training step, one
    all-reduce makes every process see the same loss check and the same stop decision, so all of
    them stop at the same step. The result is this process's shard's; see
    :func:`cvkit.distributed.reduce_phase`.
    """
    import torch

    training = optimizer is not None
    model.train(training)
    total_loss, correct, correct_k, seen, step = 0.0, 0, 0, 0, 0
    predictions, targets = [], []
    task = progress.add_task(description, total=len(loader), rate="", stats="") if progress else None
    start = time.perf_counter()
    stopped_at = None
    named = getattr(model, "module", model).named_parameters()  # DistributedDataParallel: its module's names
    trainable = [(n, p) for n, p in named if p.requires_grad] if training else []
    batches = None
    try:
        with _fetching(stop):
            batches = iter(loader)
            if resume:
                for _ in range(resume["step"]):
                    next(batches)
        if resume:
            _set_rng_state(resume["rng"], loader)
            step = resume["step"]
            totals = resume["totals"]
            total_loss, correct, correct_k, seen = (totals["loss_sum"], totals["correct"],
                                                    totals["correct_k"], totals["seen"])
            if progress is not None:
                progress.update(task, completed=step)
        with torch.enable_grad() if training else torch.inference_mode():
            while True:
                with _fetching(stop):
                    batch = next(batches, None)
                if batch is None:
                    break
                x, y = batch
                step += 1
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                if label_map is not None:
                    y = label_map.to(y.device)[y]
                if training:
                    optimizer.zero_grad(set_to_none=True)
                with autocast(device, precision):
                    logits = model(x)
                    loss = loss_fn(logits, y)
                loss_value = float(loss.detach())
                stop_all = None  # distributed training: what all processes decided together
                checked = loss_value
                if training and dist is not None and dist.enabled:
                    checked, stop_all = dist.step_flags(loss_value, bool(stop is not None and stop.requested),
                                                        device)
                if not math.isfinite(checked):
                    phase = "training" if training else "validation"
                    where = "" if not math.isfinite(loss_value) else " in another process"
                    raise NumericalError(f"loss is {loss_value if where == '' else checked}{where} in epoch {epoch}, "
                                         f"{phase} step {step}; try a lower --lr or --precision fp32")
                if training:
                    if scaler is not None and scaler.is_enabled():
                        scaler.scale(loss).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        loss.backward()
                        optimizer.step()
                    bad = first_nonfinite(trainable)
                    if bad is not None:
                        raise NumericalError(f"weight {bad} is not finite in epoch {epoch} after training step "
                                             f"{step} (the loss was {loss_value:.4g}); try a lower --lr")
                n = y.shape[0]
                predicted = logits.detach().argmax(1)
                total_loss += loss_value * n
                correct += int((predicted == y).sum())
                if topk > 1:
                    k = min(topk, logits.shape[1])
                    correct_k += int((logits.detach().topk(k, dim=1).indices == y[:, None]).any(1).sum())
                seen += n
                if collect:
                    predictions.append(predicted.cpu())
                    targets.append(y.cpu())
                if progress is not None:
                    elapsed = time.perf_counter() - start
                    progress.update(task, advance=1, rate=f"{seen / max(elapsed, 1e-9):.0f} img/s",
                                    stats=f"loss {total_loss / seen:.4f} acc {correct / seen:.3f}")
                # after a stop signal: training stops here; validation too if the workers are gone
                requested = stop_all if stop_all is not None else (stop is not None and stop.requested)
                if requested and (training or stop.workers_lost):
                    stopped_at = step
                    break
    except (RuntimeError, EOFError, ConnectionError) as exc:  # see loader_failure
        between_steps = stop is not None and stop.fetching
        if stop is not None:
            stop.fetching = False
        problem = loader_failure(exc, loader, description, iterator=batches)
        if problem is None:
            raise
        if not (between_steps and stop.requested):
            raise problem from None
        # the stop signal reached the workers too (sent to the process group): stop between steps
        stopped_at = step
    seconds = time.perf_counter() - start
    if progress is not None:
        progress.remove_task(task)
    result = {
        "loss": total_loss / max(seen, 1), "accuracy": correct / max(seen, 1), "images": seen,
        "seconds": seconds, "images_per_second": seen / seconds if seconds > 0 else 0.0,
    }
    if topk > 1:
        result[f"top{topk}_accuracy"] = correct_k / max(seen, 1)
    if collect:
        result["predictions"] = torch.cat(predictions).tolist() if predictions else []
        result["targets"] = torch.cat(targets).tolist() if targets else []
    if training:  # the running sums, for a checkpoint that continues this pass
        result["totals"] = {"loss_sum": total_loss, "correct": correct, "correct_k": correct_k, "seen": seen}
    if stopped_at is not None:
        result["stopped_at"] = stopped_at
    return result


@contextlib.contextmanager
def _fetching(stop):
    """Mark the waits for the loader, where a worker's death is reported rather than held back.

    Left set when the wait raises, for ``run_phase`` to see that the steps so far are complete.
    """
    if stop is None:
        yield
        return
    stop.fetching = True
    yield
    stop.fetching = False


def first_nonfinite(named_tensors) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, else None.

    Screened with norms (one device sync for all tensors; ``isfinite`` on every element is far
    slower on some CPUs); a norm that is not finite is then confirmed element-wise, since finite
    values can overflow a norm.
    """
    import torch

    items = [(name, t.detach()) for name, t in named_tensors if torch.is_tensor(t) and t.is_floating_point()]
    if not items:
        return None
    norms = [torch.linalg.vector_norm(t) for _, t in items]
    if bool(torch.isfinite(torch.stack([n.to(norms[0].device, torch.float32) for n in norms])).all()):
        return None
    for (name, t), norm in zip(items, norms):
        if not math.isfinite(float(norm)) and not bool(torch.isfinite(t).all()):
            return name
    return None


def loader_failure(exc: BaseException, loader, description: str = "", iterator=None):
    """A :class:`DataError` for a DataLoader worker that died or hung, else None (another error).

    torch raises a plain RuntimeError for both. For a dead worker it comes either from its SIGCHLD
    handler (with the exit code or signal), which can fire anywhere in the main thread, or from
    the wait for a batch (without them: then ``iterator``'s workers are asked, if given).
    """
    import re

    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    workers = getattr(loader, "num_workers", 0)
    option = f"--workers {workers}" if workers else "--workers"
    where = f" during {description}" if description else ""
    if isinstance(exc, (EOFError, ConnectionError)) and workers:
        # torch hands a batch's shared memory over through its worker (file-descriptor sharing): a
        # worker that died after queueing a batch leaves the main process an EOFError or a refused
        # connection (seen after a SIGTERM to the process group), which click would turn into "Aborted."
        return DataError(f"{option}: a DataLoader worker died while handing over a batch{where} "
                         f"({type(exc).__name__}); rerun with --workers 0 to see the error in the main process")
    if first.startswith("DataLoader timed out after"):
        return DataError(f"{option}: a DataLoader worker gave no batch in {getattr(loader, 'timeout', '?')} "
                         f"seconds{where}: it hangs or is very slow; rerun with --workers 0 to find out, "
                         f"or raise {LOADER_TIMEOUT_ENV}")
    if not (first.startswith("DataLoader worker") and ("exited unexpectedly" in first or "killed by signal" in first)):
        return None
    pids = re.search(r"\(pid(?:\(s\))? ([\d, ]+)\)", first)
    pid_text = f" (pid {pids.group(1)})" if pids else ""
    killed = re.search(r"killed by signal: ([^.]+)", first)
    code = re.search(r"exit code (-?\d+)", first)
    if not killed and not code:  # ask the worker processes themselves (best effort: private attribute)
        codes = [w.exitcode for w in getattr(iterator, "_workers", ()) or () if w.exitcode]
        if codes and codes[0] < 0:
            import signal as signals

            with contextlib.suppress(ValueError):
                killed = signals.Signals(-codes[0]).name
        elif codes:
            code = codes[0]
    else:
        killed = killed.group(1) if killed else None
        code = code.group(1) if code else None
    if killed:
        how = f"was killed by {killed}" + (" (out of memory?)" if killed in ("Killed", "SIGKILL") else "")
        if "Bus error" in killed or "SIGBUS" in killed:
            how += " (out of shared memory? raise the /dev/shm limit)"
    elif code is not None:
        how = f"exited with code {code}"
    else:
        how = "exited unexpectedly"
    return DataError(f"{option}: DataLoader worker{pid_text} {how}{where}; rerun with --workers 0 to see "
                     f"the error in the main process")


def confusion_matrix(targets: list[int], predictions: list[int], num_classes: int) -> list[list[int]]:
    matrix = [[0] * num_classes for _ in range(num_classes)]
    for t, p in zip(targets, predictions):
        matrix[t][p] += 1
    return matrix


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)


def _rng_state(loader) -> dict:
    import torch

    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "loader": loader.generator.get_state() if loader.generator is not None else None}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict, loader) -> None:
    import torch

    if not state:
        return
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    if state.get("loader") is not None and loader.generator is not None:
        loader.generator.set_state(state["loader"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, (list, tuple)) else value


def new_run_dir(model: str, root: str = RUNS_DIR) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{model}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    return path


def _clean_stale_temp_files(run_dir: Path) -> None:
    """Remove the ``.NAME.*.tmp`` files a killed save left behind (the real files are intact)."""
    for tmp in run_dir.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            tmp.unlink()


METRIC_FIELDS = ["epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr", "seconds",
                 "train_seconds", "best"]


def write_metrics(history: list[dict], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=METRIC_FIELDS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(history)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


# In a narrow terminal the epoch table leaves out columns in this order (ui.fit); the rest keep their numbers.
EPOCH_COLUMNS_DROPPED = ("time", "lr", "train acc", "val loss", "train loss")


def _print_epoch_row(console, cells: list[str], *, first: bool) -> None:
    from rich.table import Table

    table = Table(box=None, show_header=first, header_style="bold underline", pad_edge=False)
    for name, width in (("epoch", 7), ("train loss", 10), ("train acc", 9), ("val loss", 9), ("val acc", 8),
                        ("lr", 7), ("time", 6), ("", 4)):
        table.add_column(name, justify="right", min_width=width, no_wrap=True)
    table.add_row(*cells)
    dropped = ui.fit(table, EPOCH_COLUMNS_DROPPED, console=console)
    console.print(table)
    if first and dropped:
        console.print(f"(not shown at {console.width} columns: {', '.join(dropped)}; all of them are in "
                      "metrics.csv)", style="dim", markup=False, highlight=False)


def model_warnings(config: TrainConfig, spec: ModelSpec, model, plugins: Plugins) -> list[str]:
    """Why this model, as built, cannot learn; one line each (empty when nothing is wrong).

    Clear-cut only: a frozen backbone (most parameters frozen, or everything but the registered
    head) left at random initialisation by ``--weights none``: it computes random features that
    training never changes, so only the head learns (seen: 25% accuracy on 4 classes).
    """
    if config.weights is None or config.weights.strip().lower() not in ("none", ""):
        return []  # None (the model's default), imagenet or a file: the frozen part holds learnt weights
    params = list(model.parameters())
    frozen = sum(p.numel() for p in params if not p.requires_grad)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    head = frozen_head(model, spec.head)
    if not frozen or (head is None and frozen < trainable):
        return []
    trains = f"only {head} trains" if head else f"only {trainable:,} of {frozen + trainable:,} parameters train"
    entry = plugins["models"].get(config.model)
    other = entry.meta.get("unfrozen")  # the same model with a backbone that trains, if the plugin names one
    return [f"{config.model} with --weights none: the backbone is frozen at random weights and cannot learn; "
            f"{trains}. Use --weights imagenet or a weights file"
            + (f", or {other}" if other else ", or a model whose backbone trains")]


def data_warnings(splits) -> list[str]:
    """Why this data cannot train or measure a classifier; one line each. Clear-cut only: a single
    class; classes without training images (they cannot be learnt); classes without validation
    images (val accuracy, which picks best.pt, does not measure them). Counted from the datasets'
    ``targets`` where they list them (no image is read)."""
    from cvkit.data import single_class_message

    classes = list(splits.classes)
    if len(classes) == 1:
        return [single_class_message(classes[0])]
    found = []
    for split, text in (("train", "no training images: the model cannot learn {}"),
                        ("val", "no validation images: val accuracy (which picks best.pt) does not measure {}")):
        counts = _class_counts(getattr(splits, split), len(classes))
        missing = [classes[i] for i, n in enumerate(counts or []) if n == 0]
        if missing:
            one = len(missing) == 1
            names = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            found.append(f"{len(missing)} of {len(classes)} classes ({names}) {'has' if one else 'have'} "
                         + text.format("it" if one else "them"))
    return found


def _class_counts(dataset, num_classes: int) -> list[int] | None:
    """Images per class of an ImageFolder-like dataset or a Subset of one; None when it does not
    list its targets."""
    indices = None
    if hasattr(dataset, "indices") and hasattr(dataset, "dataset"):  # torch.utils.data.Subset
        indices, dataset = dataset.indices, dataset.dataset
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return None
    try:
        labels = [int(targets[i]) for i in indices] if indices is not None else [int(t) for t in targets]
    except (TypeError, ValueError, IndexError):
        return None
    counts = [0] * num_classes
    for label in labels:
        if 0 <= label < num_classes:
            counts[label] += 1
    return counts


def _epochs_planned(epochs: int, start_epoch: int) -> str:
    """``25 epochs``, or ``epochs 7-25 of 25`` for a resumed run: how long this will take, said up front."""
    if start_epoch == 1:
        return f"{epochs} epoch" + ("s" if epochs > 1 else "")
    return f"epoch {epochs} of {epochs}" if start_epoch == epochs else f"epochs {start_epoch}-{epochs} of {epochs}"


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


JOB_MARKER = ".torchrun-job"  # in a run directory: the torchrun rendezvous id of the job that wrote it


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
        _set_rng_state(checkpoint.get("rng"), train_loader)
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
        _clean_stale_temp_files(run_dir)
        with _writing(run_dir / "config.yaml"):
            write_config(config, run_dir / "config.yaml")
        if splits.layout.get("layout") == "split":
            import json

            with _writing(run_dir / "split.json"):
                (run_dir / "split.json").write_text(json.dumps(splits.layout, indent=1))
        if info.run_id:
            with _writing(run_dir / JOB_MARKER):
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
            _set_rng_state(checkpoint.get("rng"), train_loader)
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
            f"{_epochs_planned(config.epochs, start_epoch)}, lr {config.lr:g}, "
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
                epoch_rng = _rng_state(train_loader)  # a last.pt saved in this epoch replays from here
                if info.enabled:  # a new shard order per epoch; each process its own augmentation numbers
                    train_loader.sampler.set_epoch(epoch)
                    seed_everything(config.seed * 1_000_003 + epoch * 1_009 + info.rank)
                tr = run_phase(phase_model, train_loader, loss_fn, device=device, precision=precision,
                               optimizer=optimizer, scaler=scaler, progress=progress,
                               description=f"epoch {epoch}/{config.epochs} train", epoch=epoch, stop=stop,
                               resume=interrupted if epoch == start_epoch else None, dist=info)
                rng_after_train = _rng_state(train_loader)  # where a stopped epoch continues
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
                    best=new_best if improved else best, rng=_rng_state(train_loader),
                    metrics={**row, "confusion_matrix": confusion})
                save_point(payload, epoch, best_too=improved)
                holds = f"epoch {epoch}"
                history.append(row)
                if improved:
                    best, best_confusion = new_best, confusion
                if info.is_main:
                    with _writing(run_dir / "metrics.csv"):
                        write_metrics(history, run_dir / "metrics.csv")
                if show_progress:
                    _print_epoch_row(console, [
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
        _write_reports(run_dir, history, best_confusion, classes, shows=f"{config.model} ({run_dir})",
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
        _print_summary(summary, console)
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


def _write_reports(run_dir: Path, history: list[dict], confusion, classes, *, shows: str, data: str,
                   best_epoch: int) -> None:
    """curves.png and confusion_matrix.png; each title says which model and run (``shows``, as
    ``cvkit eval`` words it) and which data the picture is of."""
    from cvkit import reports

    if history:
        with _writing(run_dir / "curves.png"):
            reports.plot_curves(history, run_dir / "curves.png", title=f"{shows}: training curves on {data}")
    if confusion is not None:
        with _writing(run_dir / "confusion_matrix.png"):
            reports.plot_confusion_matrix(
                confusion, classes, run_dir / "confusion_matrix.png",
                title=f"{shows}: validation confusion matrix of the best epoch ({best_epoch}) on {data}")


@contextlib.contextmanager
def _writing(path):
    """An OSError writing a run file (disk full, read-only folder) is one line naming it, exit 4."""
    try:
        yield
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write ({exc.strerror or exc})") from None


def _print_summary(summary: dict, console) -> None:
    from rich.markup import escape

    acc = summary["best_val_accuracy"]
    rate = summary["train_images_per_second"]  # None when no epoch trained in this call
    console.print(
        f"\n[bold green]done[/] in {summary['seconds']:.1f}s: best val accuracy "
        f"[bold]{acc:.3f}[/] at epoch {summary['best_epoch']} ("
        + (f"{rate} train images/s on " if rate is not None else "")
        + f"{summary['device']} {summary['precision']})"
        if acc is not None else f"\n[bold]done[/] in {summary['seconds']:.1f}s")
    for message in summary.get("warnings") or []:  # said before training too, on stderr
        console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)
    if summary["skipped_images"]:
        console.print(f"[yellow]skipped {len(summary['skipped_images'])} unreadable images:[/]")
        for item in summary["skipped_images"]:
            console.print(f"  {item['error']}", markup=False)
    console.print(f"run directory: {summary['run_dir']}")
    console.print(f"  evaluate: cvkit eval --checkpoint {summary['best_checkpoint']}")
    console.print(f"  predict:  cvkit predict IMAGE... --checkpoint {summary['best_checkpoint']}")
