"""Training data: the splits of a dataset, reconciled, and DataLoaders for them.

The layout of the data is its format's business: a dataset plugin says which splits DATA holds
(its ``splits`` metadata, see cvkit/hookspecs.py). With a validation split cvkit builds ``train``
and ``val``; without one it builds the training data and holds out ``--val-split`` of each class
(seeded and stratified, so the same seed and files give the same split). The model's classes are
the train split's; the val split's labels are matched to them by name.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

from cvkit.build import build_dataset, dataset_splits
from cvkit.datacheck import check_data, class_difference
from cvkit.errors import DataError, UsageError


@dataclass
class Splits:
    train: object
    val: object
    classes: list[str]
    layout: dict = field(default_factory=dict)  # how the split was made, for the run directory


def no_val_message(root: str) -> str:
    """What ``cvkit train`` says of data without a validation split, given no --val-split."""
    return (f"{root}: no validation split; pass --val-split FRACTION to hold out part of each class "
            f"(e.g. --val-split 0.2)")


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


def labels_of(dataset) -> list[int] | None:
    """The label of each sample of an ImageFolder-like dataset (``.targets``) or a Subset of one,
    in index order, without reading any image; None when it does not list them."""
    indices = None
    if hasattr(dataset, "indices") and hasattr(dataset, "dataset"):  # torch.utils.data.Subset
        indices, dataset = dataset.indices, dataset.dataset
    targets = getattr(dataset, "targets", None)
    if targets is None:
        return None
    try:
        return [int(targets[i]) for i in indices] if indices is not None else [int(t) for t in targets]
    except (TypeError, ValueError, IndexError):
        return None


def _targets(dataset) -> list[int]:
    targets = getattr(dataset, "targets", None)
    if targets is None:
        targets = [int(dataset[i][1]) for i in range(len(dataset))]
    return [int(t) for t in targets]


def reconcile(train, val, root: str):
    """``val`` with its labels in the train split's class order. A val class that train lacks is a
    :class:`DataError`; a train class without val images is fine here (training warns of it)."""
    train_classes, val_classes = list(train.classes), list(val.classes)
    if train_classes == val_classes:
        return val
    message = class_difference(train_classes, val_classes, root)
    if message:
        raise DataError(message)
    mapping = [train_classes.index(c) for c in val_classes]
    samples = getattr(val, "samples", None)
    if isinstance(samples, list) and isinstance(getattr(val, "targets", None), list):  # ImageFolder-like: in place
        val.samples = [(p, mapping[int(t)]) for p, t in samples]
        if hasattr(val, "imgs"):
            val.imgs = val.samples
        val.targets = [t for _, t in val.samples]
        val.classes = train_classes
        if hasattr(val, "class_to_idx"):
            val.class_to_idx = {c: i for i, c in enumerate(train_classes)}
        return val
    from cvkit.relabel import relabelled

    return relabelled(val, mapping, train_classes)


def load_splits(root: str, *, dataset: str, train_transform, eval_transform, val_split: float | None = None,
                seed: int = 0, options: dict | None = None, on_bad_image: str = "error",
                min_side: int | None = None, plugins=None) -> Splits:
    """The train and val datasets of ``root`` in format ``dataset``.

    For the ``imagefolder`` format the cheap part of ``cvkit data check`` runs first (class
    folders, empty classes, classes val has and train lacks). With ``on_bad_image="skip"`` every
    image is decoded once up front and unreadable ones are dropped and listed in ``layout["skipped"]``.
    """
    root = str(root)
    if on_bad_image not in ("error", "skip"):
        raise UsageError(f"--on-bad-image {on_bad_image!r}: use error or skip")
    has = dataset_splits(dataset, root, options=options, plugins=plugins)
    if dataset == "imagefolder":
        report = check_data(root, dataset=dataset, val_split=val_split or 0.2, deep=False, options=options,
                            plugins=plugins)
        if report["errors"]:
            raise DataError(report["errors"][0])

    def build(split, transform):
        return build_dataset(dataset, root, split=split, transform=transform, options=options,
                             min_side=min_side, plugins=plugins)

    if "val" in has:
        if val_split:
            raise UsageError(f"--val-split {val_split:g}: {root} has a validation split of its own, which "
                             f"cvkit does not split again; leave --val-split out")
        train, val = build("train", train_transform), build("val", eval_transform)
        val = reconcile(train, val, root)
        info = {"layout": "folders", "root": root}
        if on_bad_image == "skip":
            info["skipped"] = drop_unreadable([train], [val])
    else:
        train, val, info = _held_out(root, "train" if "train" in has else None, build, train_transform,
                                     eval_transform, val_split, seed, on_bad_image)
    if len(train) == 0:
        raise DataError(f"{root}: no training images")
    if len(val) == 0:
        raise DataError(f"{root}: no validation images")
    return Splits(train=train, val=val, classes=list(train.classes), layout=info)


def _held_out(root, part, build, train_transform, eval_transform, val_split, seed, on_bad_image):
    """Train and val from data without a validation split: ``val_split`` of each class held out."""
    from torch.utils.data import Subset

    if not val_split:
        raise DataError(no_val_message(root))
    full_train, full_val = build(part, train_transform), build(part, eval_transform)
    if is_stream(full_train):
        raise UsageError(f"--val-split: {root} is read as a stream ({type(full_train).__name__}), which cvkit "
                         f"cannot split; give the data a validation split of its own")
    skipped = drop_unreadable([full_train, full_val]) if on_bad_image == "skip" else None
    train_idx, val_idx = stratified_split(_targets(full_train), val_split, seed)
    train, val = Subset(full_train, train_idx), Subset(full_val, val_idx)
    train.classes = val.classes = list(full_train.classes)
    info = {"layout": "split", "root": root, "val_split": val_split, "seed": seed}
    if part:
        info["split_of"] = part
    if skipped is not None:
        info["skipped"] = skipped
    samples = getattr(full_train, "samples", None)
    if samples:
        info["val_files"] = [os.path.relpath(samples[i][0], root if os.path.isdir(root) else os.path.dirname(root))
                             for i in val_idx]
    return train, val, info


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


def is_stream(dataset) -> bool:
    """An ``IterableDataset`` (sharded data): no sampler, no cvkit split, no caches; it shuffles itself."""
    from torch.utils.data import IterableDataset

    return isinstance(dataset, IterableDataset)


class FixedSteps:
    """A training loader over a stream, cut to ``len(dataset) // batch_size`` batches an epoch: every
    process of a distributed run takes the same number of steps (each DataLoader worker ends its
    part with a short batch, so a stream gives at least that many). The rest of the loader's
    attributes are the loader's own."""

    def __init__(self, loader, steps: int):
        object.__setattr__(self, "loader", loader)
        object.__setattr__(self, "steps", steps)

    def __len__(self):
        return self.steps

    def __iter__(self):
        import itertools

        return itertools.islice(iter(self.loader), self.steps)

    def __getattr__(self, name):
        return getattr(self.loader, name)

    def __setattr__(self, name, value):
        setattr(self.loader, name, value)


def set_loader_epoch(loader, epoch: int) -> None:
    """A new order for this epoch: a distributed sampler's and a stream's (``set_epoch``)."""
    for part in (getattr(loader, "sampler", None), getattr(loader, "dataset", None)):
        if hasattr(part, "set_epoch"):
            part.set_epoch(epoch)


def make_loader(dataset, *, batch_size: int, shuffle: bool, workers: int, device, seed: int = 0, sampler=None):
    """A seeded DataLoader (a stream: in its own order, cut to whole batches when ``sampler`` is
    ``"steps"``; see :class:`FixedSteps`). With worker processes, a worker that gives no batch for
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
    stream = is_stream(dataset)
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None and not stream,
        sampler=None if stream else sampler,
        num_workers=workers, multiprocessing_context=_worker_start_method(workers),
        persistent_workers=workers > 0, pin_memory=device.type == "cuda", generator=generator,
        timeout=timeout, worker_init_fn=reset_worker_signals if workers > 0 else None,
    )
    if stream and shuffle:  # training
        return FixedSteps(loader, max(1, len(dataset) // batch_size))
    return loader
