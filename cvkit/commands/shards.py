"""`cvkit data shard`: write a dataset as WebDataset tar shards that the ``webdataset`` format reads.

``OUT/train-000000.tar ...`` and ``OUT/val-000000.tar ...`` hold the samples of each split in a
seeded shuffled order (so each shard mixes the classes), ``ceil(count / shard_size)`` shards per
split whose sizes differ by at most one. A sample is ``KEY.<ext>`` (the original image file's bytes
when the dataset lists its files, else a PNG) and ``KEY.cls`` (the class index as text); KEY is the
sample's index in its source dataset. ``manifest.json`` lists the classes and every shard with its
sample count, size and sha256; ``classes.txt`` has the class names, one per line. Everything is
written into ``OUT/.tmp-*`` first and moved into place at the end, the manifest last: a failed
run leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import shutil
import tarfile
import tempfile
from pathlib import Path

from cvkit.errors import DataError, UsageError

FORMAT = "cvkit-shards"
VERSION = 1
MANIFEST = "manifest.json"
CLASSES_FILE = "classes.txt"


def write_shards(data: str, out: str, *, dataset: str = "imagefolder", shard_size: int = 1000,
                 val_split: float | None = None, seed: int = 0, options: dict | None = None,
                 show_progress: bool = False, plugins=None) -> dict:
    """Write ``data`` (read by the dataset format ``dataset``, without transforms) as shards in
    ``out``, which must be empty or not exist. Returns the manifest."""
    from cvkit import ui

    if shard_size < 1:
        raise UsageError(f"--shard-size {shard_size}: must be at least 1")
    if val_split is not None and not 0 < val_split < 1:
        raise UsageError(f"--val-split {val_split}: a fraction between 0 and 1, e.g. 0.2")
    out_path, created = _claim(out)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=out_path))
    done = False
    try:
        splits, classes = source_splits(data, dataset, val_split=val_split, seed=seed, options=options,
                                        plugins=plugins)
        manifest = {"format": FORMAT, "version": VERSION, "classes": classes, "splits": {},
                    "source": {"data": str(data), "dataset": dataset, "val_split": val_split},
                    "seed": seed, "shard_size": shard_size}
        with ui.make_progress(enabled=show_progress) as progress:
            for split, (ds, indices) in splits.items():
                manifest["splits"][split] = write_split(tmp, split, ds, indices, seed=seed,
                                                        shard_size=shard_size, progress=progress)
        (tmp / CLASSES_FILE).write_text("".join(f"{c}\n" for c in classes), encoding="utf-8")
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
        for name in sorted(os.listdir(tmp), key=lambda n: n == MANIFEST):  # the manifest last
            os.replace(tmp / name, out_path / name)
        done = True
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if not done and created:
            shutil.rmtree(out_path, ignore_errors=True)
    return manifest


def _claim(out: str) -> tuple[Path, bool]:
    """OUT, made if it does not exist; (path, whether this run made it)."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{out}: is a file; OUT must be a new or empty folder")
    if path.is_dir() and any(path.iterdir()):
        raise UsageError(f"{out}: folder is not empty; choose a new or empty folder for the shards")
    created = not path.exists()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{out}: cannot make the folder ({exc.strerror or exc})") from None
    return path, created


def source_splits(data: str, dataset: str, *, val_split, seed: int, options=None, plugins=None):
    """``({split: (dataset, indices)}, classes)``: DATA's splits exactly as ``cvkit train`` makes
    them (``cvkit.data.load_splits``, without transforms): the format's own, or a seeded stratified
    ``val_split`` of data without a validation split."""
    from torch.utils.data import Subset

    from cvkit.data import is_stream, load_splits

    splits = load_splits(data, dataset=dataset, train_transform=None, eval_transform=None, val_split=val_split,
                         seed=seed, options=options, plugins=plugins)
    result = {}
    for name in ("train", "val"):
        ds = getattr(splits, name)
        if is_stream(ds):
            raise UsageError(f"--dataset {dataset}: {data} is read as a stream, which cvkit data shard "
                             f"cannot index; it is shards already")
        result[name] = (ds.dataset, ds.indices) if isinstance(ds, Subset) else (ds, range(len(ds)))
    return result, list(splits.classes)


def balanced_sizes(count: int, shard_size: int) -> list[int]:
    """``ceil(count / shard_size)`` shard sizes that differ by at most one."""
    n = math.ceil(count / shard_size)
    return [count // n + (i < count % n) for i in range(n)]


def write_split(folder: Path, split: str, ds, indices, *, seed: int, shard_size: int,
                progress=None) -> dict:
    """Write one split's shards into ``folder``; the split's entry of the manifest."""
    order = list(indices)
    if not order:
        raise DataError(f"no {split} images to shard")
    random.Random(f"cvkit-shard/{seed}/{split}").shuffle(order)
    task = progress.add_task(f"shard {split}", total=len(order), rate="", stats="") if progress else None
    samples = getattr(ds, "samples", None)

    def items(chunk):
        for index in chunk:
            suffix, data, label = encode_sample(ds, index, samples)
            yield f"{index:08d}", suffix, data, label
            if task is not None:
                progress.advance(task)

    shards, start = [], 0
    for n, size in enumerate(balanced_sizes(len(order), shard_size)):
        shards.append(write_tar(folder / f"{split}-{n:06d}.tar", items(order[start:start + size])))
        start += size
    return {"samples": len(order), "shards": shards}


def encode_sample(ds, index: int, samples) -> tuple[str, bytes, int]:
    """(suffix, image bytes, label): the file itself when the dataset lists its files (after
    checking that it decodes), else the image the dataset gives, as PNG."""
    from cvkit.images import IMAGE_EXTENSIONS, load_image

    if samples is not None:
        path, label = samples[index]
        suffix = os.path.splitext(str(path))[1].lower()
        if suffix in IMAGE_EXTENSIONS:
            load_image(path)  # an unreadable image fails here, naming it, not in the middle of training
            try:
                with open(path, "rb") as f:
                    return suffix.lstrip("."), f.read(), int(label)
            except OSError as exc:
                raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    image, label = ds[index]
    if not hasattr(image, "save"):
        raise UsageError(f"the dataset gives {type(image).__name__} without a transform, not PIL images; "
                         f"cvkit data shard cannot encode it")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "png", buffer.getvalue(), int(label)


class _Hashing:
    """A file object's writes, counted and hashed on the way."""

    def __init__(self, f):
        self.f, self.sha, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.sha.update(data)
        self.size += len(data)
        return self.f.write(data)


def write_tar(path: Path, items) -> dict:
    """A tar of ``(key, suffix, image bytes, label)`` items; its manifest entry. The same items give
    the same bytes (fixed times and owners)."""
    count = 0
    with open(path, "wb") as f:
        sink = _Hashing(f)
        with tarfile.open(fileobj=sink, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
            for key, suffix, data, label in items:
                for name, content in ((f"{key}.{suffix}", data), (f"{key}.cls", str(label).encode())):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(content), 0, 0o644
                    tar.addfile(info, io.BytesIO(content))
                count += 1
    return {"name": path.name, "samples": count, "sha256": sink.sha.hexdigest(), "bytes": sink.size}
