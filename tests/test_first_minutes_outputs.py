"""Issue 11, the first ten minutes: what predict, eval and preview show.

- ``predict --grid`` draws the user's own pictures (``grid_input=True``: the model's input);
- ``predict`` prints one table, a row per image, whose numbers and paths are never cut, in a pipe
  and in a real 40-column terminal;
- every PNG says in its title which model and run (or data) it shows, and long titles stay inside
  the picture;
- eval on classes the checkpoint does not know names them all, apart from the ones it knows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import in_terminal, train_run, words
from cvkit_plugins.demo import make_shapes

FAST = ["--epochs", "1", "--workers", "0", "--batch-size", "8", "--lr", "0.01"]
CLASSES = ["circle", "square", "star", "triangle"]
MAGENTA, CYAN = (255, 0, 255), (0, 255, 255)
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("first") / "shapes"
    make_shapes(root, train_per_class=4, val_per_class=3, size=32, seed=11)
    return root


@pytest.fixture(scope="module")
def run(shapes, tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("runs") / "net-first", str(shapes), *FAST)


@pytest.fixture(scope="module")
def twelve(shapes, tmp_path_factory) -> Path:
    """12 pictures in a folder whose path is longer than a 40-column terminal."""
    folder = tmp_path_factory.mktemp("many") / "a-folder-with-a-rather-long-name" / "photos"
    folder.mkdir(parents=True)
    for i, p in enumerate(sorted((shapes / "val").rglob("*.png"))):
        shutil.copy(p, folder / f"picture-{i:02d}-{p.name}")
    assert len(list(folder.iterdir())) == 12
    return folder


def _json(result):
    assert result.code == 0, result.err
    return json.loads(result.out)


# --- the grid shows the user's pictures ------------------------------------------------------------


def _box(path, wanted) -> tuple[int, int, int]:
    """(count, width, height) of the pixels for which ``wanted(rgb array)`` holds in the PNG at
    ``path``; width and height count the columns and rows with at least 20 of them (a picture's
    tile, not the anti-aliased edges of the letters around it)."""
    with Image.open(path) as img:
        pixels = np.asarray(img.convert("RGB"), dtype=np.int16)
    near = wanted(pixels)
    return int(near.sum()), int((near.sum(axis=0) >= 20).sum()), int((near.sum(axis=1) >= 20).sum())


def _colour_box(path, colour, tolerance=40):
    return _box(path, lambda px: (np.abs(px - np.array(colour)) <= tolerance).all(axis=2))


@pytest.fixture
def coloured(tmp_path) -> list[Path]:
    """A wide magenta picture and a tall cyan one: colours and shapes a 32x32 grey input has not."""
    wide, tall = tmp_path / "wide.png", tmp_path / "tall.png"
    Image.new("RGB", (90, 60), MAGENTA).save(wide)
    Image.new("RGB", (40, 80), CYAN).save(tall)
    return [wide, tall]


def test_grid_draws_the_original_pictures_in_colour_and_shape(cli, run, coloured, tmp_path):
    grid = tmp_path / "grid.png"
    r = cli("predict", *map(str, coloured), "--checkpoint", str(run), "--grid", str(grid))
    assert r.code == 0, r.err
    assert f"grid: {grid}" in r.out
    count, width, height = _colour_box(grid, MAGENTA)
    assert count > 2000 and width / height == pytest.approx(90 / 60, rel=0.06), (count, width, height)
    count, width, height = _colour_box(grid, CYAN)
    assert count > 2000 and width / height == pytest.approx(40 / 80, rel=0.06), (count, width, height)


def test_grid_input_draws_what_the_model_was_given(run, coloured, tmp_path):
    from cvkit.commands.predict import predict_images

    grid = tmp_path / "input.png"
    report = predict_images(list(map(str, coloured)), checkpoint=str(run), device="cpu", grid=str(grid),
                            grid_input=True)
    assert report["grid"] == str(grid)
    assert _colour_box(grid, MAGENTA)[0] == 0 and _colour_box(grid, CYAN)[0] == 0  # net sees 1x32x32 grey
    with Image.open(grid) as img:
        assert "model input" in img.text["Title"] and "1x32x32" in img.text["Title"]
    # both tiles are square grey pictures now: magenta is grey 105 to net, cyan 179; 90x60 and 40x80 no more
    for level in (105, 179):
        count, width, height = _colour_box(grid, (level,) * 3, tolerance=2)
        assert count > 2000 and width / height == pytest.approx(1, rel=0.04), (level, count, width, height)


def test_grid_opens_again_only_the_pictures_it_draws(run, shapes, tmp_path, monkeypatch):
    import cvkit.commands.predict as predict

    opened = []
    real = predict.load_image
    monkeypatch.setattr(predict, "load_image", lambda p, **kw: opened.append(Path(p)) or real(p, **kw))
    monkeypatch.setattr(predict, "GRID_MAX", 3)
    images = sorted((shapes / "val").rglob("*.png"))[:5]
    report = predict.predict_images([str(p) for p in images], checkpoint=str(run), device="cpu", batch_size=2,
                                    grid=str(tmp_path / "g.png"))
    assert report["images"] == 5
    assert opened == images + images[:3]  # each once for the model, the 3 drawn once more, after
    with Image.open(tmp_path / "g.png") as img:
        assert "(the first 3 of 5)" in img.text["Title"]


# --- one table -----------------------------------------------------------------------------------


def _rows(out: str) -> tuple[list[str], list[str]]:
    """The header lines and row lines of the table at the start of ``out``."""
    lines = [ANSI.sub("", line).rstrip() for line in out.splitlines()]
    rule = next(i for i, line in enumerate(lines) if set(line.strip()) <= set("━╇┃"))
    end = next(i for i, line in enumerate(lines) if i > rule and "│" not in line)
    return lines[:rule], lines[rule + 1:end]


def test_one_table_in_a_pipe_a_row_per_image(cli, run, twelve):
    preds = _json(cli("predict", str(twelve), "--checkpoint", str(run), "--device", "cpu", "--precision", "fp32",
                      "--json"))
    proc = subprocess.run([sys.executable, "-m", "cvkit", "predict", str(twelve), "--checkpoint", str(run),
                           "--device", "cpu", "--precision", "fp32", "--grid", str(twelve.parent / "g.png")],
                          capture_output=True, text=True, env={**os.environ, "COLUMNS": "40"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    header, rows = _rows(proc.stdout)
    assert len(header) == 1 and words(header[0].replace("┃", " ")) == "image label probability bar also"
    assert len(rows) == 12 and "…" not in proc.stdout
    for row, p in zip(rows, preds):  # a pipe has no width: one line a row, nothing folded
        cells = [c.strip() for c in row.split("│")]
        top, *rest = p["predictions"]
        assert cells[:3] == [p["path"], top["label"], f"{top['probability']:.3f}"]
        assert cells[4] == ", ".join(f"{x['label']} {x['probability']:.3f}" for x in rest)
    tail = proc.stdout.splitlines()[-2:]
    assert tail[0].startswith("12 images, model net from ") and tail[1] == f"grid: {twelve.parent / 'g.png'}"


def test_one_table_in_a_40_column_terminal_keeps_every_number_and_path(cli, run, twelve):
    preds = _json(cli("predict", str(twelve), "--checkpoint", str(run), "--device", "cpu", "--precision", "fp32",
                      "--json"))
    code, out = in_terminal(["predict", str(twelve), "--checkpoint", str(run),
                              "--device", "cpu", "--precision", "fp32"], 40)
    assert code == 0, out
    plain = ANSI.sub("", out)
    header, rows = _rows(out)
    assert "…" not in plain and max(map(len, header + rows)) <= 40, plain
    assert len(header) == 1 and words(header[0].replace("┃", " ")) == "image label probability", plain
    assert "(not shown at 40 columns: bar, also)" in plain
    # each probability whole at the end of its row's first line, in the images' order
    shown = [m.group(1) for row in rows if (m := re.search(r"│\s+(\d\.\d{3})$", row))]
    assert shown == [f"{p['predictions'][0]['probability']:.3f}" for p in preds], plain
    # each path whole: its pieces, folded down the first column, join up again
    column = "".join(row.split("│")[0].strip() for row in rows)
    assert column == "".join(p["path"] for p in preds), plain


# --- titles --------------------------------------------------------------------------------------


def _title(path) -> str:
    with Image.open(path) as img:
        return img.text["Title"]


def test_every_png_names_its_model_and_run(cli, run, shapes, twelve, tmp_path):
    ckpt = str(run / "best.pt")
    grid = tmp_path / "grid.png"
    assert cli("predict", str(twelve), "--checkpoint", ckpt, "--grid", str(grid)).code == 0
    assert _title(grid) == f"net ({ckpt}): predictions"

    # a data tree whose every folder holds another class's pictures: some are surely misclassified
    swapped = tmp_path / "swapped"
    for real, named in zip(CLASSES, CLASSES[1:] + CLASSES[:1]):
        shutil.copytree(shapes / "val" / real, swapped / named)
    report = _json(cli("eval", str(swapped), "--checkpoint", ckpt, "--out", str(tmp_path / "ev"), "--json",
                       "--workers", "0"))
    assert report["accuracy"] < 1
    cm, top = _title(report["files"]["confusion_matrix"]), _title(report["files"]["top_losses"])
    assert cm.startswith(f"net ({ckpt}): confusion matrix on {swapped}: accuracy ")
    assert top.startswith(f"net ({ckpt}): the 12 highest losses of 12 images (") and f"misclassified) on {swapped}" in top

    preview = tmp_path / "preview.png"
    assert cli("preview", str(shapes), "--out", str(preview), "--count", "4").code == 0
    assert _title(preview).startswith(f"net: 4 training images from {shapes} ")


LONG = ("resnet18-finetune (runs/resnet18-finetune-20261127-232437-with-a-long-name/best.pt): "
        "confusion matrix on data/hymenoptera-and-other-insects (val), with more words after that")


@pytest.fixture
def drawn(monkeypatch):
    """The title texts of each figure the reports draw, with whether each lies inside its figure."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from cvkit import reports

    seen = []
    real = reports._save

    def save(fig, path, *args, **kwargs):
        FigureCanvasAgg(fig).draw()
        box = fig.bbox
        renderer = fig.canvas.get_renderer()
        texts = [t for t in fig.findobj(lambda a: hasattr(a, "get_text") and hasattr(a, "get_window_extent"))
                 if "finetune" in str(t.get_text())]
        for t in texts:
            e = t.get_window_extent(renderer)
            seen.append((t.get_text(), e.x0 >= box.x0 - 1 and e.x1 <= box.x1 + 1 and e.y1 <= box.y1 + 1))
        return real(fig, path, *args, **kwargs)

    monkeypatch.setattr(reports, "_save", save)
    return seen


