"""WebDataset shards: `cvkit data shard` (cvkit/commands/shards.py) and the ``webdataset`` format
(plugins/shards.py): manifest, balanced shards, atomic writes, reading back, the division of work
across processes and workers, brace patterns with classes.txt, labels, errors."""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import run_cvkit
from cvkit.errors import DataError, UsageError

pytest.importorskip("webdataset")

CLASSES = ("a", "b", "c")


def make_tree(root: Path, train: int = 10, val: int = 4) -> Path:
    """root/{train,val}/<class>/NN.png: 16x16 pictures, each a grey level of its own."""
    from PIL import Image

    shade = iter(range(1, 256))
    for split, count in (("train", train), ("val", val)):
        for name in CLASSES:
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                Image.new("L", (16, 16), next(shade)).save(root / split / name / f"{i:02d}.png")
    return root


def png(shade: int = 128) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (16, 16), shade).save(buffer, format="PNG")
    return buffer.getvalue()


def write_tar(path: Path, samples: list[tuple[str, dict]]) -> Path:
    """A tar shard by hand: ``[(key, {suffix: bytes}), ...]``."""
    with tarfile.open(path, "w") as tar:
        for key, files in samples:
            for suffix, data in files.items():
                info = tarfile.TarInfo(f"{key}.{suffix}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def build(root, split="train", **options):
    from cvkit.build import build_dataset

    return build_dataset("webdataset", str(root), split=split, transform=None, options=options or None)


def pairs(ds, epoch=0, **where) -> list[tuple[str, str, int]]:
    return [(Path(r.shard).name, r.key, r.label) for r in ds.records(epoch, **where)]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A tree and its shards (train 30 images in shards of at most 8, val 12)."""
    from cvkit.commands.shards import write_shards

    root = tmp_path_factory.mktemp("shards")
    tree = make_tree(root / "tree")
    manifest = write_shards(str(tree), str(root / "out"), shard_size=8, seed=3)
    return tree, root / "out", manifest


def test_manifest_counts_checksums_and_balanced_shards(written, tmp_path):
    from cvkit.commands.shards import write_shards

    tree, out, manifest = written
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert manifest["format"] == "cvkit-shards" and manifest["version"] == 1 and manifest["seed"] == 3
    assert manifest["classes"] == list(CLASSES) and (out / "classes.txt").read_text() == "a\nb\nc\n"
    assert manifest["source"] == {"data": str(tree), "dataset": "imagefolder", "val_split": None}
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    assert [s["samples"] for s in train["shards"]] == [8, 8, 7, 7] and train["samples"] == 30
    assert [s["samples"] for s in val["shards"]] == [6, 6] and val["samples"] == 12
    for shard in train["shards"] + val["shards"]:
        data = (out / shard["name"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == shard["sha256"] and len(data) == shard["bytes"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", "classes.txt"] + [s["name"] for s in train["shards"] + val["shards"]])
    with tarfile.open(out / "train-000000.tar") as tar:  # the files as they were, classes mixed
        names = tar.getnames()
        labels = {tar.extractfile(n).read() for n in names if n.endswith(".cls")}
    assert len(names) == 16 and len(labels) > 1
    again = write_shards(str(tree), str(tmp_path / "again"), shard_size=8, seed=3)
    assert again["splits"] == manifest["splits"]  # the same seed, the same bytes


def test_out_must_be_new_or_empty(written, tmp_path):
    from cvkit.commands.shards import write_shards

    tree, out, _ = written
    with pytest.raises(UsageError, match=f"{out}: folder is not empty"):
        write_shards(str(tree), str(out))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="is a file"):
        write_shards(str(tree), str(tmp_path / "file"))
    (tmp_path / "empty").mkdir()
    write_shards(str(tree), str(tmp_path / "empty"), shard_size=100)
    assert (tmp_path / "empty" / "manifest.json").is_file()


def test_a_failing_source_leaves_nothing(tmp_path):
    from cvkit.commands.shards import write_shards

    tree = make_tree(tmp_path / "tree", train=4, val=2)
    bad = tree / "val" / "c" / "01.png"
    bad.write_bytes(b"not a picture")
    with pytest.raises(DataError) as caught:
        write_shards(str(tree), str(tmp_path / "out"), shard_size=2)
    assert str(bad) in str(caught.value) and "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError):
        write_shards(str(tree), str(tmp_path / "empty"), shard_size=2)
    assert list((tmp_path / "empty").iterdir()) == []


def test_read_back_every_key_and_label_of_the_source(written):
    from cvkit.build import build_dataset

    tree, out, _ = written
    for split in ("train", "val"):
        source = build_dataset("imagefolder", str(tree), split=split, transform=None)
        expected = {f"{i:08d}": label for i, (_, label) in enumerate(source.samples)}
        ds = build(out, split)
        assert ds.classes == list(CLASSES) and len(ds) == len(source)
        got = [(key, label) for _, key, label in pairs(ds)]
        assert sorted(got) == sorted(expected.items())
        image, label = next(iter(ds))
        assert image.size == (16, 16) and label in range(3)


def test_division_across_two_processes_of_two_workers(written):
    _, out, _ = written
    for split in ("train", "val"):
        ds = build(out, split)
        for epoch in (0, 1):
            plan = ds.plan(epoch, world=2, workers=2)
            read = [i for process in plan for worker in process for i in worker.shards]
            assert sorted(read) == list(range(len(ds.shards)))  # each shard read by one (process, worker)
            counts = []
            for rank in (0, 1):
                ds.rank, ds.world = rank, 2
                got = [p for w in (0, 1) for p in pairs(ds, epoch, rank=rank, world=2, worker=w, workers=2)]
                assert len(got) == len(ds) == sum(w.quota for w in plan[rank])
                counts.append(len(got))
            if split == "train":
                assert counts[0] == counts[1] == 15
            else:
                assert sum(counts) == 12


def test_uneven_shards_give_every_process_the_smallest_load(tmp_path):
    sizes = (5, 4, 2)  # dealt as 5 | 4+2: each process yields 5 samples
    for n, size in enumerate(sizes):
        write_tar(tmp_path / f"train-{n}.tar", [(f"s{n}-{i}", {"png": png(), "cls": b"1"}) for i in range(size)])
    (tmp_path / "classes.txt").write_text("a\nb\n")
    ds = build(tmp_path / "train-{0..2}.tar")
    assert len(ds) == 11
    ds.world = 2
    dropped = set()
    for epoch in range(6):
        per_process = []
        for rank in (0, 1):
            ds.rank = rank
            per_process.append([key for _, key, _ in pairs(ds, epoch, rank=rank, world=2)])
            assert len(ds) == 5 and len(per_process[-1]) == 5
        assert not set(per_process[0]) & set(per_process[1])
        dropped |= {f"s{n}-{i}" for n, size in enumerate(sizes) for i in range(size)} - set(sum(per_process, []))
    assert len(dropped) > 1  # the unread sample changes with the epoch
    ds.world = 4
    with pytest.raises(DataError, match="3 shards for 4 processes: write smaller shards with cvkit data shard "
                                        "--shard-size"):
        len(ds)


def test_epochs_shuffle_differently_and_reproducibly(written):
    _, out, _ = written
    ds = build(out)
    first, second = pairs(ds, 0), pairs(ds, 1)
    assert first != second and sorted(first) == sorted(second)
    assert pairs(build(out), 0) == first
    assert pairs(build(out, seed=1), 0) != first
    assert pairs(build(out, "val"), 0) == pairs(build(out, "val"), 1)  # val is read in order


def test_dataloader_workers_and_epochs(written):
    """Two DataLoader workers share a process's shards; persistent workers never see set_epoch,
    and still read the next epoch each time."""
    from torch.utils.data import DataLoader
    from torchvision.transforms.functional import pil_to_tensor

    from cvkit_plugins.shards import decode

    _, out, _ = written
    ds = build(out)
    ds.transform = pil_to_tensor
    ds.rank, ds.world = 1, 2
    loader = DataLoader(ds, batch_size=4, num_workers=2, persistent_workers=True)
    epochs = []
    for epoch in range(2):
        ds.set_epoch(epoch)
        got = [(int(x[0, 0, 0]), int(y)) for images, labels in loader for x, y in zip(images, labels)]
        streams = [[(decode(r.data, r.key).getpixel((0, 0)), r.label)
                    for r in ds.records(epoch, rank=1, world=2, worker=w, workers=2)] for w in (0, 1)]
        batches = [[s[i:i + 4] for i in range(0, len(s), 4)] for s in streams]
        expected = [v for pair in zip(*batches) for batch in pair for v in batch]  # the workers take turns
        expected += [v for b in batches for batch in b[min(map(len, batches)):] for v in batch]
        assert got == expected and len(got) == len(ds) == 15
        epochs.append(got)
    assert epochs[0] != epochs[1]


def test_brace_pattern_with_classes_txt_and_both_label_kinds(tmp_path):
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    write_tar(tmp_path / "train-0.tar", [("x0", {"jpg": png(10), "cls": b"1"}), ("x1", {"png": png(20), "txt": b"cat"})])
    write_tar(tmp_path / "train-1.tar", [("x2", {"webp": png(30), "txt": b"dog\n"})])  # PIL reads by content
    write_tar(tmp_path / "val-0.tar", [("v0", {"png": png(40), "cls": b"0"})])
    from cvkit.build import dataset_splits

    pattern, val = str(tmp_path / "train-{0..1}.tar"), str(tmp_path / "val-0.tar")
    assert dataset_splits("webdataset", pattern, options={"val": val}) == ("train", "val")
    with pytest.raises(DataError, match="--opt dataset.val=PATTERN"):
        dataset_splits("webdataset", pattern)
    ds = build(pattern, val=val)
    assert ds.classes == ["cat", "dog"] and len(ds) == 3
    assert sorted((k, label) for _, k, label in pairs(ds)) == [("x0", 1), ("x1", 0), ("x2", 1)]
    assert [(k, label) for _, k, label in pairs(build(pattern, "val", val=val))] == [("v0", 0)]


@pytest.mark.parametrize("files, message", [
    ({"png": b"", "txt": b"cow"}, "sample 'k' has no image (k.jpg, k.png, ...)"),
    ({"png": png()}, "sample 'k' has no label (.cls: the class index, or .txt: the class name)"),
    ({"png": png(), "txt": b"cow"}, "sample 'k': unknown class 'cow' in .txt"),
    ({"png": png(), "cls": b"7"}, "sample 'k': .cls '7' is not a class index (0 to 1)"),
])
def test_a_bad_sample_names_shard_and_key(tmp_path, files, message):
    files = {s: d for s, d in files.items() if d}
    shard = write_tar(tmp_path / "t.tar", [("k", files)])
    (tmp_path / "classes.txt").write_text("cat\ndog\n")
    with pytest.raises(DataError) as caught:
        list(build(shard))
    assert str(caught.value) == f"{shard}: {message}"


def test_missing_class_names_and_missing_shards(tmp_path):
    shard = write_tar(tmp_path / "t.tar", [("k", {"png": png(), "cls": b"0"})])
    with pytest.raises(DataError) as caught:
        build(shard)
    assert str(caught.value).startswith(f"{tmp_path}: no classes.txt beside the shards and no manifest.json")
    assert "\n" not in str(caught.value)
    with pytest.raises(DataError, match="no such shard"):
        build(tmp_path / "t-{0..1}.tar")
    with pytest.raises(DataError, match="no manifest.json"):
        build(tmp_path)


def test_without_webdataset_one_line_says_how_to_install(written, monkeypatch):
    _, out, _ = written
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(UsageError) as caught:
        build(out)
    assert str(caught.value) == 'the webdataset format needs the shards extra: pip install "cvkit[shards]"'


def test_val_split_for_data_without_one(tmp_path):
    from cvkit.commands.shards import write_shards

    tree = make_tree(tmp_path / "tree")
    flat = tree / "train"  # class folders, no val
    with pytest.raises(DataError, match="--val-split"):
        write_shards(str(flat), str(tmp_path / "out"))
    with pytest.raises(UsageError, match="has a validation split of its own"):
        write_shards(str(tree), str(tmp_path / "out"), val_split=0.2)
    manifest = write_shards(str(flat), str(tmp_path / "out"), val_split=0.2)
    assert manifest["splits"]["train"]["samples"] == 24 and manifest["splits"]["val"]["samples"] == 6
    keys = [{k for _, k, _ in pairs(build(tmp_path / "out", s))} for s in ("train", "val")]
    assert not keys[0] & keys[1] and len(keys[0] | keys[1]) == 30


def test_the_command_says_what_it_wrote_in_one_line(cli, tmp_path):
    tree, out = make_tree(tmp_path / "tree"), tmp_path / "out"
    r = cli("data", "shard", str(tree), str(out), "--shard-size", "8")
    assert r.code == 0 and r.err == ""
    assert r.out == f"{out}: 4 train shards (30 images), 2 val shards (12 images), 3 classes; manifest.json\n"
    r = cli("data", "shard", str(tree), str(out))
    assert r.code == 2 and r.err.strip() == (f"cvkit: error: {out}: folder is not empty; choose a new or empty "
                                             f"folder for the shards")


@pytest.mark.slow
def test_shard_then_train_from_the_command_line(tmp_path):
    tree = make_tree(tmp_path / "tree")
    shard = run_cvkit("data", "shard", str(tree), str(tmp_path / "out"), "--shard-size", "8", "--json")
    assert shard.returncode == 0, shard.stderr
    assert json.loads(shard.stdout)["splits"]["train"]["samples"] == 30
    train = run_cvkit("train", str(tmp_path / "out"), "--dataset", "webdataset", "--model", "net", "--epochs", "1",
                      "--batch-size", "8", "--json", "--out", str(tmp_path / "run"))
    assert train.returncode == 0, train.stderr
    summary = json.loads(train.stdout)
    assert summary["classes"] == list(CLASSES) and summary["epochs_run"] == 1
