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


def find_layout(root: str) -> str:
    """What ``root`` holds, before any option is applied: ``folders`` (train/ and val/),
    ``train-only`` (train/ without val/) or ``flat`` (class folders). Raises :class:`DataError`
    for a missing folder, a file, or a folder without class folders."""
    if not os.path.exists(root):
        raise DataError(f"{root}: no such folder")
    if not os.path.isdir(root):
        raise DataError(f"{root}: not a folder (DATA is a folder of class folders, or of train/ and val/)")
    if _has_dir(root, ("train",)):
        return "folders" if _has_dir(root, VAL_NAMES) else "train-only"
    subdirs = [d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d))]
    if not subdirs:
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<images> or {root}/train and {root}/val)")
    return "flat"


def train_only_message(root: str) -> str:
    """What ``cvkit train`` and ``cvkit data check`` say of a train/ folder without a val/ folder."""
    return (f"{root}: has train/ but no val/ (or valid/, validation/) folder; add one, or train on "
            f"{os.path.join(root, 'train')} with --val-split 0.2 to hold out part of each class")


def flat_note(root: str) -> str:
    """What ``cvkit data check`` notes of a flat tree (class folders, no val/): train needs --val-split."""
    return (f"{root}: no validation split (class folders without train/ and val/); cvkit train needs "
            f"--val-split FRACTION for it (e.g. --val-split 0.2 holds out 20% of each class)")


def detect_layout(root: str, val_split: float | None) -> str:
    """``folders`` (train/ and val/) or ``split`` (class folders split by val_split)."""
    found = find_layout(root)
    if found == "folders":
        return "folders"
    if found == "train-only":
        if val_split:
            raise UsageError(f"--val-split: {root} has a train/ folder, which it would not split; add a val/ "
                             f"folder, or train on {os.path.join(root, 'train')} with --val-split {val_split:g}")
        raise DataError(train_only_message(root))
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


def class_difference(train_classes, val_classes, root: str) -> str | None:
    """The error when train and val do not hold the same classes in the same order, else None."""
    if list(train_classes) == list(val_classes):
        return None
    only_train = sorted(set(train_classes) - set(val_classes))
    only_val = sorted(set(val_classes) - set(train_classes))
    parts = ([f"only in train: {', '.join(only_train)}"] if only_train else []) + (
        [f"only in val: {', '.join(only_val)}"] if only_val else [])
    return f"{root}: train and val have different classes ({'; '.join(parts) or 'order differs'})"


def check_classes(train_classes, val_classes, root: str) -> None:
    message = class_difference(train_classes, val_classes, root)
    if message:
        raise DataError(message)


def load_splits(root: str, *, dataset: str, train_transform, eval_transform, val_split: float | None = None,
                seed: int = 0, options: dict | None = None, on_bad_image: str = "error",
                min_side: int | None = None, plugins=None) -> Splits:
    """The train and val datasets of ``root``.

    For the ``imagefolder`` format the cheap part of ``cvkit data check`` runs first (layout, class
    folders, empty classes, train/val class sets). With ``on_bad_image="skip"`` every image is decoded
    once up front and unreadable ones are dropped and listed in ``layout["skipped"]``.
    """
    from torch.utils.data import Subset

    root = str(root)
    if on_bad_image not in ("error", "skip"):
        raise UsageError(f"--on-bad-image {on_bad_image!r}: use error or skip")
    layout = detect_layout(root, val_split)
    if dataset == "imagefolder":
        report = check_data(root, val_split=val_split, deep=False,
                            allow_empty=bool((options or {}).get("allow_empty")))
        if report["errors"]:
            raise DataError(report["errors"][0])
    if layout == "folders":
        train = build_dataset(dataset, root, split="train", transform=train_transform, options=options,
                              min_side=min_side, plugins=plugins)
        val = build_dataset(dataset, root, split="val", transform=eval_transform, options=options,
                            min_side=min_side, plugins=plugins)
        check_classes(train.classes, val.classes, root)
        info = {"layout": "folders", "root": root}
        if on_bad_image == "skip":
            info["skipped"] = drop_unreadable([train], [val])
    else:
        full_train = build_dataset(dataset, root, split=None, transform=train_transform, options=options,
                                   min_side=min_side, plugins=plugins)
        full_val = build_dataset(dataset, root, split=None, transform=eval_transform, options=options,
                                 min_side=min_side, plugins=plugins)
        skipped = drop_unreadable([full_train, full_val]) if on_bad_image == "skip" else None
        train_idx, val_idx = stratified_split(_targets(full_train), val_split, seed)
        train, val = Subset(full_train, train_idx), Subset(full_val, val_idx)
        train.classes = val.classes = list(full_train.classes)
        info = {"layout": "split", "root": root, "val_split": val_split, "seed": seed}
        if skipped is not None:
            info["skipped"] = skipped
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


