"""`cvkit data check`: what a dataset holds and what would stop or mislead training, changing nothing.

Class folders (the ``imagefolder`` format) are scanned without building a dataset, so hidden and
non-image files are counted too; any other format is read through its plugin (no transforms).
"""

from __future__ import annotations

import hashlib
import os

from cvkit.build import build_dataset, dataset_splits
from cvkit.errors import DataError

IMBALANCE_WARNING = 3.0  # largest class / smallest class in train


def class_difference(train_classes, val_classes, root: str) -> str | None:
    """The error when val has a class train lacks (a model trained on train cannot know it), else None."""
    unknown = [c for c in val_classes if c not in set(train_classes)]
    if not unknown:
        return None
    named = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
    return (f"{root}: val has {'a class' if len(unknown) == 1 else 'classes'} the training split lacks "
            f"({named}): a model trained on it cannot know {'it' if len(unknown) == 1 else 'them'}")


def single_class_message(name: str) -> str:
    """One class only: training runs, but there is nothing to tell apart (``cvkit data check`` and
    ``cvkit train`` both say so)."""
    return (f"only one class ({name}): a classifier needs at least two; every prediction would be {name} "
            f"and accuracy 100% without learning anything")


def no_val_note(root: str) -> str:
    """What ``cvkit data check`` notes of data without a validation split: train needs --val-split."""
    return (f"{root}: no validation split; cvkit train needs --val-split FRACTION for it "
            f"(e.g. --val-split 0.2 holds out 20% of each class)")


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


def _split_names(has: tuple) -> dict:
    """Report name -> the split asked of the format."""
    if "val" in has:
        return {"train": "train", "val": "val"}
    return {"train": "train"} if "train" in has else {"all": None}


VAL_NAMES = ("val", "valid", "validation")


def _scan_folders(root: str, has: tuple) -> dict:
    """The class folders of each split of an ImageFolder tree."""
    splits = {}
    for name, split in _split_names(has).items():
        names = (split,) if split == "train" else VAL_NAMES if split == "val" else None
        path = root if names is None else next(os.path.join(root, n) for n in names
                                                if os.path.isdir(os.path.join(root, n)))
        splits[name] = scan_split(path)
    return splits


def _read_format(root: str, dataset: str, has: tuple, options, plugins) -> dict:
    """Each split read through the format's plugin: its classes and, per class, the samples' files
    (None where the dataset does not list them) and indices."""
    splits, stream = {}, False
    for name, split in _split_names(has).items():
        ds = build_dataset(dataset, root, split=split, transform=None, options=options, plugins=plugins)
        samples = getattr(ds, "samples", None)
        targets = getattr(ds, "targets", None)
        if samples is not None:
            labels = [(int(t), p) for p, t in samples]
        elif targets is not None:
            labels = [(int(t), None) for t in targets]
        else:  # a stream: read (and decoded) once for its labels; an unreadable image stops it
            labels = [(int(y), None) for _, y in ds]
            stream = True
        classes = {c: [] for c in ds.classes}
        for label, path in labels:
            classes[ds.classes[label]].append(path)
        splits[name] = {"path": root if split is None else f"{root} ({split})", "classes": classes,
                        "hidden_ignored": 0, "other_files": 0, "dataset": None if stream else ds}
    return splits


