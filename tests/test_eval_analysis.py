"""Issue 18: `cvkit eval`'s top losses and most confused classes (fastai's plot_top_losses and
most_confused).

- each image's loss is the run's own loss of that image alone: cross-entropy with the run's label
  smoothing, per image, computed here independently; with --tta, of the mean probabilities;
- ``top_losses`` (JSON) holds the --top images of the highest loss, highest first;
- ``most_confused`` is the confusion matrix's off-diagonal cells, most first;
- ``--top N --out DIR`` draws those N images in top_losses.png; ``--top -1`` is one line;
- the most-confused table keeps class names whole in a 40-column terminal.
"""

from __future__ import annotations

import io
import json
import re
import shutil

import pytest
from PIL import Image

from conftest import train_run, words
from cvkit_plugins.demo import make_shapes

CLASSES = ["circle", "square", "star", "triangle"]
SMOOTHING = 0.2
FP32 = ("--device", "cpu", "--precision", "fp32", "--workers", "0")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("analysis") / "shapes"
    make_shapes(root, train_per_class=4, val_per_class=3, size=32, seed=11)
    return root


@pytest.fixture(scope="module")
def run(shapes, tmp_path_factory):
    """A net run trained with label smoothing, made confident: one epoch leaves logits near 0 and
    every loss near log(4); its last layer is scaled so that the losses differ widely."""
    import torch

    from cvkit.checkpoint import save_checkpoint

    out = train_run(tmp_path_factory.mktemp("runs") / "net", str(shapes), "--model", "net", "--epochs", "1",
                    "--batch-size", "8", "--workers", "0", "--seed", "1", "--opt", f"loss.label_smoothing={SMOOTHING}")
    ckpt = torch.load(out / "best.pt", weights_only=False)
    assert ckpt["config"]["options"]["loss"]["label_smoothing"] == SMOOTHING
    for key in ("fc3.weight", "fc3.bias"):
        ckpt["model_state"][key] = ckpt["model_state"][key] * 50
    save_checkpoint(ckpt, out / "best.pt")
    return out


@pytest.fixture(scope="module")
def swapped(shapes, tmp_path_factory):
    """The val pictures with every class folder named after another class: most are misclassified."""
    root = tmp_path_factory.mktemp("swapped") / "data"
    for real, named in zip(CLASSES, CLASSES[1:] + CLASSES[:1]):
        shutil.copytree(shapes / "val" / real, root / named)
    return root


def _eval(cli, *args) -> dict:
    r = cli("eval", *args, "--json", *FP32)
    assert r.code == 0, r.err
    return json.loads(r.out)


def by_hand(run, paths, *, tta: bool = False):
    """(probabilities N x classes, per-image losses) from the checkpoint in fp32: softmax, and
    cross_entropy(reduction="none") with the run's label smoothing; with ``tta`` of the mean of
    the plain and mirrored probabilities."""
    import torch
    from torch.nn import functional as F

    from cvkit.images import load_image
    from cvkit.inference import restore_model

    model, _, _, transform, _ = restore_model(str(run), device=torch.device("cpu"), fuse=False)
    x = torch.stack([transform(load_image(p)) for p in paths])
    targets = torch.tensor([CLASSES.index(p.parent.name) for p in paths])
    with torch.inference_mode():
        logits = model(x)
        if tta:
            logits = ((logits.softmax(1) + model(x.flip(-1)).softmax(1)) / 2).log()
        return logits.softmax(1), F.cross_entropy(logits, targets, label_smoothing=SMOOTHING, reduction="none")


def test_each_loss_is_cross_entropy_of_that_image_with_the_runs_label_smoothing(cli, run, swapped):
    from torch.nn import functional as F

    paths = sorted(swapped.glob("*/*.png"))  # ImageFolder's order: the dataset's
    report = _eval(cli, str(swapped), "-c", str(run), "--top", str(len(paths)))
    probabilities, losses = by_hand(run, paths)
    assert len(report["top_losses"]) == len(paths)
    # the test can fail: smoothing changes the losses, and they differ from image to image
    targets = probabilities.new_tensor([CLASSES.index(p.parent.name) for p in paths]).long()
    unsmoothed = F.nll_loss(probabilities.log(), targets, reduction="none")
    assert (losses - unsmoothed).abs().max() > 0.05 and losses.max() - losses.min() > 1
    for row in report["top_losses"]:
        i = row["index"]
        assert row["path"] == str(paths[i])
        assert row["true"] == paths[i].parent.name
        assert row["loss"] == pytest.approx(float(losses[i]), abs=2e-6)
        assert row["predicted"] == CLASSES[int(probabilities[i].argmax())]
        assert row["probability"] == pytest.approx(float(probabilities[i].max()), abs=2e-6)
        assert row["true_probability"] == pytest.approx(float(probabilities[i, CLASSES.index(row["true"])]), abs=2e-6)
    assert sorted(r["index"] for r in report["top_losses"]) == list(range(len(paths)))
    assert report["loss"] == pytest.approx(float(losses.mean()), rel=1e-5)  # the pass's mean loss is theirs


