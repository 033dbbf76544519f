"""`cvkit lr-find`: fastai's learning-rate range test, run on the training engine.

The run is set up as ``cvkit train`` sets it up (``cvkit.engine.setup``'s data and model steps,
``cvkit.engine.plan``'s loaders and what a step computes), then ``run_phase`` trains with the
learning rate raised exponentially after every optimizer step, from ``start_lr`` to ``end_lr``,
cycling the training loader as often as the steps need. Each step's loss is recorded and smoothed
(an exponential moving average, beta 0.98, bias-corrected, as fastai does); the sweep ends early
when the smoothed loss rises above 4x its minimum or a loss or weight is not finite. No run directory
is made and nothing is written but the plot ``--out`` asks for; the swept weights are thrown away.
"""

from __future__ import annotations

import math
import shlex
import time
from pathlib import Path

from cvkit import ui
from cvkit.errors import DataError, UsageError

MAX_STEPS = 1000  # a range test is a few hundred steps; more is a mistake (or training: cvkit train)
BETA = 0.98  # the smoothing of the loss (fastai's)
DIVERGED = 4.0  # the sweep stops once the smoothed loss is this many times its minimum
SKIP_START = 10  # at most this many first points (a tenth of the curve) are too noisy to suggest from
PLOT_NAME = "lr_find.png"  # what --out DIR writes

REACHED_END = "reached --end-lr"
ROSE = f"the smoothed loss rose above {DIVERGED:g}x its minimum"


