"""Issue 14: the built-in ``csv`` dataset format (a CSV of image paths, labels and an optional split)."""

from __future__ import annotations

import functools
import json
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from cvkit.build import build_dataset
from cvkit.errors import DataError, UsageError
from cvkit.images import load_image
from cvkit.plugins import get_plugins

COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "owl": (40, 40, 200)}


def image(path: Path, label: str = "cat", size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size // 2 + 4), COLOURS.get(label, (90, 90, 90))).save(path)
    return path


def write_csv(path: Path, header: str, *rows: str, bom: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(("\ufeff" if bom else "") + "\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def build(root, split=None, **options):
    return build_dataset("csv", str(root), split=split, transform=None, options=options)


def splits_of(root, **options) -> tuple:
    return get_plugins()["datasets"].get("csv").meta["splits"](str(root), **options)


def data_error(root, split=None, **options) -> str:
    with pytest.raises(DataError) as info:
        build(root, split, **options)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def pets(tmp_path) -> Path:
    """``pets/labels.csv``: 3 cats, 2 dogs in subfolders; split column with train, val and test rows."""
    root = tmp_path / "pets"
    rows = []
    for label, n, splits in (("cat", 3, "train valid test"), ("dog", 2, "train validation")):
        for i, split in enumerate(splits.split()):
            image(root / "imgs" / label / f"{i}.png", label, 8 + 8 * i)
            rows.append(f"imgs/{label}/{i}.png,{label},{split}")
    write_csv(root / "labels.csv", "filename,label,split", *rows)
    return root


def test_subfolders_classes_targets_samples(pets):
    ds = build(pets / "labels.csv", "train")
    assert ds.classes == ["cat", "dog"]
    assert ds.samples == [(str(pets / "imgs/cat/0.png"), 0), (str(pets / "imgs/dog/0.png"), 1)]
    assert ds.imgs == ds.samples and ds.targets == [0, 1] and len(ds) == 2
    picture, label = ds[1]
    assert label == 1 and picture.size == (8, 8) and picture.getpixel((0, 0)) == COLOURS["dog"]
    assert ds.loader is load_image
    sized = build_dataset("csv", str(pets), split="train", transform=lambda im: im.size, min_side=64)
    assert sized[0] == ((8, 8), 0)
    assert isinstance(sized.loader, functools.partial) and sized.loader.keywords == {"min_side": 64}


def test_split_column_and_splits(pets):
    assert splits_of(pets) == ("train", "val", "test")
    val, test = build(pets, "val"), build(pets, "test")
    assert val.classes == test.classes == ["cat", "dog"]  # every row's labels, whatever the split
    assert [p.rsplit("/", 2)[-2:] for p, _ in val.samples] == [["cat", "1.png"], ["dog", "1.png"]]
    assert test.samples == [(str(pets / "imgs/cat/2.png"), 0)]
    assert len(build(pets, None)) == 4  # every row but test
    assert splits_of(pets, split_column="none") == () and len(build(pets, None, split_column="none")) == 5


def test_splits_without_split_column_or_val(tmp_path):
    image(tmp_path / "a.png")
    image(tmp_path / "b.png", "dog")
    plain = write_csv(tmp_path / "plain.csv", "path,label", "a.png,cat", "b.png,dog")
    assert splits_of(plain) == ()
    assert [t for _, t in build(plain, None).samples] == [0, 1]
    assert "no val rows (no split column: every row is train)" in data_error(plain, "val")
    no_val = write_csv(tmp_path / "noval.csv", "filename,label,split", "a.png,cat,train", "b.png,dog,test")
    assert splits_of(no_val) == ("train", "test")
    assert build(no_val, "train").samples == [(str(tmp_path / "a.png"), 0)]
    entry = get_plugins()["datasets"].get("csv")
    assert entry.help.startswith("CSV of image paths and labels: DATA is a .csv file or a folder with labels.csv")


def test_absolute_paths_quoting_and_bom(tmp_path):
    elsewhere = image(tmp_path / "far away" / "x, y.png", "owl")
    near = image(tmp_path / "data" / "near.png", "cat")
    csv = write_csv(tmp_path / "data" / "list.csv", "filename,label", f'"{elsewhere}",owl', "near.png,cat", bom=True)
    ds = build(csv)
    assert ds.samples == [(str(elsewhere), 1), (str(near), 0)] and ds.classes == ["cat", "owl"]
    assert ds[0][0].getpixel((0, 0)) == COLOURS["owl"]


def test_folder_holding_a_csv(tmp_path, pets):
    write_csv(pets / "other.csv", "filename,label", "imgs/cat/0.png,cat")
    assert len(build(pets, "train")) == 2  # labels.csv wins over other .csv files
    assert len(build(pets, None, file="other.csv")) == 1
    (pets / "labels.csv").unlink()
    assert build(pets).samples == [(str(pets / "imgs/cat/0.png"), 0)]  # the folder's only .csv
    with pytest.raises(UsageError, match="--opt dataset.file=other.csv: DATA .* is a file"):
        build(pets / "other.csv", file="other.csv")


def test_several_none_or_missing(tmp_path):
    for name in ("b.csv", "a.csv"):
        write_csv(tmp_path / name, "filename,label", "x.png,cat")
    assert data_error(tmp_path) == (f"{tmp_path}: several CSV files (a.csv, b.csv) and no labels.csv; "
                                    f"name the file as DATA or pick one with --opt dataset.file=NAME")
    assert data_error(tmp_path / "imgs").startswith(f"{tmp_path / 'imgs'}: no such file or folder")
    (tmp_path / "empty").mkdir()
    assert "no .csv file" in data_error(tmp_path / "empty")
    with pytest.raises(DataError, match="several CSV files"):
        splits_of(tmp_path)


def test_custom_columns_from_options(tmp_path):
    image(tmp_path / "p" / "1.png")
    image(tmp_path / "p" / "2.png", "dog")
    csv = write_csv(tmp_path / "t.csv", "id,img,kind,fold", "1,p/1.png,cat,train", "2,p/2.png,dog,val")
    options = {"image_column": "img", "label_column": "kind", "split_column": "fold"}
    assert splits_of(csv, **options) == ("train", "val")
    assert build(csv, "val", **options).samples == [(str(tmp_path / "p/2.png"), 1)]
    assert data_error(csv) == (f"{csv}: no 'filename' or 'path' column (columns: id, img, kind, fold; the first "
                               f"row must be a header); name the image column with --opt dataset.image_column=NAME")
    assert data_error(csv, image_column="img") == (
        f"{csv}: no column 'label' (columns: id, img, kind, fold); name it with --opt dataset.label_column=NAME")
    assert "--opt dataset.split_column=NAME" in data_error(csv, **{**options, "split_column": "fold2"})
    with pytest.raises(UsageError, match="dataset 'csv' has no option 'labels'"):
        build(csv, labels="kind")


def test_row_problems_first_one_counted(tmp_path):
    image(tmp_path / "ok.png")
    csv = write_csv(tmp_path / "labels.csv", "filename,label", "ok.png,cat", "imgs/x.png,cat",
                    ",dog", "ok2.png,", "ok.png,cat")
    assert data_error(tmp_path) == f"{csv} row 3: imgs/x.png: no such file (and 3 more rows with problems)"
    write_csv(csv, "filename,label", "ok.png,cat", ",dog")
    assert data_error(csv) == f"{csv} row 3: empty 'filename' cell"
    write_csv(csv, "filename,label", "ok.png,cat", "ok.png,")
    assert data_error(csv) == f"{csv} row 3: ok.png: empty label (column 'label')"
    write_csv(csv, "filename,label", "ok.png,cat", "", "./ok.png,cat")  # a blank line still counts
    assert data_error(csv) == (f"{csv} row 4: ./ok.png is listed twice with label 'cat' (rows 2 and 4): "
                               f"remove the duplicate row")


def test_multi_label_refused(tmp_path):
    image(tmp_path / "a.png")
    csv = write_csv(tmp_path / "labels.csv", "filename,label", 'a.png,"cat,dog"')
    multi = f"{csv}: multi-label rows are not supported (cvkit trains single-label classifiers)"
    assert data_error(csv) == f"{multi}: row 2 has label 'cat,dog'"
    for label in ("cat;dog", "cat|dog"):
        write_csv(csv, "filename,label", f"a.png,{label}")
        assert data_error(csv) == f"{multi}: row 2 has label {label!r}"
    write_csv(csv, "filename,label", "a.png,cat", "a.png,dog", "b.png,dog")
    assert data_error(csv) == (f"{multi}: row 3 lists a.png with label 'dog', row 2 with 'cat' "
                               f"(and 1 more row with problems)")


def test_bad_split_value(tmp_path):
    image(tmp_path / "a.png")
    image(tmp_path / "b.png")
    csv = write_csv(tmp_path / "labels.csv", "filename,label,split", "a.png,cat,train", "b.png,cat,training")
    message = f"{csv} row 3: split 'training' is not train, val (valid, validation) or test"
    assert data_error(csv, "train") == message
    with pytest.raises(DataError) as info:
        splits_of(csv)
    assert str(info.value) == message


def test_no_data_rows(tmp_path):
    csv = write_csv(tmp_path / "labels.csv", "filename,label")
    assert data_error(csv) == f"{csv}: no data rows, only the header (filename, label)"
    csv.write_text("")
    assert "empty file (the first row must be a header" in data_error(csv)
    with pytest.raises(DataError, match="no data rows"):
        splits_of(write_csv(csv, "filename,label,split"))


def test_loader_and_samples_replaced(pets):
    """cvkit's decode cache swaps ``loader``; ``--on-bad-image skip`` rewrites samples and targets."""
    ds = build(pets, "train")
    asked = []
    ds.loader = lambda path: asked.append(path) or Image.new("L", (5, 5), 7)
    picture, label = ds[0]
    assert asked == [ds.samples[0][0]] and picture.size == (5, 5) and label == 0
    ds.samples = ds.imgs = [ds.samples[1]]
    ds.targets = [1]
    assert len(ds) == 1 and ds[0][1] == 1 and asked[-1] == str(pets / "imgs/dog/0.png")


def test_unreadable_image_names_row(pets):
    (pets / "imgs/dog/0.png").write_bytes(b"not a png")
    ds = build(pets, "train")  # found only when loaded
    with pytest.raises(DataError) as info:
        ds[1]
    assert str(info.value).startswith(f"{pets / 'labels.csv'} row 5: {pets / 'imgs/dog/0.png'}: not a readable image")
    copy = pickle.loads(pickle.dumps(ds))  # DataLoader workers under spawn pickle the dataset
    assert copy.samples == ds.samples and copy[0][1] == 0


def test_module_imports_no_torch():
    code = "import sys, cvkit_plugins.csv_labels; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.slow
def test_train_from_csv_end_to_end(cli, tmp_path):
    root = tmp_path / "data"
    rows = []
    for label in ("cat", "dog"):
        for i in range(6):
            image(root / label / f"{i}.png", label, 16 + 2 * i)
            rows.append(f"{label}/{i}.png,{label},{'val' if i >= 4 else 'train'}")
    (root / "broken.png").write_bytes(b"a test row: never read by train")
    csv = write_csv(root / "DATA.csv", "filename,label,split", *rows, "broken.png,cat,test")
    r = cli("train", str(csv), "--dataset", "csv", "--model", "net", "--epochs", "1", "--batch-size", "8",
            "--workers", "0", "--json", "--out", str(tmp_path / "run"))
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["epochs_run"] == 1 and summary["classes"] == ["cat", "dog"]
    assert Path(summary["best_checkpoint"]).is_file()