def test_top_losses_are_the_highest_first(cli, run, swapped):
    paths = sorted(swapped.glob("*/*.png"))
    _, losses = by_hand(run, paths)
    report = _eval(cli, str(swapped), "-c", str(run))  # --top 16 by default: all 12
    top = report["top_losses"]
    assert len(top) == len(paths)
    assert [r["loss"] for r in top] == sorted((r["loss"] for r in top), reverse=True)
    assert top[0]["loss"] == pytest.approx(float(losses.max()), abs=2e-6)
    assert top[0]["index"] == int(losses.argmax())
    assert set(top[0]) == {"index", "path", "true", "predicted", "probability", "true_probability", "loss"}
    three = _eval(cli, str(swapped), "-c", str(run), "--top", "3")["top_losses"]
    assert three == top[:3]
    assert _eval(cli, str(swapped), "-c", str(run), "--top", "0")["top_losses"] == []


def test_top_losses_with_tta_are_those_of_the_mean_probabilities(cli, run, swapped):
    paths = sorted(swapped.glob("*/*.png"))
    probabilities, losses = by_hand(run, paths, tta=True)
    _, plain_losses = by_hand(run, paths)
    assert (losses - plain_losses).abs().max() > 1e-3  # the mirror matters to this model
    report = _eval(cli, str(swapped), "-c", str(run), "--tta")
    for row in report["top_losses"]:
        i = row["index"]
        assert row["loss"] == pytest.approx(float(losses[i]), abs=2e-5)
        assert row["true_probability"] == pytest.approx(float(probabilities[i, CLASSES.index(row["true"])]), abs=2e-6)
        assert row["probability"] == pytest.approx(float(probabilities[i].max()), abs=2e-6)


def test_most_confused_are_the_off_diagonal_cells_most_first(cli, run, swapped):
    report = _eval(cli, str(swapped), "-c", str(run))
    matrix, classes = report["confusion_matrix"], report["classes"]
    cells = {(classes[t], classes[p]): matrix[t][p] for t in range(len(classes)) for p in range(len(classes))
             if t != p and matrix[t][p]}
    assert cells  # the swapped folders make sure of it
    pairs = report["most_confused"]
    assert {(r["true"], r["predicted"]): r["count"] for r in pairs} == cells and len(pairs) == len(cells)
    rank = [(-r["count"], classes.index(r["true"]), classes.index(r["predicted"])) for r in pairs]
    assert rank == sorted(rank)
    assert sum(cells.values()) == round(report["images"] * (1 - report["accuracy"]))
    assert sum(r["true"] != r["predicted"] for r in report["top_losses"]) <= sum(cells.values())


def test_top_3_out_draws_the_three_highest_losses(cli, run, swapped, tmp_path, monkeypatch):
    from cvkit import reports

    drawn = []
    real = reports.image_grid

    def spy(images, labels, path, **kwargs):
        drawn.append((list(images), list(labels), kwargs["colors"]))
        return real(images, labels, path, **kwargs)

    monkeypatch.setattr(reports, "image_grid", spy)
    report = _eval(cli, str(swapped), "-c", str(run), "--top", "3", "--out", str(tmp_path / "ev"))
    assert set(report["files"]) == {"confusion_matrix", "top_losses"}
    png = tmp_path / "ev" / "top_losses.png"
    assert report["files"]["top_losses"] == str(png) and png.is_file()
    assert not (tmp_path / "ev" / "misclassified.png").exists()
    wrong = sum(r["count"] for r in report["most_confused"])
    with Image.open(png) as img:
        title = img.text["Title"]
    assert title == (f"net ({run / 'best.pt'}): the 3 highest losses of {report['images']} images "
                     f"({wrong} misclassified) on {swapped}")
    (images, labels, colors), = drawn
    assert len(images) == 3 and images[0].shape[-2:] == (32, 32) and 0 <= float(images[0].min()) <= 1
    for row, label, color in zip(report["top_losses"], labels, colors):
        assert label == (f"pred: {row['predicted']} {row['probability']:.2f}\n"
                         f"true: {row['true']} {row['true_probability']:.2f}\nloss {row['loss']:.2f}")
        assert color == ("green" if row["predicted"] == row["true"] else "red")

    none = _eval(cli, str(swapped), "-c", str(run), "--top", "0", "--out", str(tmp_path / "none"))
    assert set(none["files"]) == {"confusion_matrix"} and not (tmp_path / "none" / "top_losses.png").exists()


def test_negative_top_is_one_line(cli, run, swapped):
    r = cli("eval", str(swapped), "-c", str(run), "--top", "-1", *FP32)
    assert r.code != 0
    assert len(r.err.strip().splitlines()) == 1 and "--top" in r.err and "Traceback" not in r.err
    assert r.out == ""


