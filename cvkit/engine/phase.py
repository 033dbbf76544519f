"""One pass over a loader: the batch loop of training, validation and ``cvkit eval``.

``run_phase`` trains when it is given an optimizer, else evaluates; mixed precision, the checks
that the loss and the weights stay finite, a stop signal between steps, the exact continuation of
a stopped pass, and the failures of DataLoader workers are handled here, once.
"""

from __future__ import annotations

import contextlib
import math
import time

from cvkit.data import LOADER_TIMEOUT_ENV
from cvkit.device import autocast
from cvkit.engine.rng import set_rng_state
from cvkit.engine.steps import StepRule, clip_and_step, no_sync
from cvkit.errors import DataError, NumericalError


class _Tally:
    """The running sums of a pass: loss, correct (top-1 and top-k), images, and with ``collect``
    the predicted and true labels; with ``collect="scores"`` also, per image, the probability of
    the predicted class and of the true class (softmax in float32) and the loss (``loss_fn``)."""

    def __init__(self, topk: int, collect: bool | str, totals: dict | None = None, loss_fn=None):
        self.topk, self.collect = topk, collect
        self.scores = collect == "scores"
        if self.scores and loss_fn is None:
            raise ValueError('collect="scores" needs the loss function')
        self.loss_fn = loss_fn
        self.predictions, self.targets = [], []
        self.probabilities, self.true_probabilities, self.losses = [], [], []
        totals = totals or {}
        self.loss_sum = totals.get("loss_sum", 0.0)
        self.correct = totals.get("correct", 0)
        self.correct_k = totals.get("correct_k", 0)
        self.seen = totals.get("seen", 0)

    def add(self, logits, y, loss_value: float) -> None:
        n = y.shape[0]
        predicted = logits.detach().argmax(1)
        self.loss_sum += loss_value * n
        self.correct += int((predicted == y).sum())
        if self.topk > 1:
            k = min(self.topk, logits.shape[1])
            self.correct_k += int((logits.detach().topk(k, dim=1).indices == y[:, None]).any(1).sum())
        self.seen += n
        if self.collect:
            self.predictions.append(predicted.cpu())
            self.targets.append(y.cpu())
        if self.scores:
            self.add_scores(logits, y, predicted)

    def add_scores(self, logits, y, predicted) -> None:
        """Each image's probabilities and loss. A loss (a plugin: any callable) gives the mean over
        its batch, so each image's is the loss of a batch of that image alone."""
        import torch

        with torch.no_grad():
            logits = logits.detach().float()
            probabilities = logits.softmax(1)
            self.probabilities.append(probabilities.gather(1, predicted[:, None])[:, 0].cpu())
            self.true_probabilities.append(probabilities.gather(1, y[:, None])[:, 0].cpu())
            losses = [self.loss_fn(logits[i:i + 1], y[i:i + 1]).float().reshape(()) for i in range(y.shape[0])]
            self.losses.append(torch.stack(losses).cpu())

    def totals(self) -> dict:
        return {"loss_sum": self.loss_sum, "correct": self.correct, "correct_k": self.correct_k, "seen": self.seen}

    def result(self, seconds: float, training: bool) -> dict:
        import torch

        seen = max(self.seen, 1)
        result = {"loss": self.loss_sum / seen, "accuracy": self.correct / seen, "images": self.seen,
                  "seconds": seconds, "images_per_second": self.seen / seconds if seconds > 0 else 0.0}
        if self.topk > 1:
            result[f"top{self.topk}_accuracy"] = self.correct_k / seen
        collected = (("predictions", "targets", "probabilities", "true_probabilities", "losses") if self.scores
                     else ("predictions", "targets") if self.collect else ())
        for key in collected:
            parts = getattr(self, key)
            result[key] = torch.cat(parts).tolist() if parts else []
        if training:  # the running sums, for a checkpoint that continues this pass
            result["totals"] = self.totals()
        return result


def run_phase(model, loader, loss_fn, *, device, precision: str = "fp32", optimizer=None, scaler=None,
              progress=None, description: str = "", epoch: int = 0, label_map=None,
              collect: bool | str = False, topk: int = 1, stop=None, resume: dict | None = None, dist=None,
              on_step=None, rule=None) -> dict:
    """One pass over ``loader``: trains when ``optimizer`` is given, else evaluates.

    Returns mean loss, accuracy (and top-k accuracy), the image count and rate, and with ``collect``
    the predicted and true labels in loader order (for confusion matrices); ``collect="scores"``
    (``cvkit eval``) adds each image's ``probabilities`` (of the predicted class),
    ``true_probabilities`` and ``losses``, at the cost of a call of ``loss_fn`` per image.

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
    :func:`cvkit.distributed.reduce_phase`. ``on_step(step, loss)``, if given, is called after each
    optimizer step with that step's number and its batch's loss value (the callbacks' ``on_step_end``).

    ``rule`` (a :class:`~cvkit.engine.steps.StepRule`): batch mixing, gradient accumulation and
    clipping. With accumulation a stop signal is honoured at the end of a group of batches, so a
    saved pass never holds half-accumulated gradients.
    """
    training = optimizer is not None
    model.train(training)
    tally = _Tally(topk, collect, loss_fn=loss_fn)
    pass_ = _Pass(model, loss_fn, device=device, precision=precision, optimizer=optimizer, scaler=scaler,
                  epoch=epoch, label_map=label_map, stop=stop, dist=dist, on_step=on_step, rule=rule,
                  total=len(loader))
    task = progress.add_task(description, total=len(loader), rate="", stats="") if progress else None
    start = time.perf_counter()
    stopped_at, batches, step = None, None, 0
    try:
        with _fetching(stop):
            batches = iter(loader)
            if resume:
                for _ in range(resume["step"]):
                    next(batches)
        if resume:
            set_rng_state(resume["rng"], loader)
            step = resume["step"]
            tally = _Tally(topk, collect, resume["totals"], loss_fn=loss_fn)
            if progress is not None:
                progress.update(task, completed=step)
        stopped_at, step = pass_.run(batches, tally, step, progress, task, start)
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
        stopped_at = pass_.step
    if progress is not None:
        progress.remove_task(task)
    result = tally.result(time.perf_counter() - start, training)
    if stopped_at is not None:
        result["stopped_at"] = stopped_at
    return result