@pytest.mark.parametrize("kind", ["curves", "confusion", "grid-1", "grid-9"])
def test_a_long_title_is_wrapped_inside_the_picture_and_stored_whole(tmp_path, drawn, kind):
    from cvkit import reports

    path = tmp_path / f"{kind}.png"
    if kind == "curves":
        reports.plot_curves([{"epoch": 1, "train_loss": 1.0, "train_accuracy": 0.5, "val_loss": 1.1,
                              "val_accuracy": 0.4}], path, title=LONG)
    elif kind == "confusion":
        reports.plot_confusion_matrix([[3, 1], [0, 4]], ["ants", "bees"], path, title=LONG)
    else:
        n = int(kind.split("-")[1])
        reports.image_grid([Image.new("RGB", (40, 30), MAGENTA)] * n, ["ant"] * n, path, title=LONG)
    assert len(drawn) == 1, drawn
    text, inside = drawn[0]
    assert inside, f"the title runs off the picture: {text!r}"
    assert "\n" in text and "".join(text.split()) == "".join(LONG.split())  # wrapped, every letter kept
    assert _title(path).startswith(LONG)


# --- eval on classes the checkpoint does not know ------------------------------------------------


def test_unknown_classes_are_all_named_apart_from_the_known_ones(cli, run, shapes, tmp_path):
    data = tmp_path / "other"
    shutil.copytree(shapes / "val" / "circle", data / "circle")
    shutil.copytree(shapes / "val" / "star", data / "cat")
    shutil.copytree(shapes / "val" / "square", data / "dog")
    r = cli("eval", str(data), "--checkpoint", str(run))
    assert r.code == 3 and "Traceback" not in r.err
    assert r.err.strip().count("\n") == 0, r.err
    assert words(r.err) == (f"cvkit: error: {data}: classes 'cat', 'dog' are not ones the checkpoint knows "
                            "(it knows: circle, square, star, triangle)")


def test_unknown_classes_message_counts_what_it_does_not_name():
    from cvkit.commands.evaluate import unknown_classes_message

    assert unknown_classes_message(["cat"], CLASSES, "d") == (
        "d: class 'cat' is not one the checkpoint knows (it knows: circle, square, star, triangle)")
    many = unknown_classes_message([f"u{i}" for i in range(8)], [f"k{i}" for i in range(20)], "d")
    assert many == ("d: classes 'u0', 'u1', 'u2', 'u3', 'u4' and 3 more unknown are not ones the checkpoint "
                    "knows (it knows 20: k0, k1, k2, k3, k4, k5, k6, k7, k8, k9, k10, k11 and 8 others)")