def drop_unreadable(*groups) -> list[dict]:
    """Decode every image of each group of datasets once; drop unreadable ones from all datasets of
    the group (datasets of one group list the same files). Returns what was dropped, by path."""
    from cvkit.images import load_image

    skipped = []
    for group in groups:
        samples = getattr(group[0], "samples", None)
        if samples is None:
            raise UsageError("--on-bad-image skip: this dataset format does not list its files")
        bad = {}
        for path, _ in samples:
            try:
                load_image(path)
            except DataError as exc:
                bad[path] = str(exc)
        for ds in group:
            keep = [(p, t) for p, t in ds.samples if p not in bad]
            ds.samples = ds.imgs = keep
            ds.targets = [t for _, t in keep]
        skipped += [{"path": p, "error": e} for p, e in bad.items()]
    return skipped


def _visible(name: str) -> bool:
    return not name.startswith(".")


def scan_split(path: str) -> dict:
    """Class folders of one split and their image files, as ImageFolder would read them (hidden
    files and folders ignored), without opening any image."""
    from cvkit.images import IMAGE_EXTENSIONS

    classes, hidden, others = {}, 0, 0
    for entry in sorted(os.scandir(path), key=lambda e: e.name):
        if not entry.is_dir():
            continue
        if not _visible(entry.name):
            hidden += 1
            continue
        files = []
        for dirpath, dirnames, filenames in os.walk(entry.path, followlinks=True):
            hidden += sum(not _visible(d) for d in dirnames) + sum(not _visible(f) for f in filenames)
            dirnames[:] = sorted(d for d in dirnames if _visible(d))
            for f in sorted(filenames):
                if not _visible(f):
                    continue
                if f.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(os.path.join(dirpath, f))
                else:
                    others += 1
        classes[entry.name] = files
    return {"path": path, "classes": classes, "hidden_ignored": hidden, "other_files": others}


def single_class_message(name: str) -> str:
    """One class only: training runs, but there is nothing to tell apart (``cvkit data check`` and
    ``cvkit train`` both say so)."""
    return (f"only one class ({name}): a classifier needs at least two; every prediction would be {name} "
            f"and accuracy 100% without learning anything")


IMBALANCE_WARNING = 3.0  # largest class / smallest class in train


def check_data(root: str, *, val_split: float | None = None, deep: bool = True,
               allow_empty: bool = False) -> dict:
    """Check an image tree without changing it: per-split class counts, imbalance, empty classes,
    classes missing from a split and, with ``deep``, unreadable images and exact duplicates shared by
    train and val. ``errors`` stop training; ``warnings`` do not; ``notes`` say what training will
    need (a flat tree checked without ``val_split``: ``cvkit train`` needs ``--val-split``). A train/
    folder without val/ raises the :class:`DataError` that training raises for it."""
    import hashlib

    from cvkit.images import load_image

    root = str(root)
    notes = []  # neither errors nor warnings: what train will need
    if find_layout(root) == "train-only":  # train refuses it: the same words here, exit 3
        raise DataError(train_only_message(root))
    layout = detect_layout(root, val_split or 0.2)  # a flat tree is fine to check; train asks for --val-split
    if layout == "split" and not val_split:
        notes.append(flat_note(root))
    if layout == "folders":
        val_dir = next(os.path.join(root, n) for n in VAL_NAMES if os.path.isdir(os.path.join(root, n)))
        splits = {"train": scan_split(os.path.join(root, "train")), "val": scan_split(val_dir)}
    else:
        splits = {"all": scan_split(root)}
    errors, warnings = [], []
    for name, split in splits.items():
        if not split["classes"]:
            errors.append(f"{split['path']}: no class folders")
        for cls, files in split["classes"].items():
            if not files and not allow_empty:
                errors.append(f"{os.path.join(split['path'], cls)}: empty class folder (no images); remove it "
                              f"or pass --opt dataset.allow_empty=true")
    if layout == "folders":
        message = class_difference(splits["train"]["classes"], splits["val"]["classes"], root)
        if message:
            errors.append(message)
    counts = {c: len(f) for c, f in next(iter(splits.values()))["classes"].items()}
    if len(counts) == 1:
        warnings.append(single_class_message(next(iter(counts))))
    nonzero = [n for n in counts.values() if n]
    if nonzero and max(nonzero) > IMBALANCE_WARNING * min(nonzero):
        big = max(counts, key=counts.get)
        small = min((c for c in counts if counts[c]), key=counts.get)
        warnings.append(f"classes are imbalanced: {big} has {counts[big]} images, {small} {counts[small]}")
    report = {
        "root": root, "layout": layout,
        "splits": {name: {"path": s["path"], "classes": {c: len(f) for c, f in s["classes"].items()},
                          "images": sum(len(f) for f in s["classes"].values()),
                          "hidden_ignored": s["hidden_ignored"], "other_files": s["other_files"]}
                   for name, s in splits.items()},
        "errors": errors, "warnings": warnings, "notes": notes,
    }
    if deep:
        unreadable, digests = [], {}
        for name, split in splits.items():
            for files in split["classes"].values():
                for path in files:
                    try:
                        load_image(path)
                        if layout == "folders":
                            with open(path, "rb") as f:
                                digest = hashlib.sha256(f.read()).hexdigest()
                            digests.setdefault(name, {}).setdefault(digest, path)
                    except DataError as exc:
                        unreadable.append({"path": path, "error": str(exc)})
                    except OSError as exc:  # decoded, then gone or refused before it was hashed
                        unreadable.append({"path": path, "error": f"{path}: cannot read ({exc.strerror or exc})"})
        duplicates = []
        if layout == "folders":
            train_digests = digests.get("train", {})
            duplicates = [{"val": path, "train": train_digests[d]} for d, path in digests.get("val", {}).items()
                          if d in train_digests]
        report["unreadable"] = unreadable
        report["duplicates"] = duplicates
        if duplicates:
            warnings.append(f"{len(duplicates)} val images are exact copies of train images "
                            f"(they inflate val accuracy), e.g. {duplicates[0]['val']}")
    return report