class _SweepEnd(Exception):
    """Raised from ``on_step`` to end the sweep (not a RuntimeError: ``run_phase`` handles those)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def lr_schedule(start_lr: float, end_lr: float, steps: int) -> list[float]:
    """lr_i = start * (end/start)^(i/(steps-1)), i = 0 .. steps-1."""
    return [start_lr * (end_lr / start_lr) ** (i / (steps - 1)) for i in range(steps)]


def smooth(losses: list[float], beta: float = BETA) -> list[float]:
    """The bias-corrected exponential moving average of ``losses`` (fastai's smoothed loss)."""
    avg, out = 0.0, []
    for i, loss in enumerate(losses, start=1):
        avg = beta * avg + (1 - beta) * loss
        out.append(avg / (1 - beta ** i))
    return out


def suggest(lrs: list[float], smoothed: list[float]) -> dict:
    """The suggested lr: where the smoothed loss falls fastest against log10(lr) (its most negative
    gradient), among the points before its minimum, the first tenth (at most 10) left out as noise.
    Also the minimum's lr / 10 (fastai's "minimum" rule), which is the suggestion when the loss
    fell for too few points to have a steepest descent."""
    import numpy as np

    n = len(smoothed)
    lrs = list(lrs)[:n]
    low = int(np.argmin(smoothed))
    minimum_lr = lrs[low] / 10
    skip = min(SKIP_START, n // 10)
    steepest = None
    if low - skip >= 2:
        gradient = np.gradient(np.asarray(smoothed, dtype=float), np.log10(np.asarray(lrs, dtype=float)))
        at = skip + int(np.argmin(gradient[skip:low + 1]))
        if gradient[at] < 0:
            steepest = at
    if steepest is not None:
        return {"suggested_lr": lrs[steepest], "rule": "steepest", "index": steepest, "minimum_lr": minimum_lr,
                "lr_at_minimum": lrs[low],
                "why": f"where the smoothed loss falls fastest (its steepest descent against log lr), before "
                       f"its minimum at lr {lrs[low]:.2g}"}
    return {"suggested_lr": minimum_lr, "rule": "minimum/10", "index": None, "minimum_lr": minimum_lr,
            "lr_at_minimum": lrs[low],
            "why": f"the minimum's lr/10, as the smoothed loss fell for too few steps to have a steepest "
                   f"descent (its minimum is at lr {lrs[low]:.2g})"}


def lr_find(*, cli_values: dict, config_file: str | None = None, start_lr: float = 1e-7, end_lr: float = 10.0,
            steps: int = 100, out: str | None = None, show_progress: bool = True, plugins=None) -> dict:
    """Sweep the learning rate over the training split of ``cli_values["data"]`` (``cvkit train``'s
    options, merged with ``config_file`` as train merges them); returns the report (``--json``).
    Writes only the plot, and only with ``out`` (a .png file, or a folder: ``DIR/lr_find.png``)."""
    from cvkit.config import make_config, read_config_file
    from cvkit.data import parse_workers

    _check_range(start_lr, end_lr, steps)
    target = plot_path(out)
    cli_values = dict(cli_values)
    if "workers" in cli_values:
        cli_values["workers"] = parse_workers(cli_values["workers"])
    config = make_config(read_config_file(config_file) if config_file else {}, cli_values)
    started = time.perf_counter()
    run, plan = _prepare(config, plugins, show_progress)
    lrs = lr_schedule(start_lr, end_lr, steps)
    if show_progress:
        run.console.print(f"[bold]cvkit lr-find[/] {config.model} on {config.data}: {len(run.splits.train)} train "
                          f"images, {run.device} {run.precision}, batch {config.batch_size}, {config.optimizer}, "
                          f"lr {start_lr:.2g} to {end_lr:.2g} in {steps} steps", highlight=False)
    raw, because = _sweep(run, plan, lrs, show_progress)
    if len(raw) < 2:
        from cvkit.errors import NumericalError

        raise NumericalError(f"lr-find: {because} after {len(raw)} step(s), at lr {lrs[0]:.2g}; try a lower "
                        f"--start-lr or --precision fp32")
    smoothed = smooth(raw)
    report = {"model": config.model, "data": str(config.data), "device": str(run.device),
              "precision": run.precision, "batch_size": config.batch_size, "optimizer": config.optimizer,
              "start_lr": start_lr, "end_lr": end_lr, "steps_asked": steps, "steps": len(raw),
              "stopped_because": because, "seconds": None, **suggest(lrs, smoothed),
              "lrs": lrs[:len(raw)], "losses": {"smoothed": smoothed, "raw": raw}, "plot": None}
    if target is not None:
        report["plot"] = str(_write_plot(report, target, out))
    report["seconds"] = round(time.perf_counter() - started, 3)
    return report


def _check_range(start_lr: float, end_lr: float, steps: int) -> None:
    if not (math.isfinite(start_lr) and start_lr > 0):
        raise UsageError(f"--start-lr {start_lr:g}: must be a positive number")
    if not (math.isfinite(end_lr) and end_lr > start_lr):
        raise UsageError(f"--end-lr {end_lr:g}: must be a number above --start-lr {start_lr:g}")
    if not 2 <= steps <= MAX_STEPS:
        raise UsageError(f"--steps {steps}: must be from 2 to {MAX_STEPS} (a range test is a few hundred steps "
                         f"at most)")


def plot_path(out: str | None) -> Path | None:
    """``--out``: a .png file, or a folder (existing, or a name without a suffix) for DIR/lr_find.png."""
    if out is None:
        return None
    path = Path(out)
    if path.is_dir() or out.endswith(("/", "\\")) or (not path.suffix and not path.exists()):
        return path / PLOT_NAME
    if path.suffix.lower() != ".png":
        raise UsageError(f"--out {out}: give a .png file or a folder (for {PLOT_NAME})")
    return path


def _prepare(config, plugins, show_progress: bool):
    """``cvkit train``'s steps 3 to 5 and 8 (docs/architecture.md), for one process and no run directory."""
    from cvkit.device import resolve_device
    from cvkit.distributed import Dist
    from cvkit.engine import setup
    from cvkit.engine.plan import choose_phase_model, make_loaders
    from cvkit.engine.run import Run
    from cvkit.plugins import get_plugins

    run = Run(config=config, plugins=plugins or get_plugins(), info=Dist(), device=resolve_device(config.device),
              console=ui.out, show_progress=show_progress, started=time.perf_counter())
    setup.load_data(run, None, None)
    plan = make_loaders(run)
    setup.build_training(run, None)
    choose_phase_model(run, plan, None)
    return run, plan


def _sweep(run, plan, lrs: list[float], show_progress: bool) -> tuple[list[float], str]:
    """One optimizer step per lr of ``lrs`` through ``run_phase``; -> (each step's loss, why it ended)."""
    from cvkit.data import set_loader_epoch
    from cvkit.engine.loop import stop_workers
    from cvkit.engine.phase import run_phase
    from cvkit.errors import NumericalError

    raw: list[float] = []
    avg, best = 0.0, math.inf

    def set_lr(lr: float) -> None:
        for group in run.optimizer.param_groups:
            group["lr"] = lr

    progress = ui.make_progress(enabled=show_progress, console=run.console)
    task = progress.add_task("lr-find", total=len(lrs), rate="", stats="")

    def on_step(_step: int, loss: float) -> None:  # the loss of the batch that the lr of lrs[i] stepped on
        nonlocal avg, best
        raw.append(loss)
        i = len(raw)
        avg = BETA * avg + (1 - BETA) * loss
        smoothed = avg / (1 - BETA ** i)
        best = min(best, smoothed)
        progress.update(task, advance=1, stats=f"lr {lrs[i - 1]:.2e} loss {smoothed:.4f}")
        if not math.isfinite(smoothed) or smoothed > DIVERGED * best:
            raise _SweepEnd(ROSE if math.isfinite(smoothed) else "the smoothed loss was not finite")
        if i == len(lrs):
            raise _SweepEnd(REACHED_END)
        set_lr(lrs[i])

    set_lr(lrs[0])
    passes = 0
    try:
        with progress:
            while True:
                passes += 1
                set_loader_epoch(plan.train_loader, passes)
                result = run_phase(plan.phase_model, plan.train_loader, run.loss_fn, device=run.device,
                                   precision=run.precision, optimizer=run.optimizer, scaler=run.scaler,
                                   epoch=passes, on_step=on_step, rule=run.rule)  # train's way of stepping
                if not result["images"]:
                    raise DataError(f"lr-find {run.config.data}: the training split gives no batch of "
                                    f"--batch-size {run.config.batch_size}")
    except _SweepEnd as end:
        return raw, end.reason
    except NumericalError as exc:  # a diverged sweep, not an error here
        what = "weights" if str(exc).startswith("weight") else "loss"
        return raw, f"the {what} became non-finite at lr {lrs[len(raw)]:.2g}"
    finally:
        stop_workers(plan.train_loader, plan.val_loader)


def _write_plot(report: dict, target: Path, out: str) -> Path:
    """The curve as a PNG, written atomically (a temporary file renamed over ``target``)."""
    from cvkit import reports
    from cvkit.checkpoint import atomic_write

    title = f"{report['model']}: learning-rate range test on {report['data']}"
    losses = report["losses"]
    return atomic_write(target, lambda tmp: reports.plot_lr_find(
        report["lrs"], losses["raw"], losses["smoothed"], tmp, suggested_lr=report["suggested_lr"],
        minimum_lr=report["minimum_lr"], title=title), where=f"--out {out}", failure="cannot write the plot")


def render_lr_find(report: dict) -> None:
    from rich.markup import escape as esc

    out = ui.out
    out.print(f"suggested lr [bold]{report['suggested_lr']:.2g}[/]: {esc(report['why'])}", highlight=False)
    out.print(f"minimum's lr/10: {report['minimum_lr']:.2g} (fastai's other rule)", highlight=False)
    out.print(f"steps run: {report['steps']} of {report['steps_asked']}, up to lr {report['lrs'][-1]:.2g}; "
              f"stopped because {esc(report['stopped_because'])} ({report['seconds']:.1f}s)", highlight=False)
    if report["plot"]:
        out.print(f"plot: {esc(report['plot'])}", highlight=False)
    out.print(esc(f"then: cvkit train {shlex.quote(report['data'])} --model {shlex.quote(report['model'])} "
                  f"--lr {report['suggested_lr']:.2g} (with this command's other options)"), highlight=False)
