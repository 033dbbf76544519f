"""Built-in plugin: the ``webdataset`` dataset format, images in tar shards (WebDataset's layout).

DATA is a folder written by ``cvkit data shard`` (``manifest.json``: classes, and per split the
shards with their sample counts), or a brace pattern of local tar shards such as
``data/train-{000000..000031}.tar`` with the validation shards as ``--opt dataset.val=PATTERN`` and
the class names in ``classes.txt`` beside the shards (one per line, in label order).

A sample is the files of a tar that share a key (the name up to the first dot of its base name, as
WebDataset groups them): one image (``KEY.jpg``, ``KEY.png``, ...) and its label, ``KEY.cls`` (the
class index as text) or ``KEY.txt`` (the class name).

Division of work. Every epoch the train shards are shuffled (seeded by ``seed`` and the epoch),
dealt to the training processes (largest first, each to the least loaded process; so the load of
each process is the same every epoch, only which shards of equal size it gets changes), and a
process's shards are dealt the same way to its DataLoader workers. Each shard is read by exactly
one (process, worker). Every process yields the same number of train samples per epoch, the
smallest process's load: a process with more leaves the end of its last shards unread that epoch
(which samples those are changes with the epoch's shard order). A small seeded buffer shuffles the
samples within a worker. Val shards are read in order, each sample exactly once; the processes'
counts may differ. Fewer train shards than processes is an error.

This module imports no torch: the dataset class is made on first use (``ShardDataset``).
"""

from __future__ import annotations

import json
import os
import random
import tarfile
from dataclasses import dataclass
from itertools import chain, islice

import cvkit
from cvkit.commands.shards import CLASSES_FILE, FORMAT, MANIFEST, VERSION  # what `cvkit data shard` writes
from cvkit.errors import DataError, UsageError
from cvkit.images import IMAGE_EXTENSIONS

INSTALL_HINT = 'the webdataset format needs the shards extra: pip install "cvkit[shards]"'
IMAGE_SUFFIXES = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
SHUFFLE_BUFFER = 256  # samples (still encoded) held to shuffle within a worker


def require_webdataset():
    """The webdataset package, or a one-line UsageError saying how to install it."""
    try:
        import webdataset
    except ImportError:
        raise UsageError(INSTALL_HINT) from None
    return webdataset


# --- what DATA holds ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Shard:
    path: str
    samples: int


@dataclass(frozen=True)
class Source:
    classes: list
    train: tuple
    val: tuple  # empty: no validation shards


def read_source(root: str, val: str | None = None) -> Source:
    """The classes and the train and val shards of DATA (``val``: a pattern replacing the manifest's)."""
    root = str(root)
    folder = root if os.path.isdir(root) else None
    if folder is None and os.path.basename(root) == MANIFEST and os.path.isfile(root):
        folder = os.path.dirname(root) or "."
    if folder is not None:
        if not os.path.isfile(os.path.join(folder, MANIFEST)):
            raise DataError(f"{root}: no {MANIFEST} (write shards with `cvkit data shard`, or give a brace "
                            f"pattern of tar shards such as {os.path.join(root, 'train-{000000..000009}.tar')})")
        classes, splits = _read_manifest(folder)
        train, val_shards = splits.get("train", ()), splits.get("val", ())
    else:
        train = pattern_shards(root)
        classes = read_classes(os.path.dirname(train[0].path) or ".")
        val_shards = ()
    if not train:
        raise DataError(f"{root}: no train shards")
    return Source(classes=classes, train=tuple(train), val=tuple(pattern_shards(val) if val else val_shards))


