"""Issue 4, data cases: hidden entries, empty classes, class mismatch, bad images, `cvkit data check`."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageFile

from conftest import words
from cvkit_plugins.demo import make_shapes

FAST = ["--epochs", "1", "--workers", "0", "--batch-size", "8", "--lr", "0.01"]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("base") / "shapes"
    make_shapes(root, train_per_class=4, val_per_class=2, size=32, seed=3)
    return root


@pytest.fixture
def data(base, tmp_path) -> Path:
    """A fresh copy of the tiny tree that a test may damage."""
    root = tmp_path / "data"
    shutil.copytree(base, root)
    return root


def _one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _truncated_jpeg(path: Path) -> None:
    Image.new("RGB", (64, 64), (200, 30, 30)).save(path, quality=90)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def test_hidden_folders_and_files_are_never_classes(cli, data, tmp_path):
    for split in ("train", "val"):
        (data / split / ".ipynb_checkpoints").mkdir()
        (data / split / ".ipynb_checkpoints" / "x.png").write_bytes((data / "train" / "circle" / "circle_0000.png").read_bytes())
        (data / split / ".git").mkdir()
        (data / split / ".DS_Store").write_bytes(b"\0\1junk")
        (data / split / "circle" / ".DS_Store").write_bytes(b"\0\1junk")
        (data / split / "circle" / "._circle_0000.png").write_bytes(b"AppleDouble junk")
    r = cli("train", str(data), *FAST, "--out", str(tmp_path / "r"), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["classes"] == ["circle", "square", "star", "triangle"]
    report = json.loads(cli("data", "check", str(data), "--json").out)
    assert list(report["splits"]["train"]["classes"]) == ["circle", "square", "star", "triangle"]
    assert report["splits"]["train"]["hidden_ignored"] >= 4 and not report["unreadable"]


def test_empty_class_folder_is_an_error_naming_it_unless_allowed(cli, data, tmp_path):
    for split in ("train", "val"):
        (data / split / "hexagon").mkdir()
    r = cli("train", str(data), *FAST, "--out", str(tmp_path / "r"))
    assert r.code == 3
    line = _one_line(r.err)
    assert str(data / "train" / "hexagon") in line and "allow_empty" in line
    r = cli("train", str(data), *FAST, "--opt", "dataset.allow_empty=true", "--out", str(tmp_path / "r2"), "--json")
    assert r.code == 0, r.err
    assert "hexagon" in json.loads(r.out)["classes"]


def test_a_val_class_that_train_lacks_is_an_error(cli, data, tmp_path):
    shutil.move(str(data / "val" / "star"), str(data / "val" / "pentagon"))
    r = cli("train", str(data), *FAST, "--out", str(tmp_path / "r"))
    assert r.code == 3
    line = _one_line(r.err)
    assert "val has a class the training split lacks (pentagon)" in line
    assert not (tmp_path / "r" / "last.pt").exists()


def test_a_train_class_without_val_images_trains_with_val_labels_matched_by_name(cli, data, tmp_path):
    # val/ lacks "circle": ImageFolder numbers val's classes from 0 without it; cvkit matches names
    shutil.rmtree(data / "val" / "circle")
    r = cli("train", str(data), *FAST, "--out", str(tmp_path / "r"), "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["classes"][0] == "circle"
    assert any("circle" in w and "no validation images" in w for w in summary["warnings"])
    from cvkit.data import load_splits

    splits = load_splits(str(data), dataset="imagefolder", train_transform=None, eval_transform=None)
    names = [splits.classes[t] for _, t in splits.val.samples]
    assert names and "circle" not in names
    assert all(os.path.basename(os.path.dirname(p)) == n for (p, _), n in zip(splits.val.samples, names))


@pytest.fixture
def start_method():
    """Set the start method of DataLoader workers for one test (the default is the platform's:
    fork on Linux up to Python 3.13, forkserver from 3.14, spawn on macOS and Windows)."""
    import multiprocessing

    before = multiprocessing.get_start_method(allow_none=True)

    def use(method: str | None) -> None:
        if method:
            multiprocessing.set_start_method(method, force=True)

    yield use
    multiprocessing.set_start_method(before, force=True)


@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "bomb"])
@pytest.mark.parametrize("workers, method", [("0", None), ("1", "fork"), ("1", "spawn")])
def test_bad_image_stops_training_naming_the_file(cli, data, tmp_path, start_method, kind, workers, method):
    bad = data / "train" / "square" / f"bad-{kind}.jpg"
    if kind == "truncated":
        _truncated_jpeg(bad)
    elif kind == "empty":
        bad.write_bytes(b"")
    elif kind == "text":
        bad.write_text("this is not a picture")
    else:  # over twice Pillow's own decompression-bomb limit: 182 million pixels in a 22 kB PNG
        Image.new("1", (13500, 13500)).save(bad, format="PNG")
        assert Image.MAX_IMAGE_PIXELS and 13500 * 13500 > 2 * Image.MAX_IMAGE_PIXELS
    start_method(method)
    args = [a if a != "0" else workers for a in FAST]
    r = cli("train", str(data), *args, "--out", str(tmp_path / "r"))
    assert r.code == 3, r.err
    line = _one_line(r.err)
    assert str(bad) in line
    if kind == "bomb":
        assert "decompression bomb" in line
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_on_bad_image_skip_continues_and_lists_the_files(cli, data, tmp_path):
    truncated = data / "train" / "star" / "broken.jpg"
    _truncated_jpeg(truncated)
    empty = data / "val" / "circle" / "empty.png"
    empty.write_bytes(b"")
    r = cli("train", str(data), *FAST, "--on-bad-image", "skip", "--out", str(tmp_path / "r"), "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert sorted(item["path"] for item in summary["skipped_images"]) == sorted([str(truncated), str(empty)])
    human = cli("train", str(data), *FAST, "--on-bad-image", "skip", "--out", str(tmp_path / "r2"))
    assert "skipped 2 unreadable images" in words(human.out) and "broken.jpg" in human.out
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def _tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
            h.update(str(p.stat().st_mtime_ns).encode())
    return h.hexdigest()


def test_data_check_reports_everything_and_changes_nothing(cli, data):
    # imbalance, a class missing from val, an unreadable file and a val image copied from train
    for i in range(20):
        shutil.copy(data / "train" / "circle" / "circle_0000.png", data / "train" / "circle" / f"extra_{i}.png")
    shutil.rmtree(data / "val" / "triangle")
    _truncated_jpeg(data / "train" / "square" / "broken.jpg")
    shutil.copy(data / "train" / "star" / "star_0001.png", data / "val" / "star" / "leaked.png")
    (data / "train" / "star" / "notes.txt").write_text("not an image")
    before = _tree_digest(data)
    r = cli("data", "check", str(data), "--json")
    assert r.code == 3
    report = json.loads(r.out)
    assert report["splits"]["train"]["classes"] == {"circle": 24, "square": 5, "star": 4, "triangle": 4}
    assert report["splits"]["val"]["classes"] == {"circle": 2, "square": 2, "star": 3}
    assert report["splits"]["train"]["other_files"] == 1
    assert any("no validation images of triangle" in w for w in report["warnings"])
    assert [u["path"] for u in report["unreadable"]] == [str(data / "train" / "square" / "broken.jpg")]
    assert report["duplicates"] == [{"val": str(data / "val" / "star" / "leaked.png"),
                                     "train": str(data / "train" / "star" / "star_0001.png")}]
    assert any("imbalanced" in w and "circle has 24" in w for w in report["warnings"])
    human = cli("data", "check", str(data))
    assert human.code == 3 and "broken.jpg" in human.out and "leaked.png" in human.out
    assert _tree_digest(data) == before  # it never modifies the data


def test_data_check_quick_skips_decoding_and_passes_a_clean_tree(cli, data):
    r = cli("data", "check", str(data), "--quick", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert "unreadable" not in report and not report["errors"]
    assert report["splits"]["train"]["images"] == 16
    r = cli("data", "check", str(data))
    assert r.code == 0 and "no problems found" in r.out


def test_flat_tree_is_checked_as_one_split(cli, data, tmp_path):
    flat = tmp_path / "flat"
    shutil.copytree(data / "train", flat)
    report = json.loads(cli("data", "check", str(flat), "--json").out)
    assert report["layout"] == "split" and report["splits"]["all"]["images"] == 16


def _check_unreadable_file(cli, data, path: Path) -> None:
    r = cli("data", "check", str(data), "--json")
    assert r.code == 3 and "Traceback" not in r.err, r.err
    report = json.loads(r.out)
    assert [u["path"] for u in report["unreadable"]] == [str(path)]
    assert "ermission denied" in report["unreadable"][0]["error"]


def test_unreadable_folder_entries_do_not_crash_the_check(cli, data):
    if os.geteuid() == 0:
        pytest.skip("root reads every file regardless of permissions; the stand-in below covers it")
    p = data / "train" / "circle" / "circle_0000.png"
    p.chmod(0)
    _check_unreadable_file(cli, data, p)


def test_a_file_the_user_may_not_read_is_listed_not_a_crash(cli, data, monkeypatch):
    """The case above for every user, root included: opening that one file is refused."""
    import builtins

    p = data / "train" / "circle" / "circle_0000.png"
    real_open = builtins.open

    def guarded_open(file, *args, **kwargs):
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) == str(p):
            raise PermissionError(13, "Permission denied", str(p))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded_open)
    _check_unreadable_file(cli, data, p)
