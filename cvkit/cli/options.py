"""What several commands share: option annotations, help sentences, train's defaults."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from cvkit.config import TrainConfig

D = TrainConfig()  # train's defaults, shown in its --help

DEVICE_HELP = "Where to run: auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps."
PRECISION_HELP = ("Number format: auto (bf16 where the GPU or CPU computes it natively, fp16 on older GPUs, "
                  "else fp32), fp32, bf16 or fp16.")
WORKERS_HELP = "Processes that load images, or auto (from the CPU cores and the data's size)."

JsonOpt = Annotated[bool, typer.Option("--json", metavar="", help="Print machine-readable JSON on stdout.")]
OptOpt = Annotated[Optional[list[str]], typer.Option(
    "--opt", metavar="KIND.KEY=VALUE", show_default=False,
    help="Extra keyword for a factory, e.g. optimizer.momentum=0.5 or loss.label_smoothing=0.1 (repeatable).")]
DatasetOpt = Annotated[str, typer.Option(
    metavar="NAME", help="Format of DATA: imagefolder, csv, webdataset or a plugin's (see `cvkit list datasets`).")]
ValSplitOpt = Annotated[Optional[float], typer.Option(
    metavar="FRACTION", show_default="none: DATA has its own val split",
    help="Hold out this fraction of each class for validation (for data without a validation split).")]
CheckpointOpt = Annotated[Optional[str], typer.Option(
    "--checkpoint", "-c", metavar="CHECKPOINT", show_default="best.pt of the newest run in ./runs/",
    help="Checkpoint file or run directory.")]


def _given(ctx, name: str) -> bool:
    """Whether option ``name`` was set on the command line, not left at its default."""
    source = ctx.get_parameter_source(name) if ctx is not None else None
    return source is None or source.name not in ("DEFAULT", "DEFAULT_MAP")
