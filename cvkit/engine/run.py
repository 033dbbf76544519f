"""The state of one training run, as the engine's steps and the callbacks see it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Run:
    """What a run is made of and where it stands.

    Callbacks may read every field; the public ones are ``run_dir``, ``model``, ``optimizer``,
    ``classes``, ``config``, ``epoch`` and ``history`` (the rows of metrics.csv so far). A callback
    that sets ``should_stop = True`` ends training after the current epoch (``stopped_by`` then
    names it).
    """

    config: Any
    plugins: Any
    info: Any  # cvkit.distributed.Dist
    device: Any
    console: Any
    show_progress: bool
    started: float
    spec: Any = None
    precision: str = "fp32"
    batch: int = 0  # per process
    transform_name: str = "plain"
    train_tf: Any = None
    eval_tf: Any = None
    loss_fn: Any = None
    splits: Any = None
    classes: list = field(default_factory=list)
    warnings: list = field(default_factory=list)
    model: Any = None
    optimizer: Any = None
    scheduler: Any = None
    scheduler_interval: str = "epoch"  # or "step": stepped after every optimizer step
    rule: Any = None  # cvkit.engine.steps.StepRule: mixing, accumulation, clipping
    sample_weights: list | None = None  # --balance sampler: each training sample's weight
    checkpoint: dict | None = None  # the checkpoint a resumed run started from
    callbacks: Any = None  # cvkit.engine.callbacks.Callbacks
    scaler: Any = None
    run_dir: Path | None = None
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": 0, "val_accuracy": -1.0})
    best_confusion: list | None = None
    confusion: list | None = None  # the last epoch's validation confusion matrix
    improved: bool = False  # whether the last epoch was the best so far
    phase_results: tuple = ()  # the last epoch's train and validation results (run_phase's)
    start_epoch: int = 1
    epoch: int = 0
    epoch_lr: float = 0.0  # the lr at the start of this epoch (its row of metrics.csv)
    interrupted: dict | None = None  # the stopped epoch a resumed run continues
    holds: str | None = None  # what last.pt holds, for the message of an abort
    config_record: dict = field(default_factory=dict)
    run_record: dict = field(default_factory=dict)
    epochs_run: int = 0
    train_images: int = 0
    train_seconds: float = 0.0
    step_loss: float | None = None  # the last optimizer step's loss (for on_step_end)
    should_stop: bool = False
    stopped_by: str | None = None

    @property
    def last_file(self) -> Path:
        return self.run_dir / "last.pt"

    def resume_hint(self) -> str:
        import shlex

        return f"continue with: cvkit train --resume {shlex.quote(str(self.run_dir))}" + (
            f" --nproc {self.info.world}" if self.info.enabled else "")
