"""The run directory: its name, metrics.csv, the report pictures, and writing each file atomically."""

from __future__ import annotations

import contextlib
import csv
import os
from datetime import datetime
from pathlib import Path

from cvkit.errors import CheckpointError

RUNS_DIR = "runs"
JOB_MARKER = ".torchrun-job"  # in a run directory: the torchrun rendezvous id of the job that wrote it


def new_run_dir(model: str, root: str = RUNS_DIR) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(root) / f"{model}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = Path(f"{base}-{n}")
    return path


def clean_stale_temp_files(run_dir: Path) -> None:
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




def write_reports(run_dir: Path, history: list[dict], confusion, classes, *, shows: str, data: str,
                   best_epoch: int) -> None:
    """curves.png and confusion_matrix.png; each title says which model and run (``shows``, as
    ``cvkit eval`` words it) and which data the picture is of."""
    from cvkit import reports

    if history:
        with writing(run_dir / "curves.png"):
            reports.plot_curves(history, run_dir / "curves.png", title=f"{shows}: training curves on {data}")
    if confusion is not None:
        with writing(run_dir / "confusion_matrix.png"):
            reports.plot_confusion_matrix(
                confusion, classes, run_dir / "confusion_matrix.png",
                title=f"{shows}: validation confusion matrix of the best epoch ({best_epoch}) on {data}")


@contextlib.contextmanager
def writing(path):
    """An OSError writing a run file (disk full, read-only folder) is one line naming it, exit 4."""
    try:
        yield
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot write ({exc.strerror or exc})") from None