def check_data(root: str, *, dataset: str = "imagefolder", val_split: float | None = None, deep: bool = True,
               options: dict | None = None, plugins=None) -> dict:
    """Check a dataset without changing it: per-split class counts, imbalance, empty classes,
    classes val has and train lacks and, with ``deep``, unreadable images and exact duplicates
    shared by train and val. ``errors`` stop training; ``warnings`` do not; ``notes`` say what
    training will need (no validation split checked without ``val_split``: ``--val-split``)."""
    root, options = str(root), dict(options or {})
    has = dataset_splits(dataset, root, options=options, plugins=plugins)
    notes = [] if "val" in has or val_split else [no_val_note(root)]
    folders = dataset == "imagefolder"
    splits = _scan_folders(root, has) if folders else _read_format(root, dataset, has, options, plugins)
    errors = _structure_errors(splits, folders, bool(options.get("allow_empty")))
    if "val" in splits:
        message = class_difference(list(splits["train"]["classes"]), list(splits["val"]["classes"]), root)
        if message:
            errors.append(message)
    warnings = _count_warnings(next(iter(splits.values()))["classes"])
    if "val" in splits:
        unmeasured = [c for c in splits["train"]["classes"] if not splits["val"]["classes"].get(c)]
        if unmeasured:
            warnings.append(f"no validation images of {', '.join(unmeasured)}: val accuracy (which picks "
                            f"best.pt) does not measure {'it' if len(unmeasured) == 1 else 'them'}")
    report = {
        "root": root, "dataset": dataset, "layout": "folders" if "val" in has else "split",
        "splits": {name: {"path": s["path"], "classes": {c: len(f) for c, f in s["classes"].items()},
                          "images": sum(len(f) for f in s["classes"].values()),
                          "hidden_ignored": s["hidden_ignored"], "other_files": s["other_files"]}
                   for name, s in splits.items()},
        "errors": errors, "warnings": warnings, "notes": notes,
    }
    if deep or (not folders and any(s["dataset"] is None for s in splits.values())):  # a stream: read whole
        report["unreadable"], report["duplicates"] = _decode_all(splits)
        if report["duplicates"]:
            warnings.append(f"{len(report['duplicates'])} val images are exact copies of train images "
                            f"(they inflate val accuracy), e.g. {report['duplicates'][0]['val']}")
    return report


def _structure_errors(splits: dict, folders: bool, allow_empty: bool) -> list[str]:
    errors = []
    for split in splits.values():
        if not split["classes"]:
            errors.append(f"{split['path']}: no class folders" if folders else f"{split['path']}: no classes")
        for cls, files in split["classes"].items():
            if not files and folders and not allow_empty:
                errors.append(f"{os.path.join(split['path'], cls)}: empty class folder (no images); remove it "
                              f"or pass --opt dataset.allow_empty=true")
    return errors


def _count_warnings(classes: dict) -> list[str]:
    counts = {c: len(f) for c, f in classes.items()}
    warnings = []
    if len(counts) == 1:
        warnings.append(single_class_message(next(iter(counts))))
    nonzero = [n for n in counts.values() if n]
    if nonzero and max(nonzero) > IMBALANCE_WARNING * min(nonzero):
        big = max(counts, key=counts.get)
        small = min((c for c in counts if counts[c]), key=counts.get)
        warnings.append(f"classes are imbalanced: {big} has {counts[big]} images, {small} {counts[small]}")
    return warnings


def _decode_all(splits: dict) -> tuple[list, list]:
    """Decode every image once (through the format's dataset where there is one, so its errors name
    the row or shard); hash the files of train and val to find val images copied from train."""
    unreadable, digests = [], {}
    for name, split in splits.items():
        for error in _decode_split(split):
            unreadable.append(error)
        if "val" in splits:
            for path in (p for files in split["classes"].values() for p in files if p):
                try:
                    with open(path, "rb") as f:
                        digests.setdefault(name, {}).setdefault(hashlib.sha256(f.read()).hexdigest(), path)
                except OSError:
                    pass  # reported as unreadable by the decoding above
    train = digests.get("train", {})
    duplicates = [{"val": path, "train": train[d]} for d, path in digests.get("val", {}).items() if d in train]
    return unreadable, duplicates


def _decode_split(split: dict):
    from cvkit.images import load_image

    if "dataset" in split and split["dataset"] is None:  # a stream: decoded whole when it was counted
        return
    ds = split.get("dataset")
    if ds is None:  # class folders: the files themselves
        for path in (p for files in split["classes"].values() for p in files):
            try:
                load_image(path)
            except DataError as exc:
                yield {"path": path, "error": str(exc)}
            except OSError as exc:  # decoded, then gone or refused
                yield {"path": path, "error": f"{path}: cannot read ({exc.strerror or exc})"}
        return
    samples = getattr(ds, "samples", None)
    for i in range(len(ds)):
        try:
            ds[i]
        except DataError as exc:
            yield {"path": samples[i][0] if samples else f"{split['path']}[{i}]", "error": str(exc)}