def _read_manifest(folder: str) -> tuple[list, dict]:
    path = os.path.join(folder, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
        if manifest.get("format") != FORMAT:
            raise DataError(f"{path}: not a cvkit shard manifest (format {manifest.get('format')!r})")
        if int(manifest.get("version", 0)) > VERSION:
            raise DataError(f"{path}: manifest version {manifest['version']} is newer than this cvkit reads "
                            f"({VERSION}); upgrade cvkit")
        classes = [str(c) for c in manifest["classes"]]
        splits = {name: [Shard(os.path.join(folder, s["name"]), int(s["samples"])) for s in split["shards"]]
                  for name, split in manifest["splits"].items()}
        expected = {os.path.join(folder, s["name"]): s.get("bytes")
                    for split in manifest["splits"].values() for s in split["shards"]}
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a readable shard manifest ({type(exc).__name__}: {exc})") from None
    for shard, size in expected.items():
        if not os.path.isfile(shard):
            raise DataError(f"{shard}: no such shard (listed in {path})")
        if size is not None and os.path.getsize(shard) != size:
            raise DataError(f"{shard}: {os.path.getsize(shard)} bytes, but {path} says {size} "
                            f"(a partial copy?)")
    return classes, splits


def pattern_shards(pattern: str) -> list[Shard]:
    """The shards a brace pattern names, each with its sample count read from the tar headers."""
    from braceexpand import braceexpand

    paths = list(braceexpand(str(pattern)))
    for path in paths:
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such shard" + (f" (from {pattern})" if path != pattern else ""))
    return [Shard(path, count_samples(path)) for path in paths]


def read_classes(folder: str) -> list[str]:
    path = os.path.join(folder, CLASSES_FILE)
    if not os.path.isfile(path):
        raise DataError(f"{folder}: no {CLASSES_FILE} beside the shards and no {MANIFEST}: the webdataset "
                        f"format needs the class names ({CLASSES_FILE}: one per line, in label order)")
    with open(path, encoding="utf-8") as f:
        classes = [line.strip() for line in f if line.strip()]
    if not classes or len(set(classes)) != len(classes):
        raise DataError(f"{path}: needs one distinct class name per line")
    return classes


_COUNTS: dict = {}  # (path, size, mtime) -> samples: each process counts a shard once


def count_samples(path: str) -> int:
    """Samples in a tar: runs of regular files sharing a key, as WebDataset groups them (headers only)."""
    from webdataset.tariterators import base_plus_ext

    stat = os.stat(path)
    cache_key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if cache_key not in _COUNTS:
        samples, last = 0, None
        try:
            with tarfile.open(path) as tar:
                for member in tar:
                    key = base_plus_ext(member.name)[0] if member.isreg() else None
                    if key is None or _is_meta(member.name):
                        continue
                    samples, last = samples + (key != last), key
        except (tarfile.TarError, OSError) as exc:
            raise DataError(f"{path}: not a readable tar shard ({' '.join(str(exc).split())})") from None
        _COUNTS[cache_key] = samples
    return _COUNTS[cache_key]


def _is_meta(name: str) -> bool:
    """WebDataset skips ``__name__`` entries at the top of a tar."""
    first = name.split("/", 1)[0]
    return len(first) > 4 and first.startswith("__") and first.endswith("__")


# --- the division of work ----------------------------------------------------------------------

@dataclass(frozen=True)
class WorkerPlan:
    shards: tuple  # indices into the split's shards, in reading order
    quota: int  # samples this worker yields


def deal(counts, order, parts: int) -> list[list[int]]:
    """Shard indices ``order`` dealt to ``parts``: largest count first (ties in ``order``'s order),
    each to the least loaded part (ties: the lowest). The loads depend only on the counts, never on
    ``order``; each part's shards are listed in ``order``'s order."""
    loads, dealt = [0] * parts, [[] for _ in range(parts)]
    for i in sorted(order, key=lambda i: -counts[i]):
        part = min(range(parts), key=lambda k: (loads[k], k))
        dealt[part].append(i)
        loads[part] += counts[i]
    position = {i: n for n, i in enumerate(order)}
    return [sorted(d, key=position.__getitem__) for d in dealt]


def share(total: int, loads) -> list[int]:
    """``total`` (at most ``sum(loads)``) split in proportion to ``loads``, largest remainders
    first; no share exceeds its load."""
    whole = sum(loads)
    if whole == 0:
        return [0] * len(loads)
    quotas = [total * load // whole for load in loads]
    by_remainder = sorted(range(len(loads)), key=lambda k: (-(total * loads[k] % whole), k))
    for k in by_remainder[:total - sum(quotas)]:
        quotas[k] += 1
    return quotas


def plan(counts, *, epoch: int, seed: int, world: int, workers: int, train: bool) -> list[list[WorkerPlan]]:
    """``plan(...)[rank][worker]``: what each worker of each process reads in ``epoch``. Train:
    shards in a seeded order per epoch, every process's quota the smallest process's load. Val:
    shards in order, every sample once."""
    order = list(range(len(counts)))
    if train:
        random.Random(f"cvkit-shards/{seed}/{epoch}").shuffle(order)
    processes = deal(counts, order, world)
    loads = [sum(counts[i] for i in shards) for shards in processes]
    quotas = [min(loads)] * world if train else loads
    result = []
    for shards, quota in zip(processes, quotas):
        per_worker = deal(counts, shards, workers)
        worker_loads = [sum(counts[i] for i in w) for w in per_worker]
        result.append([WorkerPlan(tuple(w), q) for w, q in zip(per_worker, share(quota, worker_loads))])
    return result


# --- reading -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Record:
    shard: str
    key: str
    label: int
    data: bytes  # the encoded image


def read_shard(shard: Shard, index_of: dict):
    """The samples of one tar, in order, through WebDataset's tar iteration and grouping."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    seen = 0
    try:
        with open(shard.path, "rb") as stream:
            for sample in group_by_keys(tar_file_expander([{"url": shard.path, "stream": stream}])):
                seen += 1
                yield _record(sample, shard.path, index_of)
    except (tarfile.TarError, OSError, ValueError) as exc:
        reason = " ".join(str(exc.args[0] if exc.args else type(exc).__name__).split())
        raise DataError(f"{shard.path}: not a readable tar shard ({reason})") from None
    if seen != shard.samples:
        raise DataError(f"{shard.path}: holds {seen} samples, but {shard.samples} were counted for it "
                        f"(the shard changed? rewrite it, or its manifest)")


def _record(sample: dict, path: str, index_of: dict) -> Record:
    key = sample["__key__"]
    image = next((sample[s] for s in IMAGE_SUFFIXES if s in sample), None)
    if image is None:
        raise DataError(f"{path}: sample {key!r} has no image ({key}.jpg, {key}.png, ...)")
    if "cls" in sample:
        text = sample["cls"].decode("utf-8", "replace").strip()
        label = int(text) if text.isdigit() else -1
        if not 0 <= label < len(index_of):
            raise DataError(f"{path}: sample {key!r}: .cls {text!r} is not a class index "
                            f"(0 to {len(index_of) - 1})")
    elif "txt" in sample:
        name = sample["txt"].decode("utf-8", "replace").strip()
        if name not in index_of:
            raise DataError(f"{path}: sample {key!r}: unknown class {name!r} in .txt")
        label = index_of[name]
    else:
        raise DataError(f"{path}: sample {key!r} has no label (.cls: the class index, or .txt: the class name)")
    return Record(shard=path, key=key, label=label, data=image)


def shuffled(items, size: int, rng: random.Random):
    """``items`` through a shuffle buffer of ``size``."""
    buffer = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        k = rng.randrange(size)
        buffer[k], item = item, buffer[k]
        yield item
    rng.shuffle(buffer)
    yield from buffer


def decode(data: bytes, where: str, min_side: int | None = None):
    """An encoded image, read by cvkit's one image loader (errors name ``where``)."""
    from cvkit.images import load_image

    return load_image(where, min_side=min_side, data=data)


# --- the dataset -------------------------------------------------------------------------------

def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _ShardReading:
    """The dataset's behaviour; :func:`dataset_class` adds torch's IterableDataset to it.

    ``rank`` and ``world`` (None: from torch.distributed in the training process) override the
    process's place, e.g. to simulate processes in a test."""

    def __init__(self, shards, classes, *, split, transform, min_side, seed, shuffle_buffer, where):
        self.shards, self.classes, self.split = tuple(shards), list(classes), split
        self.transform, self.min_side, self.where = transform, min_side, where
        self.seed, self.shuffle_buffer = seed, shuffle_buffer
        self.rank = self.world = None
        self.epoch, self._iterations = 0, 0
        self._process_seen = _distributed()

    def set_epoch(self, epoch: int) -> None:
        self.epoch, self._iterations = int(epoch), 0
        self._process()

    def _process(self) -> tuple[int, int]:
        """(rank, world). Worker processes have no torch.distributed of their own: they keep what
        the training process saw when it last called ``len`` or ``set_epoch``."""
        from torch.utils.data import get_worker_info

        if self.rank is not None or self.world is not None:
            return self.rank or 0, self.world or 1
        if get_worker_info() is None:
            self._process_seen = _distributed()
        return self._process_seen

    def plan(self, epoch: int, world: int, workers: int = 1) -> list[list[WorkerPlan]]:
        train = self.split == "train"
        if train and len(self.shards) < world:
            raise DataError(f"{self.where}: {len(self.shards)} shards for {world} processes: write smaller "
                            f"shards with cvkit data shard --shard-size")
        return plan([s.samples for s in self.shards], epoch=epoch, seed=self.seed, world=world,
                    workers=workers, train=train)

    def __len__(self) -> int:
        rank, world = self._process()
        return sum(w.quota for w in self.plan(self.epoch, world)[rank])

    def records(self, epoch: int, *, rank: int = 0, world: int = 1, worker: int = 0, workers: int = 1):
        """The records one worker of one process yields in ``epoch``, in order."""
        mine = self.plan(epoch, world, workers)[rank][worker]
        index_of = {name: i for i, name in enumerate(self.classes)}
        stream = chain.from_iterable(read_shard(self.shards[i], index_of) for i in mine.shards)
        if self.split == "train":
            rng = random.Random(f"cvkit-shards/{self.seed}/{epoch}/{rank}/{worker}")
            stream = shuffled(stream, self.shuffle_buffer, rng)
        return islice(stream, mine.quota)

    def __iter__(self):
        """This epoch's samples for this process and DataLoader worker. Each call is the next epoch
        unless ``set_epoch`` came between: persistent workers never see ``set_epoch``."""
        from torch.utils.data import get_worker_info

        epoch = self.epoch + self._iterations
        self._iterations += 1
        rank, world = self._process()
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self._samples(self.records(epoch, rank=rank, world=world, worker=worker, workers=workers))

    def _samples(self, records):
        for r in records:
            image = decode(r.data, f"{r.shard}: {r.key}", self.min_side)
            yield (self.transform(image) if self.transform is not None else image), r.label


_DATASET_CLASS = None


def dataset_class():
    """``ShardDataset``: made on first use, so importing this module imports no torch."""
    global _DATASET_CLASS
    if _DATASET_CLASS is None:
        from torch.utils.data import IterableDataset

        class ShardDataset(_ShardReading, IterableDataset):
            """WebDataset tar shards as a torch IterableDataset (see the module's docstring)."""

        ShardDataset.__module__, ShardDataset.__qualname__ = __name__, "ShardDataset"
        _DATASET_CLASS = ShardDataset
    return _DATASET_CLASS


def __getattr__(name: str):
    """``cvkit_plugins.shards.ShardDataset`` (how pickle finds the class in a worker process)."""
    if name == "ShardDataset":
        return dataset_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- the registration --------------------------------------------------------------------------

def no_val_message(root: str) -> str:
    return (f"{root}: no validation shards (cvkit cannot split a stream of shards); give them with "
            f"--opt dataset.val=PATTERN, or write shards with a val split: cvkit data shard DATA OUT "
            f"(with --val-split FRACTION for data without one)")


def webdataset_splits(root: str, *, val: str | None = None, **_options) -> tuple:
    require_webdataset()
    if not read_source(root, val).val:
        raise DataError(no_val_message(root))
    return ("train", "val")


def build_webdataset(root: str, *, split: str | None, transform, min_side: int | None = None,
                     val: str | None = None, seed: int = 0, shuffle_buffer: int = SHUFFLE_BUFFER):
    """``val``: a brace pattern of validation shards; ``seed``: of the shard order and the shuffle
    (mixed with the epoch); ``shuffle_buffer``: samples held to shuffle within a worker."""
    require_webdataset()
    if split not in ("train", "val"):
        raise UsageError(f"the webdataset format has train and val splits, not {split!r}")
    if not isinstance(seed, int) or not isinstance(shuffle_buffer, int) or shuffle_buffer < 1:
        raise UsageError(f"--opt dataset.seed and dataset.shuffle_buffer: whole numbers (buffer at least 1), "
                         f"got {seed!r} and {shuffle_buffer!r}")
    source = read_source(root, val)
    shards = source.train if split == "train" else source.val
    if not shards:
        raise DataError(no_val_message(root))
    return dataset_class()(shards, source.classes, split=split, transform=transform, min_side=min_side,
                           seed=seed, shuffle_buffer=shuffle_buffer, where=str(root))


@cvkit.hookimpl
def register_datasets(register):
    register("webdataset", build_webdataset, splits=webdataset_splits,
             help="WebDataset tar shards: a folder written by `cvkit data shard`, or a brace pattern "
                  "DIR/train-{000000..000009}.tar with classes.txt and --opt dataset.val=PATTERN")
