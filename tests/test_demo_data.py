"""The built-in ``shapes`` demo data: deterministic, reused when complete, never drawn over user files."""

import json

import pytest

from cvkit.errors import UsageError
from cvkit_plugins.demo import MARKER, SHAPES, make_shapes

SMALL = {"train_per_class": 3, "val_per_class": 2, "size": 32}


def tree_bytes(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_same_seed_same_bytes_other_seed_other_pictures(tmp_path):
    make_shapes(tmp_path / "a", seed=0, **SMALL)
    make_shapes(tmp_path / "b", seed=0, **SMALL)
    make_shapes(tmp_path / "c", seed=1, **SMALL)
    a, b, c = (tree_bytes(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a)


def test_counts_classes_and_picture_size(tmp_path):
    from PIL import Image

    summary = make_shapes(tmp_path / "shapes", seed=3, **SMALL)
    assert summary["classes"] == list(SHAPES)
    assert summary["counts"] == {"train": 12, "val": 8}
    assert summary["seed"] == 3 and summary["created"] is True
    for split, per_class in (("train", 3), ("val", 2)):
        folders = sorted(p.name for p in (tmp_path / "shapes" / split).iterdir())
        assert folders == sorted(SHAPES)
        for label in SHAPES:
            files = sorted((tmp_path / "shapes" / split / label).iterdir())
            assert [f.name for f in files] == [f"{label}_{i:04d}.png" for i in range(per_class)]
    with Image.open(tmp_path / "shapes" / "train" / "star" / "star_0000.png") as img:
        assert img.size == (32, 32) and img.mode == "RGB"
    marker = json.loads((tmp_path / "shapes" / MARKER).read_text())
    assert marker["complete"] is True and marker["params"]["seed"] == 3


def test_complete_tree_is_reused_not_redrawn(tmp_path):
    root = tmp_path / "shapes"
    make_shapes(root, **SMALL)
    picture = root / "val" / "circle" / "circle_0001.png"
    before = picture.stat().st_mtime_ns
    summary = make_shapes(root, **SMALL)
    assert summary["created"] is False
    assert picture.stat().st_mtime_ns == before


def test_other_parameters_or_half_written_tree_is_redrawn(tmp_path):
    root = tmp_path / "shapes"
    make_shapes(root, **SMALL)
    summary = make_shapes(root, **{**SMALL, "train_per_class": 2})
    assert summary["created"] is True
    assert len(list((root / "train").rglob("*.png"))) == 8

    # a run that died half-way: the marker still says incomplete and pictures are missing
    marker = json.loads((root / MARKER).read_text())
    (root / MARKER).write_text(json.dumps({**marker, "complete": False}))
    (root / "val" / "square" / "square_0000.png").unlink()
    assert make_shapes(root, **{**SMALL, "train_per_class": 2})["created"] is True
    assert (root / "val" / "square" / "square_0000.png").is_file()


def test_refuses_foreign_non_empty_folder(tmp_path):
    root = tmp_path / "photos"
    (root / "train").mkdir(parents=True)
    (root / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="photos") as caught:
        make_shapes(root, **SMALL)
    assert caught.value.exit_code == 2
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt", "train"]
    assert not any((root / "train").iterdir())


def test_refuses_a_file_and_bad_numbers(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UsageError, match="file"):
        make_shapes(tmp_path / "file", **SMALL)
    with pytest.raises(UsageError, match="train_per_class"):
        make_shapes(tmp_path / "new", train_per_class="many")
    with pytest.raises(UsageError, match="classes"):
        make_shapes(tmp_path / "new", classes=("hexagon",))


def test_shapes_dataset_is_listed_by_the_cli(cli):
    r = cli("list", "datasets", "--json")
    assert r.code == 0, r.err
    rows = {row["name"]: row for row in json.loads(r.out)["datasets"]}
    assert rows["shapes"]["plugin"] == "demo"


def test_shapes_dataset_builds_through_the_registry(tmp_path):
    from cvkit.build import build_dataset

    root = str(tmp_path / "shapes")
    options = {"train_per_class": 2, "val_per_class": 1, "seed": 5}
    train = build_dataset("shapes", root, split="train", transform=None, options=options)
    val = build_dataset("shapes", root, split="val", transform=None, options=options)
    assert train.classes == sorted(SHAPES)
    assert (len(train), len(val)) == (8, 4)
    image, label = val[0]
    assert image.size == (64, 64) and train.classes[label] == "circle"