class _Pass:
    """The steps of one pass: forward, loss check, backward and optimizer step when training."""

    def __init__(self, model, loss_fn, *, device, precision, optimizer, scaler, epoch, label_map, stop, dist,
                 on_step=None, rule=None, total: int = 0):
        self.model, self.loss_fn, self.device, self.precision = model, loss_fn, device, precision
        self.optimizer, self.scaler, self.epoch, self.label_map = optimizer, scaler, epoch, label_map
        self.stop, self.dist, self.on_step = stop, dist, on_step
        self.rule, self.total = rule or StepRule(), total
        self.ends_group = True  # the last batch ended a group of accumulated batches
        self.training = optimizer is not None
        named = getattr(model, "module", model).named_parameters()  # DistributedDataParallel: its module's names
        self.trainable = [(n, p) for n, p in named if p.requires_grad] if self.training else []
        self.step = 0

    def run(self, batches, tally: _Tally, step: int, progress, task, start: float):
        """Steps until the loader ends or a stop; returns (the step it stopped at or None, steps done)."""
        import torch

        self.step = step
        with torch.enable_grad() if self.training else torch.inference_mode():
            while True:
                with _fetching(self.stop):
                    batch = next(batches, None)
                if batch is None:
                    return None, self.step
                self.step += 1
                stop_all = self.one_step(batch, tally)
                if progress is not None:
                    elapsed = time.perf_counter() - start
                    progress.update(task, advance=1, rate=f"{tally.seen / max(elapsed, 1e-9):.0f} img/s",
                                    stats=f"loss {tally.loss_sum / tally.seen:.4f} acc {tally.correct / tally.seen:.3f}")
                # after a stop signal: training stops here; validation too if the workers are gone
                stop = self.stop
                requested = stop_all if stop_all is not None else (stop is not None and stop.requested)
                if requested and (self.training and self.ends_group or stop.workers_lost):
                    return self.step, self.step

    def one_step(self, batch, tally: _Tally):
        """One batch; returns what all processes decided about stopping (distributed), else None."""
        x, y = batch
        x = x.to(self.device, non_blocking=True)
        y = y.to(self.device, non_blocking=True)
        if self.label_map is not None:
            y = self.label_map.to(y.device)[y]
        targets, ends, size = y, True, 1
        if self.training:
            starts, ends, size = self.rule.group(self.step, self.total)
            if starts:
                self.optimizer.zero_grad(set_to_none=True)
            if self.rule.mix is not None:  # the targets become class probabilities
                x, targets = self.rule.mix(x, y)
        with no_sync(self.model, ends) if self.training else _NO_SYNC:
            with autocast(self.device, self.precision):
                logits = self.model(x)
                loss = self.loss_fn(logits, targets)
            loss_value = float(loss.detach())
            stop_all = self.check_loss(loss_value)
            if self.training:
                self.backward(loss / size if size > 1 else loss, loss_value, ends)
        self.ends_group = ends
        tally.add(logits, y, loss_value)
        if self.on_step is not None and self.training and ends:
            self.on_step(self.step, loss_value)
        return stop_all

    def check_loss(self, loss_value: float):
        """A loss that is not finite (in any process) is an error; returns the processes' joint stop
        decision (distributed training), else None."""
        stop_all = None
        checked = loss_value
        if self.training and self.dist is not None and self.dist.enabled:
            checked, stop_all = self.dist.step_flags(loss_value, bool(self.stop is not None and self.stop.requested),
                                                     self.device)
        if not math.isfinite(checked):
            phase = "training" if self.training else "validation"
            where = "" if not math.isfinite(loss_value) else " in another process"
            raise NumericalError(f"loss is {loss_value if where == '' else checked}{where} in epoch {self.epoch}, "
                                 f"{phase} step {self.step}; try a lower --lr or --precision fp32")
        return stop_all

    def backward(self, loss, loss_value: float, ends_group: bool = True) -> None:
        """The loss's backward pass, then at the end of a group of accumulated batches the
        (clipped) optimizer step and the check that the weights stay finite."""
        scaler = self.scaler
        (scaler.scale(loss) if scaler is not None and scaler.is_enabled() else loss).backward()
        if not ends_group:
            return
        clip_and_step(self.optimizer, scaler, [p for _, p in self.trainable], self.rule.clip_grad)
        bad = first_nonfinite(self.trainable)
        if bad is not None:
            raise NumericalError(f"weight {bad} is not finite in epoch {self.epoch} after training step "
                                 f"{self.step} (the loss was {loss_value:.4g}); try a lower --lr")


_NO_SYNC = contextlib.nullcontext()


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