def _rendered(report: dict, monkeypatch, columns: int = 40) -> str:
    """render_eval's text on a terminal COLUMNS wide."""
    from cvkit import ui
    from cvkit.commands.evaluate import render_eval

    monkeypatch.setenv("COLUMNS", str(columns))
    text = io.StringIO()
    monkeypatch.setattr(ui, "out", ui._Console(file=text))
    assert ui.out.width == columns
    render_eval(report)
    return text.getvalue()


def _report(classes: list[str], matrix: list[list[int]]) -> dict:
    from cvkit.analysis import most_confused
    from cvkit.commands.evaluate import per_class_scores

    images = sum(map(sum, matrix))
    return {"model": "net", "checkpoint": "runs/net/best.pt", "data": "data (val)", "images": images,
            "accuracy": sum(matrix[i][i] for i in range(len(classes))) / images, "loss": 1.0,
            "top5_accuracy": None, "tta": None, "classes": classes, "per_class": per_class_scores(matrix, classes),
            "confusion_matrix": matrix, "most_confused": most_confused(matrix, classes), "top_losses": []}


TITLE = "most confused (true → predicted)"


def _table(text: str) -> tuple[str, list[str]]:
    """The most-confused table's header and its rows' lines (a wrapped row spans several)."""
    lines = text.splitlines()
    start = [line.rstrip() for line in lines].index(TITLE)
    assert not lines[start + 1].strip() and set(lines[start + 3].strip()) == {"─"}, text
    end = next(i for i in range(start + 4, len(lines)) if not lines[i].strip())
    return lines[start + 2], lines[start + 4:end]


CLASSES_LONG = ["golden-retriever", "great-white-shark", "tabby-cat", "hammerhead"]
CONFUSED = [[5, 4, 3, 1], [0, 4, 0, 7], [2, 0, 6, 0], [0, 2, 0, 9]]
PAIRS = [("great-white-shark", "hammerhead", 7), ("golden-retriever", "great-white-shark", 4),
         ("golden-retriever", "tabby-cat", 3), ("tabby-cat", "golden-retriever", 2),
         ("hammerhead", "great-white-shark", 2), ("golden-retriever", "hammerhead", 1)]


def test_most_confused_table_keeps_class_names_whole_at_40_columns(monkeypatch):
    text = _rendered(_report(CLASSES_LONG, CONFUSED), monkeypatch, 40)
    header, rows = _table(text)
    assert "…" not in text and max(map(len, [header, *rows])) <= 40, text
    # too narrow for a column per class: the count first, then each pair wrapping between its names
    assert words(header) == "count true → predicted", text
    assert words(" ".join(rows)) == " ".join(f"{n} {t} → {p}" for t, p, n in PAIRS), text
    for name in CLASSES_LONG:  # each name whole on a line of its own row
        assert any(re.search(rf"(^|\s){name}(\s|$)", row) for row in rows), (name, text)
    assert len(rows) > len(PAIRS)  # the test can fail: a row did wrap


def test_most_confused_table_in_a_wide_terminal_has_a_column_per_class(monkeypatch):
    header, rows = _table(_rendered(_report(CLASSES_LONG, CONFUSED), monkeypatch, 200))
    assert header.split() == ["true", "predicted", "count"]
    assert [row.split() for row in rows] == [[t, p, str(n)] for t, p, n in PAIRS]


def test_most_confused_shows_ten_pairs_or_says_there_are_none(monkeypatch):
    classes = [f"c{i}" for i in range(5)]
    everywhere = [[1] * 5 for _ in classes]  # 20 pairs, one image each
    text = _rendered(_report(classes, everywhere), monkeypatch)
    _, rows = _table(text)
    assert [r.split() for r in rows] == [[f"c{t}", f"c{p}", "1"] for t in range(5) for p in range(5) if t != p][:10]
    assert "(the first 10 of 20 pairs: see --json for all)" in text.splitlines()
    right = [[3 if t == p else 0 for p in range(5)] for t in range(5)]
    text = _rendered(_report(classes, right), monkeypatch)
    assert "most confused: no image is misclassified" in text.splitlines() and TITLE not in text


def test_paths_come_through_a_held_out_split_and_relabelling():
    from torch.utils.data import Dataset, Subset

    from cvkit.analysis import sample_path
    from cvkit.relabel import relabelled

    class Listed(Dataset):
        samples = [("a.png", 0), ("b.png", 1), ("c.png", 0), ("d.png", 1)]

        def __len__(self):
            return len(self.samples)

        def __getitem__(self, i):
            return i, self.samples[i][1]

    held_out = Subset(Listed(), [3, 1])
    assert [sample_path(held_out, i) for i in range(2)] == ["d.png", "b.png"]
    assert sample_path(relabelled(held_out, [1, 0], ["y", "x"]), 0) == "d.png"
    assert sample_path(Subset(range(4), [0, 2]), 1) is None  # nothing lists the files
