"""The dataset hook free of ImageFolder: a format decides its layout; cvkit splits only data
without a validation split; val classes are matched to train's by name.

The flat format documented in docs/plugins.md is installed from the docs' own code and trained
on, with no folder made for it."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from conftest import REPO
from cvkit_plugins.demo import make_shapes

FAST = ["--model", "net", "--epochs", "1", "--workers", "0", "--batch-size", "8", "--lr", "0.01"]


def _documented_flat_format() -> str:
    doc = (REPO / "docs" / "plugins.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    found = [b for b in blocks if "cvkit-flatnames" in b]
    assert len(found) == 1, "docs/plugins.md: the flat-format example is missing"
    return found[0]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("shapes") / "tree"
    make_shapes(root, train_per_class=8, val_per_class=2, size=32, seed=5)
    return root


@pytest.fixture
def flat(shapes, tmp_path) -> Path:
    """One folder of CLASS_NNNN.png files: the shapes' training pictures, flattened."""
    root = tmp_path / "flat"
    root.mkdir()
    for path in sorted((shapes / "train").glob("*/*.png")):
        shutil.copy(path, root / path.name)
    return root


def test_the_documented_flat_format_trains_without_any_folder_made_for_it(cli, fake_dist, flat, tmp_path):
    fake_dist("cvkit-flatnames", {"cvkit_flatnames": _documented_flat_format()}, {"flatnames": "cvkit_flatnames"})
    before = sorted(p.name for p in flat.iterdir())
    r = cli("train", str(flat), "--dataset", "flat-names", "--val-split", "0.25", *FAST,
            "--out", str(tmp_path / "run"), "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["classes"] == ["circle", "square", "star", "triangle"]
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["val_files"]) == 8 and all("/" not in f for f in split["val_files"])  # 2 of each 8
    assert sorted(p.name for p in flat.iterdir()) == before  # no train/ or val/ made, nothing moved

    check = cli("data", "check", str(flat), "--dataset", "flat-names", "--json")
    assert check.code == 0, check.err
    report = json.loads(check.out)
    assert report["splits"]["all"]["classes"] == {"circle": 8, "square": 8, "star": 8, "triangle": 8}
    assert report["unreadable"] == [] and "--val-split" in report["notes"][0]

    ev = cli("eval", str(flat), "-c", str(tmp_path / "run"), "--json")
    assert ev.code == 0, ev.err
    assert json.loads(ev.out)["images"] == 32  # all of DATA: the format lists no splits

    no_split = cli("train", str(flat), "--dataset", "flat-names", *FAST, "--out", str(tmp_path / "r2"))
    assert no_split.code == 3 and "no validation split" in no_split.err and "--val-split" in no_split.err


def test_the_factory_gets_split_none_and_the_min_side_hint(fake_dist, flat):
    fake_dist("cvkit-spy", {"cvkit_spy": '''
import cvkit

CALLS = []


def build(root, *, split, transform, min_side=None):
    from cvkit_flatnames_spy_target import build_flat_names
    CALLS.append((split, min_side))
    return build_flat_names(root, split=split, transform=transform, min_side=min_side)


@cvkit.hookimpl
def register_datasets(register):
    register("spy", build, splits=())
''', "cvkit_flatnames_spy_target": _documented_flat_format()}, {"spy": "cvkit_spy"})
    import cvkit_spy

    from cvkit.build import decode_min_side, model_spec
    from cvkit.data import load_splits

    spec = model_spec("net")
    splits = load_splits(str(flat), dataset="spy", train_transform=None, eval_transform=None, val_split=0.5,
                         seed=1, min_side=decode_min_side(spec))
    calls = cvkit_spy.CALLS
    assert calls == [(None, decode_min_side(spec))] * 2  # all the data, with the train and eval transform
    assert len(splits.train) == len(splits.val) == 16 and splits.layout["layout"] == "split"


def test_a_validation_split_of_its_own_is_not_split_again(cli, tmp_path, shapes):
    r = cli("train", str(shapes), "--val-split", "0.2", *FAST, "--out", str(tmp_path / "r"))
    assert r.code == 2 and "has a validation split of its own" in r.err and "--val-split" in r.err


LISTS = """
import cvkit


class Listed:
    \"\"\"No samples, no targets: only classes and (x, y) pairs.\"\"\"

    def __init__(self, classes, labels):
        self.classes, self.labels = classes, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return f"item{i}", self.labels[i]


def build(root, *, split, transform):
    if split == "train":
        return Listed(["ant", "bee", "cat"], [0, 1, 2, 0])
    return Listed(["cat", "ant"], [0, 1, 0])  # val: two classes, in another order


@cvkit.hookimpl
def register_datasets(register):
    register("lists", build, splits=("train", "val"))
"""


def test_val_labels_are_matched_to_train_classes_by_name(fake_dist, tmp_path):
    from cvkit.data import load_splits

    fake_dist("cvkit-lists", {"cvkit_lists": LISTS}, {"lists": "cvkit_lists"})
    splits = load_splits(str(tmp_path), dataset="lists", train_transform=None, eval_transform=None)
    assert splits.classes == ["ant", "bee", "cat"] and splits.val.classes == splits.classes
    assert [splits.val[i][1] for i in range(3)] == [2, 0, 2]  # cat, ant, cat in train's numbering


def test_eval_predict_preview_and_check_read_a_csv(cli, tmp_path, shapes):
    """Every command that reads data takes --dataset: here a CSV with a split column."""
    rows = ["filename,label,split"]
    for split in ("train", "val"):
        rows += [f"{p.relative_to(shapes)},{p.parent.name},{split}" for p in sorted((shapes / split).glob("*/*.png"))]
    (shapes / "labels.csv").write_text("\n".join(rows) + "\n")
    csv_file = shapes / "labels.csv"
    try:
        r = cli("train", str(csv_file), "--dataset", "csv", *FAST, "--out", str(tmp_path / "run"), "--json")
        assert r.code == 0, r.err
        ev = cli("eval", "-c", str(tmp_path / "run"), "--json")  # the run's own val rows, read as csv again
        assert ev.code == 0, ev.err
        assert json.loads(ev.out)["images"] == 8 and "validation split" in json.loads(ev.out)["data"]
        pr = cli("predict", str(csv_file), "--dataset", "csv", "-c", str(tmp_path / "run"), "--json")
        assert pr.code == 0, pr.err
        paths = [row["path"] for row in json.loads(pr.out)]
        assert len(paths) == 40 and paths[0] == str(shapes / "train" / "circle" / "circle_0000.png")
        pv = cli("preview", str(csv_file), "--dataset", "csv", "--out", str(tmp_path / "p.png"), "--count", "4")
        assert pv.code == 0 and (tmp_path / "p.png").stat().st_size > 0, pv.err
        ck = cli("data", "check", str(csv_file), "--dataset", "csv", "--json")
        assert ck.code == 0, ck.err
        assert json.loads(ck.out)["splits"]["val"]["classes"] == dict.fromkeys(["circle", "square", "star", "triangle"], 2)
    finally:
        csv_file.unlink()