SMALL_INPUT_SIDE = 64  # model inputs up to this side are cheap to decode and transform


def resolve_workers(workers, num_images: int, input_size=None, processes: int = 1) -> int:
    """``auto``: no worker processes for small inputs (e.g. 32x32) or tiny sets, where starting and
    feeding workers costs more than it saves (and the in-memory sample cache needs the main
    process); else 2 to 8 (one core left free above 2 cores). Measured on 2 cores: resnet18 at
    224x224 with the chapter's augmentation trained at 64-78 images/s with 2 workers against
    57-59 with none (benchmarks/, docs/performance.md). ``processes``: training processes sharing
    this machine's cores (distributed training); below 2 cores each, none."""
    from cvkit.device import cpu_count

    if workers == "auto" or workers is None:
        side = max(input_size[1:]) if input_size else 0
        cores = cpu_count() // max(1, processes)
        if side <= SMALL_INPUT_SIDE or num_images < 64 or (processes > 1 and cores < 2):
            return 0
        return min(8, max(2, cores - 1))
    workers = int(workers)
    if workers < 0:
        raise UsageError(f"--workers {workers}: must be 0 or more (or auto)")
    return workers


def _worker_start_method(workers: int) -> str | None:
    """``spawn`` where the default is ``forkserver`` (Linux from Python 3.14): a forkserver's workers
    are its children, not this process's, so torch hears of a dead one (SIGCHLD) only when a wait
    for a batch times out, after ``$CVKIT_LOADER_TIMEOUT``; spawned workers are this process's own.
    Elsewhere the platform's default (fork on Linux before 3.14, spawn on macOS and Windows)."""
    import multiprocessing

    return "spawn" if workers > 0 and multiprocessing.get_start_method() == "forkserver" else None


LOADER_TIMEOUT_ENV = "CVKIT_LOADER_TIMEOUT"
LOADER_TIMEOUT = 300.0


def make_loader(dataset, *, batch_size: int, shuffle: bool, workers: int, device, seed: int = 0, sampler=None):
    """A seeded DataLoader. With worker processes, a worker that gives no batch for
    ``$CVKIT_LOADER_TIMEOUT`` seconds (default 300; 0 waits forever) is an error instead of a hang;
    a worker that dies is reported by torch at once (``cvkit.engine.phase.loader_failure`` words both).
    Workers ignore Ctrl-C and die of SIGTERM (see ``cvkit.interrupts.reset_worker_signals``).
    ``sampler`` (distributed training: this process's shard) replaces ``shuffle``."""
    import torch
    from torch.utils.data import DataLoader

    timeout = 0.0
    if workers > 0:
        raw = os.environ.get(LOADER_TIMEOUT_ENV, "").strip()
        try:
            timeout = float(raw) if raw else LOADER_TIMEOUT
        except ValueError:
            timeout = -1.0
        if not (timeout >= 0 and timeout != float("inf")):
            raise UsageError(f"{LOADER_TIMEOUT_ENV}={raw!r}: a number of seconds (0: wait forever)")
    from cvkit.interrupts import reset_worker_signals

    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False, sampler=sampler,
        num_workers=workers, multiprocessing_context=_worker_start_method(workers),
        persistent_workers=workers > 0, pin_memory=device.type == "cuda", generator=generator,
        timeout=timeout, worker_init_fn=reset_worker_signals if workers > 0 else None,
    )
