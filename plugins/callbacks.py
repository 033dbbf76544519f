"""Built-in plugin: training callbacks (``cvkit train --callback NAME``).

* ``early-stopping``: stop after ``patience`` epochs without a better validation accuracy (what
  ``--patience N`` does);
* ``tensorboard``: the epoch's losses, accuracies and learning rate, then the run's plots, as
  TensorBoard event files (needs the ``tensorboard`` package: ``pip install 'cvkit[tensorboard]'``).

Like every plugin module, this one imports no torch: the callbacks import what they need when used.
"""

import importlib.util
from pathlib import Path

import cvkit
from cvkit.errors import UsageError


# ---------------------------------------------------------------------------------------------
# early-stopping


class EarlyStopping:
    """Stops training after ``patience`` epochs in a row without a better validation accuracy."""

    def __init__(self, patience: int):
        self.patience = self.left = patience

    def on_epoch_end(self, run, metrics: dict) -> None:
        """Count down from ``patience``, back to it on a best epoch; at 0, say so and stop the run."""
        self.left = self.patience if metrics.get("best") else self.left - 1
        if self.left <= 0:
            if run.show_progress:
                run.console.print(f"early stop: no better val accuracy for {self.patience} epochs")
            run.should_stop = True


def build_early_stopping(patience: int = 5) -> EarlyStopping:
    """The ``early-stopping`` factory; ``patience`` must be a whole number >= 1."""
    if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
        raise UsageError(f"--opt callback.early-stopping.patience={patience!r}: "
                         "needs a whole number of epochs, at least 1")
    return EarlyStopping(patience)


# ---------------------------------------------------------------------------------------------
# tensorboard

# metrics.csv column -> TensorBoard tag; the plots of the run directory -> image tag
SCALARS = {"train_loss": "loss/train", "val_loss": "loss/val", "train_accuracy": "accuracy/train",
           "val_accuracy": "accuracy/val", "lr": "lr"}
IMAGES = {"curves.png": "curves", "confusion_matrix.png": "confusion_matrix"}


def read_image_hwc(path: Path):
    """The PNG at ``path`` as an RGB uint8 numpy array, height x width x channels."""
    import numpy as np
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


class TensorBoard:
    """Writes TensorBoard event files, in rank 0 only: scalars per epoch, then the run's plots.

    The log directory is ``log_dir``, or ``RUN_DIR/tensorboard``; a resumed run appends to it.
    """

    def __init__(self, log_dir: str | None = None):
        self.log_dir = log_dir
        self.writer = None  # a SummaryWriter in rank 0 between on_train_start and on_train_end

    def on_train_start(self, run) -> None:
        """Open the SummaryWriter (torch's, imported here) in rank 0."""
        if not run.info.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir or Path(run.run_dir) / "tensorboard"))

    def on_epoch_end(self, run, metrics: dict) -> None:
        """One scalar per tag of SCALARS at step ``epoch``, flushed so TensorBoard shows it now."""
        if self.writer is None:
            return
        for column, tag in SCALARS.items():
            if metrics.get(column) is not None:
                self.writer.add_scalar(tag, float(metrics[column]), int(metrics["epoch"]))
        self.writer.flush()

    def on_train_end(self, run, summary: dict) -> None:
        """Add curves.png and confusion_matrix.png of the run directory (those that exist), then close."""
        if self.writer is None:
            return
        for file, tag in IMAGES.items():
            path = Path(run.run_dir) / file
            if path.is_file():
                self.writer.add_image(tag, read_image_hwc(path), int(run.epoch), dataformats="HWC")
        self.writer.close()
        self.writer = None


def build_tensorboard(log_dir: str | None = None) -> TensorBoard:
    """The ``tensorboard`` factory: a clear error, at build time, when the package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise UsageError("the tensorboard callback needs the tensorboard package: pip install 'cvkit[tensorboard]'")
    if log_dir is not None and (not isinstance(log_dir, str) or not log_dir.strip()):
        raise UsageError(f"--opt callback.tensorboard.log_dir={log_dir!r}: needs a folder path")
    return TensorBoard(log_dir)


@cvkit.hookimpl
def register_callbacks(register):
    register("early-stopping", build_early_stopping,
             help="stop after N epochs without a better val accuracy (option patience=5; what --patience N does)")
    register("tensorboard", build_tensorboard,
             help="TensorBoard logs: losses, accuracies and lr per epoch, then the plots "
                  "(option log_dir, default RUN_DIR/tensorboard; pip install 'cvkit[tensorboard]')")
