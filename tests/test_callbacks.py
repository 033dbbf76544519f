"""Training callbacks from plugins (``register_callbacks``), written only from docs/plugins.md and
installed as a package: what they see, how they stop a run, and what a failing one leaves."""

from __future__ import annotations

import json

import pytest

from conftest import words
from cvkit.checkpoint import load_checkpoint
from cvkit_plugins.demo import make_shapes

FAST = ("--model", "net", "--lr", "0.05", "--workers", "0", "--batch-size", "16")

EPOCH_LOG = """
import json
import os
from pathlib import Path

import cvkit


class EpochLog:
    '''Logs every epoch to a file, stops after epoch `stop_after`, notes the summary it is given.'''

    def __init__(self, path, stop_after=2):
        self.path, self.stop_after, self.steps = Path(path), stop_after, 0

    def on_train_start(self, run):
        with open(self.path, "a") as f:
            f.write(f"start {run.config.model} {len(run.classes)} classes in {run.run_dir}\\n")

    def on_step_end(self, run, step):
        self.steps += 1

    def on_epoch_end(self, run, metrics):
        if os.environ.get("EPOCH_LOG_FAIL") == str(metrics["epoch"]):
            raise RuntimeError("the log server is down")
        with open(self.path, "a") as f:
            f.write(json.dumps({"epoch": metrics["epoch"], "val_accuracy": metrics["val_accuracy"],
                                "history": len(run.history), "steps": self.steps}) + "\\n")
        if metrics["epoch"] >= self.stop_after:
            run.should_stop = True

    def on_train_end(self, run, summary):
        with open(self.path, "a") as f:
            f.write("end " + json.dumps({k: summary[k] for k in ("epochs_run", "stopped_by", "best_epoch")}) + "\\n")


@cvkit.hookimpl
def register_callbacks(register):
    register("epoch-log", EpochLog, help="logs each epoch to a file")
"""


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("callbacks") / "shapes"
    make_shapes(root, train_per_class=8, val_per_class=2, size=32, seed=6)
    return root


@pytest.fixture
def epoch_log(fake_dist):
    fake_dist("cvkit-epoch-log", {"cvkit_epoch_log": EPOCH_LOG}, {"epoch-log": "cvkit_epoch_log"})


def _lines(path):
    return path.read_text().splitlines()


def test_hook_register_callbacks(cli, shapes, tmp_path, epoch_log):
    """A callback that logs each epoch to a file, stops the run after epoch 2 and sees the summary."""
    log, run = tmp_path / "log.txt", tmp_path / "run"
    r = cli("train", str(shapes), *FAST, "--epochs", "5", "--out", str(run), "--callback", "epoch-log",
            "--opt", f"callback.epoch-log.path={log}", "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["epochs_run"] == 2 and summary["stopped_by"] == "epoch-log"
    lines = _lines(log)
    assert lines[0] == f"start net 4 classes in {run}"
    epochs = [json.loads(line) for line in lines[1:3]]
    assert [e["epoch"] for e in epochs] == [1, 2] and [e["history"] for e in epochs] == [1, 2]
    assert epochs[0]["steps"] == 2 and epochs[1]["steps"] == 4  # 32 images in batches of 16: 2 steps an epoch
    assert lines[3] == 'end {"epochs_run": 2, "stopped_by": "epoch-log", "best_epoch": %d}' % summary["best_epoch"]
    assert load_checkpoint(run / "last.pt")["epoch"] == 2  # saved as usual
    assert len((run / "metrics.csv").read_text().splitlines()) == 3
    assert load_checkpoint(run / "last.pt")["config"]["callbacks"] == ["epoch-log"]


def test_a_raising_callback_stops_with_exit_5_and_resume_finishes(cli, shapes, tmp_path, epoch_log, monkeypatch):
    log, run = tmp_path / "log.txt", tmp_path / "run"
    monkeypatch.setenv("EPOCH_LOG_FAIL", "2")
    r = cli("train", str(shapes), *FAST, "--epochs", "3", "--out", str(run), "--callback", "epoch-log",
            "--opt", f"callback.epoch-log.path={log}", "--opt", "callback.epoch-log.stop_after=9")
    assert r.code == 5
    line = [x for x in r.err.splitlines() if x.strip()]
    assert len(line) == 1 and "Traceback" not in r.err
    assert line[0] == (f"cvkit: error: callback 'epoch-log' of plugin 'epoch-log' failed in on_epoch_end: "
                       f"RuntimeError: the log server is down; training stopped; {run / 'last.pt'} holds epoch 2; "
                       f"continue with: cvkit train --resume {run}")
    assert load_checkpoint(run / "last.pt")["epoch"] == 2  # the last finished epoch
    monkeypatch.delenv("EPOCH_LOG_FAIL")
    r = cli("train", "--resume", str(run), "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["epochs_run"] == 1 and summary["last_epoch"] == 3 and summary["stopped_by"] is None
    assert json.loads(_lines(log)[-2])["epoch"] == 3  # the resumed run keeps its callback


def test_patience_is_the_early_stopping_callback(cli, shapes, tmp_path):
    r = cli("train", str(shapes), *FAST, "--epochs", "30", "--lr", "1e-9", "--out", str(tmp_path / "run"),
            "--patience", "2", "--json")
    assert r.code == 0, r.err
    summary = json.loads(r.out)
    assert summary["stopped_by"] == "early-stopping" and summary["epochs_run"] < 30
    assert summary["epochs_run"] == summary["best_epoch"] + 2


@pytest.mark.parametrize("args, expected", [
    (["--callback", "tensorbord"], "--callback: unknown callback 'tensorbord'. Did you mean 'tensorboard'?"),
    (["--opt", "callback.tensorboard.log_dir=x"], "--opt callback.tensorboard.log_dir: expected callback.NAME.KEY"),
    (["--callback", "early-stopping", "--opt", "callback.early-stopping.patiense=2"],
     "--opt callback.early-stopping.patiense: callback 'early-stopping' has no option 'patiense'"),
])
def test_a_callback_mistake_is_one_line_before_any_training(cli, shapes, tmp_path, args, expected):
    r = cli("train", str(shapes), *FAST, "--epochs", "1", "--out", str(tmp_path / "run"), *args)
    assert r.code == 2
    assert words(r.err).startswith(f"cvkit: error: {expected}"), r.err
    assert not (tmp_path / "run").exists()


def test_no_step_hook_without_a_callback_that_wants_it():
    from cvkit.engine.callbacks import Callbacks, Registered

    class EpochOnly:
        def on_epoch_end(self, run, metrics):
            pass

    assert Callbacks([EpochOnly(), Registered("x", "p", EpochOnly())]).step_hook(run=None) is None


def test_the_tensorboard_callback_writes_a_scalar_per_epoch(cli, shapes, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    r = cli("train", str(shapes), *FAST, "--epochs", "2", "--out", str(run), "--callback", "tensorboard", "--json")
    assert r.code == 0, r.err
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    for tag in ("loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr"):
        assert [e.step for e in events.Scalars(tag)] == [1, 2], tag
    val = [round(e.value, 5) for e in events.Scalars("accuracy/val")]
    rows = (run / "metrics.csv").read_text().splitlines()[1:]
    assert val == [round(float(row.split(",")[4]), 5) for row in rows]
