"""How a training batch becomes an optimizer step: the batch mixing (MixUp / CutMix), gradient
accumulation over several batches, and gradient clipping, decided once per run (:class:`StepRule`)
and applied by :func:`cvkit.engine.phase.run_phase` at every step.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable


@dataclass
class StepRule:
    """``accumulate``: batches per optimizer step (their gradients summed, each loss divided by the
    group's size, so N batches of B step like one batch of N x B); ``clip_grad``: the largest
    gradient norm before a step (None: no clipping); ``mix``: ``(images, labels) -> (images,
    targets)`` for MixUp/CutMix, whose targets are class probabilities (None: labels as they are)."""

    accumulate: int = 1
    clip_grad: float | None = None
    mix: Callable | None = None

    def group(self, step: int, total: int) -> tuple[bool, bool, int]:
        """For batch ``step`` (1-based) of ``total``: (it starts a group, it ends one, the group's size)."""
        n = self.accumulate
        start = (step - 1) // n * n  # batches before this group
        size = min(n, total - start) if total else n
        return (step - 1) % n == 0, step - start == size, size


def no_sync(model, ends_group: bool):
    """DistributedDataParallel exchanges gradients only on a group's last batch."""
    if ends_group or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def clip_and_step(optimizer, scaler, parameters: list, clip_grad: float | None) -> None:
    """The optimizer step (through the fp16 grad scaler when it is on), after clipping the gradients'
    norm to ``clip_grad`` (unscaled first)."""
    import torch

    scaling = scaler is not None and scaler.is_enabled()
    if clip_grad is not None:
        if scaling:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(parameters, clip_grad)
    if scaling:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


def make_mix(mixup: float, cutmix: float, num_classes: int) -> Any:
    """MixUp (``mixup`` = its Beta alpha), CutMix (``cutmix``), or one of the two at random per batch
    when both are given (torchvision.transforms.v2); None when both are 0."""
    if not mixup and not cutmix:
        return None
    from torchvision.transforms import v2

    parts = []
    if mixup:
        parts.append(v2.MixUp(alpha=float(mixup), num_classes=num_classes))
    if cutmix:
        parts.append(v2.CutMix(alpha=float(cutmix), num_classes=num_classes))
    return parts[0] if len(parts) == 1 else v2.RandomChoice(parts)
