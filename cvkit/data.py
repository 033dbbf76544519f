"""Training data: find the splits of an image tree, check them, and make DataLoaders.

Layouts: ``DATA/train/<class>/*`` with ``DATA/val/<class>/*`` (``valid``/``validation`` accepted),
or ``DATA/<class>/*`` split by ``val_split`` (seeded and stratified, so the same seed and files give
the same split).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from cvkit.build import build_dataset
from cvkit.errors import DataError, UsageError

VAL_NAMES = ("val", "valid", "validation")


@dataclass
class Splits:
    train: object
    val: object
    classes: list[str]
    layout: dict = field(default_factory=dict)  # how the split was made, for the run directory


def _has_dir(root: str, names) -> bool:
    return any(os.path.isdir(os.path.join(root, n)) for n in names)


def detect_layout(root: str, val_split: float | None) -> str:
    """``folders`` (train/ and val/) or ``split`` (class folders split by val_split)."""
    if not os.path.exists(root):
        raise DataError(f"{root}: no such folder")
    if not os.path.isdir(root):
        raise DataError(f"{root}: not a folder (DATA is a folder of class folders, or of train/ and val/)")
    if _has_dir(root, ("train",)):
        if _has_dir(root, VAL_NAMES):
            return "folders"
        if val_split:
            raise UsageError(f"--val-split: {root} has a train/ folder; split it yourself or add val/")
        raise DataError(f"{root}: has train/ but no val/ (or valid/, validation/) folder")
    subdirs = [d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d))]
    if not subdirs:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<images> or {root}/train and {root}/val)")
    if not val_split:
        raise DataError(f"{root}: no val/ folder; pass --val-split 0.2 to hold out part of each class")
    return "split"


def stratified_split(targets: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Indices of train and val: the same fraction of each class, at least one of each in train."""
    rng = random.Random(seed)
    by_class: dict[int, list[int]] = {}
    for i, t in enumerate(targets):
        by_class.setdefault(int(t), []).append(i)
    train, val = [], []
    for label in sorted(by_class):
        idx = by_class[label][:]
        rng.shuffle(idx)
        n_val = min(len(idx) - 1, max(1, round(len(idx) * val_fraction))) if len(idx) > 1 else 0
        val += idx[:n_val]
        train += idx[n_val:]
    return sorted(train), sorted(val)


def _targets(dataset) -> list[int]:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [int(dataset[i][1]) for i in range(len(dataset))]
    return [int(t) for t in targets]


def check_classes(train_classes, val_classes, root: str) -> None:
    if list(train_classes) != list(val_classes):
        only_train = sorted(set(train_classes) - set(val_classes))
        only_val = sorted(set(val_classes) - set(train_classes))
        parts = []
        if only_train:
            parts.append(f"only in train: {', '.join(only_train)}")
        if only_val:
            parts.append(f"only in val: {', '.join(only_val)}")
        raise DataError(f"{root}: train and val have different classes ({'; '.join(parts) or 'order differs'})")


def load_splits(root: str, *, dataset: str, train_transform, eval_transform, val_split: float | None = None,
                seed: int = 0, options: dict | None = None, plugins=None) -> Splits:
    from torch.utils.data import Subset

    root = str(root)
    layout = detect_layout(root, val_split)
    if layout == "folders":
        train = build_dataset(dataset, root, split="train", transform=train_transform, options=options,
                              plugins=plugins)
        val = build_dataset(dataset, root, split="val", transform=eval_transform, options=options,
                            plugins=plugins)
        check_classes(train.classes, val.classes, root)
        info = {"layout": "folders", "root": root}
    else:
        full_train = build_dataset(dataset, root, split=None, transform=train_transform, options=options,
                                   plugins=plugins)
        full_val = build_dataset(dataset, root, split=None, transform=eval_transform, options=options,
                                 plugins=plugins)
        train_idx, val_idx = stratified_split(_targets(full_train), val_split, seed)
        train, val = Subset(full_train, train_idx), Subset(full_val, val_idx)
        train.classes = val.classes = list(full_train.classes)
        info = {"layout": "split", "root": root, "val_split": val_split, "seed": seed}
        samples = getattr(full_train, "samples", None)
        if samples:
            info["val_files"] = [os.path.relpath(samples[i][0], root) for i in val_idx]
    if len(train) == 0:
        raise DataError(f"{root}: no training images")
    if len(val) == 0:
        raise DataError(f"{root}: no validation images")
    return Splits(train=train, val=val, classes=list(train.classes), layout=info)


def parse_workers(value):
    """``auto``, None or a whole number given as text (the command line's form)."""
    if value is None or value == "auto" or isinstance(value, int):
        return value
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"--workers {value!r}: a number or auto") from None


def resolve_workers(workers, num_images: int) -> int:
    """``auto``: no worker processes for small sets or 2-core machines, where starting and feeding
    workers costs more than decoding in the main process; else up to 8, leaving one core free."""
    from cvkit.device import cpu_count

    if workers == "auto" or workers is None:
        cores = cpu_count()
        if cores <= 2 or num_images < 512:
            return 0
        return min(8, cores - 1)
    workers = int(workers)
    if workers < 0:
        raise UsageError(f"--workers {workers}: must be 0 or more (or auto)")
    return workers


def make_loader(dataset, *, batch_size: int, shuffle: bool, workers: int, device, seed: int = 0):
    import torch
    from torch.utils.data import DataLoader

    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
        persistent_workers=workers > 0, pin_memory=device.type == "cuda", generator=generator,
    )
