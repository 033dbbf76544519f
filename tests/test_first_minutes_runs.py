"""The first ten minutes (issue 11): a run that cannot learn says so, a resume that has nothing
left to do says what to do, data check names --val-split for a flat folder, curves.png names its run."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch

from cvkit_plugins.demo import make_shapes
from conftest import train_run, words

pytestmark = pytest.mark.slow

FAST = ["--epochs", "1", "--batch-size", "6", "--lr", "0.01", "--workers", "0"]
FROZEN_RANDOM = "resnet18-frozen with --weights none: the backbone is frozen at random weights and cannot learn"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("first") / "shapes"
    make_shapes(root, train_per_class=3, val_per_class=1, size=32, seed=2)
    return root


@pytest.fixture(scope="module")
def flat(data, tmp_path_factory) -> Path:
    """The class folders of data/train directly under one folder: no train/ and val/."""
    root = tmp_path_factory.mktemp("flat") / "flat"
    shutil.copytree(data / "train", root)
    return root


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """A net run that trained all of its 1 epoch."""
    return train_run(tmp_path_factory.mktemp("runs") / "net-done", str(data), *FAST)


def _err_lines(result) -> list[str]:
    return [line for line in result.err.splitlines() if line.strip()]


# 1. honest warnings


def test_frozen_backbone_with_random_weights_warns_once_and_records_it(cli, data, tmp_path):
    r = cli("train", str(data), "--model", "resnet18-frozen", "--weights", "none", *FAST,
            "--out", str(tmp_path / "run"), "--json")
    assert r.code == 0, r.err
    lines = _err_lines(r)
    assert len(lines) == 1, r.err
    assert lines[0].startswith("cvkit: warning: " + FROZEN_RANDOM)
    assert "only fc trains" in lines[0] and "--weights imagenet" in lines[0] and "resnet18-finetune" in lines[0]
    summary = json.loads(r.out)
    assert summary["warnings"] == [lines[0].removeprefix("cvkit: warning: ")]
    ckpt = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert ckpt["run"]["warnings"] == summary["warnings"]


def test_frozen_warning_is_repeated_under_the_human_summary(cli, data, tmp_path):
    r = cli("train", str(data), "--model", "resnet18-frozen", "--weights", "none", *FAST,
            "--out", str(tmp_path / "run"))
    assert r.code == 0, r.err
    assert len(_err_lines(r)) == 1 and FROZEN_RANDOM in r.err
    after = r.out[r.out.index("done in"):]
    assert FROZEN_RANDOM in words(after)


@pytest.mark.parametrize("args", [
    ["--model", "resnet18-finetune", "--weights", "none"],  # random, but every parameter trains
    ["--model", "net"],
])
def test_runs_that_can_learn_have_no_warnings(cli, data, tmp_path, args):
    r = cli("train", str(data), *args, *FAST, "--out", str(tmp_path / "run"), "--json")
    assert r.code == 0, r.err
    assert _err_lines(r) == []
    assert json.loads(r.out)["warnings"] == []


def test_a_single_class_warns_in_check_and_in_train_alike(cli, data, tmp_path):
    one = tmp_path / "one"
    shutil.copytree(data / "train" / "circle", one / "circle")
    check = json.loads(cli("data", "check", str(one), "--json").out)
    assert len(check["warnings"]) == 1 and "only one class (circle)" in check["warnings"][0]
    r = cli("train", str(one), "--val-split", "0.5", *FAST, "--out", str(tmp_path / "run"), "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["warnings"] == check["warnings"]
    assert _err_lines(r) == ["cvkit: warning: " + check["warnings"][0]]


def test_a_class_left_without_validation_images_is_named(cli, flat, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(flat, odd)
    for path in sorted((odd / "star").iterdir())[1:]:  # one star: stratified, it stays in train
        path.unlink()
    r = cli("train", str(odd), "--val-split", "0.3", *FAST, "--out", str(tmp_path / "run"), "--json")
    assert r.code == 0, r.err
    warnings = json.loads(r.out)["warnings"]
    assert len(warnings) == 1 and "1 of 4 classes (star) has no validation images" in warnings[0]


def test_distributed_only_rank_0_warns(data, tmp_path):
    import os
    import subprocess
    import sys

    one = tmp_path / "one"
    shutil.copytree(data / "train" / "circle", one / "circle")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
                                                            "TORCHELASTIC_RUN_ID", "MASTER_ADDR", "MASTER_PORT")}
    env.update(OMP_NUM_THREADS="1", CVKIT_DIST_TIMEOUT="120")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        "-m", "cvkit", "train", str(one), "--val-split", "0.5", *FAST, "--precision", "fp32",
                        "--out", str(tmp_path / "run"), "--json"],
                       capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stderr.count("only one class (circle)") == 1, r.stderr
    assert json.loads(r.stdout)["warnings"][0].startswith("only one class (circle)")


# 2. resuming a run that already trained all its epochs


def test_resume_of_a_finished_run_says_what_to_do_and_exits_2(cli, finished):
    before = (finished / "last.pt").read_bytes()
    r = cli("train", "--resume", str(finished))
    assert r.code == 2, r.err
    lines = _err_lines(r)
    assert len(lines) == 1, r.err
    assert f"{finished}: already trained 1 of 1 epochs" in lines[0]
    assert f"--resume {finished} --epochs 2" in lines[0] and "raise --epochs" in lines[0]
    assert "None" not in r.out + r.err and r.out == ""
    assert (finished / "last.pt").read_bytes() == before  # nothing in the run changed


def test_resume_of_a_finished_run_with_json_prints_no_half_document(cli, finished):
    r = cli("train", "--resume", str(finished), "--json")
    assert r.code == 2 and r.out == "", r.out
    assert "already trained 1 of 1 epochs" in r.err and "None" not in r.err


def test_resume_with_fewer_epochs_than_done_is_the_same_error(cli, finished):
    r = cli("train", "--resume", str(finished), "--epochs", "1")
    assert r.code == 2 and "already trained 1 of 1 epochs" in r.err
    # (--epochs 2 continues: tests/test_workflow.py::test_resume_continues_a_stopped_run)


def test_summary_without_a_trained_epoch_prints_no_none():
    from rich.console import Console

    from cvkit.engine.display import print_summary as _print_summary

    console = Console(file=io.StringIO(), width=200)
    _print_summary({"best_val_accuracy": 0.5, "best_epoch": 3, "seconds": 0.1, "train_images_per_second": None,
                    "device": "cpu", "precision": "fp32", "skipped_images": [], "run_dir": "r",
                    "best_checkpoint": "r/best.pt", "warnings": []}, console)
    text = console.file.getvalue()
    assert "done" in text and "(cpu fp32)" in text and "None" not in text


# 3. data check and the layouts train needs options for


def test_data_check_of_a_flat_folder_names_val_split(cli, flat):
    human = cli("data", "check", str(flat))
    assert human.code == 0, human.err
    text = words(human.out)
    assert "note:" in text and "no validation split" in text and "--val-split FRACTION" in text
    assert "--val-split 0.2" in text
    report = json.loads(cli("data", "check", str(flat), "--json", "--quick").out)
    assert report["errors"] == [] and report["warnings"] == []
    assert len(report["notes"]) == 1 and "--val-split" in report["notes"][0]


def test_data_check_of_train_and_val_has_no_note(cli, data):
    report = json.loads(cli("data", "check", str(data), "--json", "--quick").out)
    assert report["notes"] == []


def test_train_without_val_needs_val_split_and_then_holds_out_part_of_train(cli, data, tmp_path):
    root = tmp_path / "only-train"
    shutil.copytree(data / "train", root / "train")
    check, train = cli("data", "check", str(root), "--json", "--quick"), cli("train", str(root), *FAST)
    assert check.code == 0 and train.code == 3
    note, = json.loads(check.out)["notes"]
    assert "no validation split" in note and "--val-split" in note
    line, = _err_lines(train)
    assert "no validation split" in line and "--val-split 0.2" in line
    split = cli("train", str(root), "--val-split", "0.25", *FAST, "--json")
    assert split.code == 0, split.err
    summary = json.loads(split.out)
    assert summary["classes"] == sorted(p.name for p in (root / "train").iterdir())
    layout = json.loads((Path(summary["run_dir"]) / "split.json").read_text())
    assert layout["split_of"] == "train" and all(f.startswith("train/") for f in layout["val_files"])


# 4. curves.png names the model, the run and the data


def test_report_titles_name_model_run_and_data(cli, data, tmp_path, monkeypatch):
    from cvkit import reports

    titles = {}

    def spy(name):
        real = getattr(reports, name)

        def draw(*args, **kwargs):
            titles[name] = kwargs.get("title")
            return real(*args, **kwargs)
        monkeypatch.setattr(reports, name, draw)

    spy("plot_curves")
    spy("plot_confusion_matrix")
    run = tmp_path / "net-run"
    r = cli("train", str(data), *FAST, "--out", str(run), "--json")
    assert r.code == 0, r.err
    assert titles["plot_curves"] == f"net ({run}): training curves on {data}"
    assert titles["plot_confusion_matrix"] == f"net ({run}): validation confusion matrix of the best epoch (1) on {data}"
    assert (run / "curves.png").is_file() and (run / "confusion_matrix.png").is_file()
