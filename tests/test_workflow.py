"""train -> eval -> predict -> preview through the command line, on tiny generated images."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from cvkit_plugins.demo import make_shapes

CLASSES = ["circle", "square", "star", "triangle"]
FAST = ["--epochs", "2", "--recipe", "chapter", "--lr", "0.01", "--workers", "0", "--batch-size", "8"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data") / "shapes"
    make_shapes(root, train_per_class=6, val_per_class=3, size=32, seed=1)
    return root


@pytest.fixture(scope="module")
def trained_summary(shapes, tmp_path_factory):
    """One 2-epoch run of net and its --json summary, shared by the read-only tests below (the
    complete-run-directory test reads both, the resume test compares its resumed run with it)."""
    import contextlib

    from cvkit.cli import main

    run = tmp_path_factory.mktemp("runs") / "net-run"
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            main(["train", str(shapes), *FAST, "--out", str(run), "--json"])
    except SystemExit as exc:
        assert not exc.code, exc.code
    return run, json.loads(printed.getvalue())


@pytest.fixture(scope="module")
def trained(trained_summary):
    return trained_summary[0]


def _json(result):
    assert result.code == 0, result.err
    return json.loads(result.out)


def test_train_writes_a_complete_run_directory(trained_summary):
    run, summary = trained_summary  # `cvkit train SHAPES FAST --out RUN --json`, once for the module
    for key in ("run_dir", "best_epoch", "best_val_accuracy", "epochs_run", "seconds", "train_images_per_second"):
        assert key in summary
    assert summary["run_dir"] == str(run) and summary["epochs_run"] == 2
    assert 0 <= summary["best_val_accuracy"] <= 1 and summary["best_epoch"] in (1, 2)
    for name in ("best.pt", "last.pt", "config.yaml", "metrics.csv", "curves.png", "confusion_matrix.png"):
        assert (run / name).is_file(), name
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    best_row = max(rows, key=lambda r: float(r["val_accuracy"]))
    assert float(best_row["val_accuracy"]) == pytest.approx(summary["best_val_accuracy"], abs=1e-6)

    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["format"] == "cvkit-checkpoint"
    assert ckpt["model"]["name"] == "net" and ckpt["model"]["input_size"] == [1, 32, 32]
    assert ckpt["classes"] == CLASSES
    assert ckpt["transform"]["name"] == "plain" and ckpt["model"]["mean"] == [0.5]
    assert ckpt["config"]["epochs"] == 2 and ckpt["config"]["lr"] == 0.01
    assert ckpt["epoch"] == summary["best_epoch"]
    assert ckpt["optimizer_state"]["state"] and ckpt["scheduler_state"] is not None
    assert set(ckpt["versions"]) >= {"cvkit", "torch", "torchvision"}
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and len(last["history"]) == 2


def test_train_human_output_has_a_row_per_epoch_and_next_steps(cli, shapes, tmp_path):
    r = cli("train", str(shapes), *FAST, "--out", str(tmp_path / "run"))
    assert r.code == 0, r.err
    assert "1/2" in r.out and "2/2" in r.out and "best" in r.out
    assert "cvkit eval --checkpoint" in r.out and "cvkit predict" in r.out


def test_eval_defaults_to_the_runs_validation_split(cli, trained):
    summary = torch.load(trained / "best.pt", weights_only=True)
    report = _json(cli("eval", "--checkpoint", str(trained / "best.pt"), "--json"))
    assert report["accuracy"] == pytest.approx(summary["metrics"]["val_accuracy"], abs=1e-6)
    assert report["images"] == 12
    assert [r["class"] for r in report["per_class"]] == CLASSES
    assert sum(map(sum, report["confusion_matrix"])) == 12
    assert report["confusion_matrix"] == summary["metrics"]["confusion_matrix"]
    assert report["checkpoint"] == str(trained / "best.pt")


def test_eval_without_checkpoint_uses_the_newest_run(cli, trained, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    shutil.copytree(trained, tmp_path / "runs" / "net-1")
    report = _json(cli("eval", "--json"))
    assert report["checkpoint"] == str(Path("runs") / "net-1" / "best.pt")


def test_eval_matches_classes_by_name_not_folder_order(cli, trained, shapes, tmp_path):
    # a folder with only two of the classes: its labels 0, 1 are the checkpoint's 1 (square), 3 (triangle)
    data = tmp_path / "two"
    for c in ("square", "triangle"):
        shutil.copytree(shapes / "val" / c, data / c)
    report = _json(cli("eval", str(data), "--checkpoint", str(trained), "--json"))
    support = {r["class"]: r["support"] for r in report["per_class"]}
    assert support == {"circle": 0, "square": 3, "star": 0, "triangle": 3}
    preds = _json(cli("predict", str(data), "--checkpoint", str(trained), "--json", "--top-k", "1"))
    right = sum(Path(p["path"]).parent.name == p["predictions"][0]["label"] for p in preds)
    assert report["accuracy"] == pytest.approx(right / 6)


def test_eval_unknown_class_is_an_error_naming_it(cli, trained, shapes, tmp_path):
    data = tmp_path / "odd"
    shutil.copytree(shapes / "val" / "circle", data / "circle")
    shutil.copytree(shapes / "val" / "star", data / "hexagon")
    r = cli("eval", str(data), "--checkpoint", str(trained))
    assert r.code == 3
    assert "'hexagon'" in r.err and "Traceback" not in r.err


def test_eval_out_writes_pictures(cli, trained, tmp_path):
    report = _json(cli("eval", "--checkpoint", str(trained), "--out", str(tmp_path / "ev"), "--json"))
    assert Path(report["files"]["confusion_matrix"]).is_file()
    assert Path(report["files"]["top_losses"]).is_file()


def test_predict_outputs(cli, trained, shapes, tmp_path):
    folder = shapes / "val" / "star"
    preds = _json(cli("predict", str(folder), "--checkpoint", str(trained), "--json", "--top-k", "2"))
    assert len(preds) == 3
    for p in preds:
        probs = [x["probability"] for x in p["predictions"]]
        assert len(probs) == 2 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        assert {x["label"] for x in p["predictions"]} <= set(CLASSES)
    one = _json(cli("predict", preds[0]["path"], "--checkpoint", str(trained), "--json", "--top-k", "2"))
    assert one[0]["predictions"] == preds[0]["predictions"]  # a batch of one gives the same answer
    r = cli("predict", str(folder / "*.png"), "--checkpoint", str(trained), "--csv")
    assert r.code == 0, r.err
    rows = list(csv.DictReader(io.StringIO(r.out)))
    assert len(rows) == 9 and rows[0].keys() == {"path", "rank", "label", "probability"}
    grid = tmp_path / "grid.png"
    r = cli("predict", str(folder), "--checkpoint", str(trained), "--grid", str(grid))
    assert r.code == 0, r.err
    assert grid.is_file() and "star_0000.png" in r.out and "grid:" in r.out


def test_predict_reads_any_image_mode(cli, trained, tmp_path):
    from PIL import Image

    paths = []
    for mode, colour in (("RGBA", (255, 0, 0, 128)), ("CMYK", (0, 255, 0, 0)), ("P", 3), ("I;16", 40000)):
        p = tmp_path / f"x-{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
        Image.new(mode, (50, 40), colour).save(p)
        paths.append(str(p))
    preds = _json(cli("predict", *paths, "--checkpoint", str(trained), "--json"))
    assert [p["path"] for p in preds] == paths


def test_config_file_repeats_the_run(cli, trained, tmp_path):
    summary = _json(cli("train", "--config", str(trained / "config.yaml"), "--out", str(tmp_path / "again"),
                        "--json"))
    first = (trained / "metrics.csv").read_text().splitlines()
    again = (tmp_path / "again" / "metrics.csv").read_text().splitlines()
    strip = lambda lines: [",".join(line.split(",")[:6]) for line in lines]  # noqa: E731  (drop times)
    assert strip(again) == strip(first)
    assert summary["epochs_run"] == 2


def test_command_line_wins_over_config_file(cli, shapes, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {shapes}\nepochs: 3\nbatch-size: 8\nworkers: 0\nlr: 0.01\n")
    summary = _json(cli("train", "--config", str(cfg), "--epochs", "1", "--out", str(tmp_path / "r"), "--json"))
    assert summary["epochs_run"] == 1
    ckpt = torch.load(tmp_path / "r" / "last.pt", weights_only=True)
    assert ckpt["config"]["batch_size"] == 8 and ckpt["config"]["epochs"] == 1


def test_resume_continues_a_stopped_run(cli, shapes, trained_summary, tmp_path):
    """Extending a run: exact for a schedule that does not depend on --epochs (the chapter's StepLR);
    a per-step cosine is stretched to the new length instead (tests/test_recipes.py checks exact
    resumes of the default recipe after a stop within the same --epochs)."""
    straight_run, straight = trained_summary  # the same command, 2 epochs without a stop
    one = [a if a != "2" else "1" for a in FAST]
    _json(cli("train", str(shapes), *one, "--out", str(tmp_path / "resumed"), "--json"))
    resumed = _json(cli("train", "--resume", str(tmp_path / "resumed"), "--epochs", "2", "--json"))
    assert resumed["epochs_run"] == 1 and resumed["last_epoch"] == 2
    rows = list(csv.DictReader((tmp_path / "resumed" / "metrics.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    a = torch.load(straight_run / "last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    for k in a["model_state"]:
        assert torch.equal(a["model_state"][k], b["model_state"][k]), k
    assert straight["best_val_accuracy"] == resumed["best_val_accuracy"]


def test_val_split_layout_is_recorded_and_reused_by_eval(cli, shapes, tmp_path):
    flat = tmp_path / "flat"
    for c in CLASSES:
        shutil.copytree(shapes / "train" / c, flat / c)
    summary = _json(cli("train", str(flat), *FAST, "--val-split", "0.25", "--out", str(tmp_path / "r"), "--json"))
    split = json.loads((tmp_path / "r" / "split.json").read_text())
    assert split["layout"] == "split" and len(split["val_files"]) == 8  # 2 of each class's 6
    assert sorted({Path(f).parts[0] for f in split["val_files"]}) == CLASSES
    report = _json(cli("eval", "--checkpoint", str(tmp_path / "r"), "--json"))
    assert report["images"] == 8
    assert report["accuracy"] == pytest.approx(summary["best_val_accuracy"])


def test_preview_draws_a_batch(cli, shapes, tmp_path):
    out = tmp_path / "p.png"
    r = cli("preview", str(shapes), "--model", "net", "--out", str(out), "--count", "8")
    assert r.code == 0, r.err
    assert out.is_file() and str(out) in r.out


@pytest.mark.parametrize("args, code, words", [
    (["train", "MISSING"], 3, ["MISSING", "no such folder"]),
    (["train", "{flat}"], 3, ["--val-split"]),
    (["train", "{shapes}", "--model", "nett"], 2, ["unknown model 'nett'", "'net'"]),
    (["train", "{shapes}", "--epochs", "0"], 2, ["--epochs"]),
    (["train", "--config", "{cfg_unknown}"], 2, ["unknown key 'epoch'", "did you mean 'epochs'"]),
    (["train", "--config", "{cfg_type}"], 2, ["epochs must be int"]),
    (["train", "--config", "{cfg_yaml}"], 2, ["invalid YAML"]),
    (["train", "--resume", "{tmp}/nowhere"], 4, ["--resume", "nowhere"]),
    (["eval"], 4, ["cvkit train"]),
    (["predict", "{tmp}/nothing.png"], 3, ["nothing.png"]),
])
def test_bad_input_is_one_clear_line(cli, shapes, tmp_path, monkeypatch, args, code, words):
    monkeypatch.chdir(tmp_path)
    flat = tmp_path / "flat"
    shutil.copytree(shapes / "train" / "circle", flat / "circle")
    (tmp_path / "unknown.yaml").write_text("epoch: 3\n")
    (tmp_path / "type.yaml").write_text("epochs: three\n")
    (tmp_path / "bad.yaml").write_text("epochs: [1, 2\n")
    subst = {"{flat}": str(flat), "{shapes}": str(shapes), "{cfg_unknown}": str(tmp_path / "unknown.yaml"),
             "{cfg_type}": str(tmp_path / "type.yaml"), "{cfg_yaml}": str(tmp_path / "bad.yaml"),
             "{tmp}": str(tmp_path)}
    args = [next((a.replace(k, v) for k, v in subst.items() if k in a), a) for a in args]
    r = cli(*args)
    assert r.code == code, r.err
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.err, r.err
    for w in words:
        assert w in lines[0], lines[0]


def test_resume_with_another_model_is_refused(cli, trained, tmp_path):
    r = cli("train", "--resume", str(trained), "--model", "resnet18-frozen")
    assert r.code == 4 and "net" in r.err and "resnet18-frozen" in r.err


def test_data_demo_command(cli, tmp_path):
    out = _json(cli("data", "demo", str(tmp_path / "demo"), "--json"))
    assert out["classes"] == CLASSES and out["counts"]["train"] > 0 and out["counts"]["val"] > 0
    again = _json(cli("data", "demo", str(tmp_path / "demo"), "--json"))
    assert again["counts"] == out["counts"] and again["created"] is False


def test_checkpoint_saved_on_cuda_predicts_on_cpu(cli, trained, shapes, tmp_path, monkeypatch):
    # torch.save tags each storage with its device; tag them as a GPU machine would
    ckpt = torch.load(trained / "best.pt", weights_only=True)
    cuda_file = tmp_path / "cuda.pt"
    with monkeypatch.context() as m:
        m.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save(ckpt, cuda_file)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(cuda_file, weights_only=True)  # what a plain load does on a CPU-only machine
    image = str(shapes / "val" / "circle" / "circle_0000.png")
    here = _json(cli("predict", image, "--checkpoint", str(trained / "best.pt"), "--json", "--device", "cpu"))
    there = _json(cli("predict", image, "--checkpoint", str(cuda_file), "--json", "--device", "cpu"))
    assert there[0]["predictions"] == here[0]["predictions"]


@pytest.mark.parametrize("case", ["file", "no-classes", "no-images"])
def test_data_without_images_is_a_data_error(cli, tmp_path, case):
    data = tmp_path / "d"
    if case == "file":
        data.write_text("not a folder")
    elif case == "no-classes":
        (data / "train").mkdir(parents=True)
        (data / "val").mkdir()
    else:
        for split in ("train", "val"):
            (data / split / "cat").mkdir(parents=True)
            (data / split / "cat" / "notes.txt").write_text("no images here")
    r = cli("train", str(data), "--epochs", "1")
    assert r.code == 3, r.err
    assert str(data) in r.err and "Traceback" not in r.err


def test_download_offline_is_one_clear_line(cli, tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.utils as tvu

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tvu, "download_url", offline)
    monkeypatch.setattr(tvu, "download_and_extract_archive", offline)
    r = cli("data", "download", "mnist", str(tmp_path / "mnist"))
    assert r.code == 3
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot download mnist" in lines[0] and "internet" in lines[0]
    assert not (tmp_path / "mnist").exists()  # nothing left behind


def test_out_that_holds_a_run_is_never_written_over(cli, trained, shapes):
    before = (trained / "best.pt").read_bytes()
    r = cli("train", str(shapes), *FAST, "--out", str(trained))
    assert r.code == 2 and "--resume" in r.err
    assert (trained / "best.pt").read_bytes() == before


def test_eval_reports_top5_with_more_than_five_classes(cli, shapes, tmp_path):
    data = tmp_path / "six"
    for split in ("train", "val"):
        for i, c in enumerate(CLASSES + CLASSES[:2]):
            shutil.copytree(shapes / split / c, data / split / f"class{i}")
    _json(cli("train", str(data), "--epochs", "1", "--workers", "0", "--out", str(tmp_path / "r"), "--json"))
    report = _json(cli("eval", "--checkpoint", str(tmp_path / "r"), "--json"))
    assert len(report["classes"]) == 6
    assert report["top5_accuracy"] is not None and report["top5_accuracy"] >= report["accuracy"]
    human = cli("eval", "--checkpoint", str(tmp_path / "r"))
    assert "top-5" in human.out


def test_predict_without_any_checkpoint_says_how_to_train(cli, shapes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("predict", str(shapes / "val" / "star" / "star_0000.png"))
    assert r.code == 4 and "cvkit train" in r.err
