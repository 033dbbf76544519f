"""Issue 4: checkpoints that must not load, YAML configs, inputs at the edges."""

from __future__ import annotations

import json
import os
import shutil
from fractions import Fraction
from pathlib import Path

import pytest
import torch

from conftest import train_run
from cvkit_plugins.demo import make_shapes

FAST = ["--epochs", "1", "--workers", "0", "--batch-size", "8", "--lr", "0.01"]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs") / "shapes"
    make_shapes(root, train_per_class=4, val_per_class=2, size=32, seed=4)
    return root


@pytest.fixture(scope="module")
def run(shapes, tmp_path_factory) -> Path:
    return train_run(tmp_path_factory.mktemp("runs") / "run", str(shapes), *FAST)


def _one_line(r, code: int) -> str:
    assert r.code == code, (r.code, r.err)
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.err, r.err
    return lines[0]


class _Payload:
    """Unpickling this would create a marker file: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# --- 9. checkpoints cannot run code ------------------------------------------------------------

@pytest.mark.parametrize("command", ["eval", "predict", "resume"])
def test_a_checkpoint_that_would_run_code_is_refused(cli, run, shapes, tmp_path, command):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    payload = torch.load(run / "best.pt", weights_only=True)
    payload["extra"] = _Payload(marker)
    torch.save(payload, evil)
    args = {"eval": ["eval", "--checkpoint", str(evil)],
            "predict": ["predict", str(shapes / "val" / "star"), "--checkpoint", str(evil)],
            "resume": ["train", "--resume", str(evil)]}[command]
    line = _one_line(cli(*args), 4)
    assert str(evil) in line and "refused" in line and "--trust-checkpoints" in line
    assert not marker.exists()


def test_trust_flag_loads_python_objects_with_a_warning(cli, run, tmp_path):
    odd = tmp_path / "odd.pt"
    payload = torch.load(run / "best.pt", weights_only=True)
    payload["note"] = Fraction(1, 3)  # harmless, but not allowed by weights-only loading
    torch.save(payload, odd)
    assert cli("eval", "--checkpoint", str(odd)).code == 4
    r = cli("--trust-checkpoints", "eval", "--checkpoint", str(odd), "--json")
    assert r.code == 0, r.err
    assert "can run any code" in r.err
    assert json.loads(r.out)["checkpoint"] == str(odd)


# --- 10. files that are not checkpoints --------------------------------------------------------

@pytest.mark.parametrize("kind", ["truncated", "empty", "text", "state-dict"])
@pytest.mark.parametrize("command", ["eval", "resume"])
def test_not_a_checkpoint(cli, run, tmp_path, kind, command):
    path = tmp_path / "bad.pt"
    if kind == "truncated":
        raw = (run / "best.pt").read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("hello, I am not a checkpoint\n")
    else:
        torch.save(torch.load(run / "best.pt", weights_only=True)["model_state"], path)
    args = ["eval", "--checkpoint", str(path)] if command == "eval" else ["train", "--resume", str(path)]
    line = _one_line(cli(*args), 4)
    assert f"{path}: not a cvkit checkpoint" in line
    assert "PytorchStreamReader" not in line and "zip" not in line.lower()


# --- 11. a checkpoint of another model or class count ------------------------------------------

def test_weights_from_another_model_are_refused_by_name(cli, run):
    line = _one_line(cli("inspect-grad", "--model", "resnet18-frozen", "--weights", str(run / "best.pt")), 4)
    assert "'net'" in line and "'resnet18-frozen'" in line


def test_weights_with_another_class_count_say_so_and_replace_the_head(cli, run):
    r = cli("inspect-grad", "--model", "net", "--num-classes", "10", "--weights", str(run / "best.pt"), "--json")
    assert r.code == 0, r.err
    assert "fc3.weight has shape (4, 84)" in r.err and "(10, 84)" in r.err
    assert json.loads(r.out)["output"]["shape"] == [1, 10]


def test_resume_on_data_with_other_classes_is_refused(cli, run, shapes, tmp_path):
    other = tmp_path / "other"
    for split in ("train", "val"):
        for c in ("circle", "square"):
            shutil.copytree(shapes / split / c, other / split / c)
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    line = _one_line(cli("train", str(other), "--resume", str(copy), "--epochs", "2"), 4)
    assert "classes" in line and "circle" in line


# --- 22. YAML --------------------------------------------------------------------------------

@pytest.mark.parametrize("text, words", [
    ("lr: !!python/object/apply:os.system ['touch {marker}']\n", ["invalid YAML", "python/object/apply"]),
    ("epochs: 2\nepochs: 3\n", ["duplicate key 'epochs'", "line 2"]),
    ("epoch: 2\n", ["unknown key 'epoch'", "did you mean 'epochs'"]),
    ("options:\n  optimiser: {momentum: 0.5}\n", ["unknown key 'options.optimiser'"]),
    ("batch-size: big\n", ["batch_size must be int", "'big'"]),
    ("lr: [0.1]\n", ["lr must be float"]),
    ("- a list\n", ["expected a mapping"]),
])
def test_bad_yaml_is_one_line_naming_the_key(cli, tmp_path, text, words):
    marker = tmp_path / "pwned"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text.replace("{marker}", str(marker)))
    line = _one_line(cli("train", "--config", str(cfg)), 2)
    assert str(cfg) in line
    for w in words:
        assert w in line, line
    assert not marker.exists()


def test_yaml_lr_in_exponent_notation_is_a_number(cli, shapes, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {shapes}\nlr: 1e-3\nepochs: 1\nworkers: 0\nbatch-size: 8\n")
    r = cli("train", "--config", str(cfg), "--out", str(tmp_path / "r"), "--json")
    assert r.code == 0, r.err
    assert torch.load(tmp_path / "r" / "last.pt", weights_only=True)["config"]["lr"] == 0.001


# --- 23. predict on messy folders ----------------------------------------------------------------

def test_predict_skips_what_it_cannot_read_and_predicts_the_rest(cli, run, shapes, tmp_path):
    folder = tmp_path / "messy"
    shutil.copytree(shapes / "val" / "star", folder)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    (folder / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    r = cli("predict", str(folder), "--checkpoint", str(run), "--json")
    assert r.code == 0, r.err
    preds = json.loads(r.out)
    assert sorted(Path(p["path"]).name for p in preds) == ["star_0000.png", "star_0001.png"]
    for name, reason in (("notes.txt", "not an image file"), ("broken.png", "not a readable image"),
                         ("loop", "symbolic link loop"), ("dangling.png", "broken symbolic link")):
        assert any(name in line and reason in line for line in r.err.splitlines()), (name, r.err)


def test_predict_with_nothing_readable_is_a_data_error(cli, run, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("text")
    line = _one_line(cli("predict", str(bad), "--checkpoint", str(run)), 3)
    assert "no readable images" in line and "bad.png" in line  # the file at fault, named


# --- 24. paths with spaces and non-ASCII names ---------------------------------------------------

def test_paths_with_spaces_and_unicode_work_everywhere(cli, shapes, tmp_path):
    data = tmp_path / "my data" / "ñandú 数据"
    for split in ("train", "val"):
        for c, new in (("circle", "círculo"), ("square", "square box")):
            shutil.copytree(shapes / split / c, data / split / new)
    image = data / "val" / "círculo" / "foto dé prüfung.png"
    shutil.copy(shapes / "val" / "circle" / "circle_0000.png", image)
    out = tmp_path / "run dir" / "ñ"
    r = cli("train", str(data), *FAST, "--out", str(out), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["classes"] == ["círculo", "square box"]
    report = json.loads(cli("eval", "--checkpoint", str(out), "--json").out)
    assert {row["class"] for row in report["per_class"]} == {"círculo", "square box"}
    preds = json.loads(cli("predict", str(image), "--checkpoint", str(out), "--json").out)
    assert preds[0]["path"] == str(image)
    assert cli("data", "check", str(data)).code == 0
    assert cli("preview", str(data), "--out", str(tmp_path / "prévue dir" / "p.png")).code == 0
    assert (tmp_path / "prévue dir" / "p.png").is_file()


# --- 25. numbers out of range ------------------------------------------------------------------

@pytest.mark.parametrize("args, option", [
    (["--batch-size", "0"], "--batch-size"),
    (["--epochs", "-1"], "--epochs"),
    (["--lr", "-0.1"], "--lr"),
    (["--lr", "0"], "--lr"),
    (["--val-split", "1.5"], "--val-split"),
    (["--patience", "0"], "--patience"),
    (["--workers", "-2"], "--workers"),
    (["--workers", "many"], "--workers"),
])
def test_out_of_range_numbers_are_usage_errors(cli, shapes, args, option):
    line = _one_line(cli("train", str(shapes), *args), 2)
    assert option in line


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_batch_size_zero_for_eval_and_predict(cli, run, shapes, command):
    args = [command] + ([str(shapes / "val" / "star")] if command == "predict" else []) + [
        "--checkpoint", str(run), "--batch-size", "0"]
    r = cli(*args)
    assert r.code == 2 and "--batch-size" in r.err
