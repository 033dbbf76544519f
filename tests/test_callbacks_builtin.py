"""The built-in training callbacks (plugins/callbacks.py): early-stopping and tensorboard.

The callbacks are built through the registry, as ``cvkit train --callback NAME`` builds them, and
driven directly with a stand-in ``run`` (the fields the engine's Run has) and a few metrics rows, so
these tests need no training run.
"""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
from PIL import Image
from rich.console import Console

from cvkit.errors import UsageError
from cvkit.plugins import get_plugins

TB_MISSING = "the tensorboard callback needs the tensorboard package: pip install 'cvkit[tensorboard]'"


def build(name: str, **options):
    """The callback ``name`` as the engine builds it: the registry's entry, with ``options``."""
    return get_plugins()["callbacks"].get(name).create(options=options)


def fake_run(run_dir, *, is_main: bool = True, show_progress: bool = True):
    """A stand-in for the engine's Run, with the fields callbacks may use."""
    return SimpleNamespace(
        run_dir=run_dir, model=None, optimizer=None, classes=["a", "b"], config=None, epoch=0, history=[],
        should_stop=False, stopped_by=None, info=SimpleNamespace(is_main=is_main),
        console=Console(file=io.StringIO(), width=200, color_system=None), show_progress=show_progress,
        confusion=[[1, 0], [0, 1]], best={"epoch": 0, "val_accuracy": -1.0})


def row(epoch: int, best: bool = False) -> dict:
    """A metrics.csv row, with values that tell the epochs apart."""
    return {"epoch": epoch, "train_loss": 1.0 / epoch, "train_accuracy": 0.5 + epoch / 100,
            "val_loss": 2.0 / epoch, "val_accuracy": 0.4 + epoch / 100, "lr": 0.01 / epoch,
            "seconds": 1.5, "train_seconds": 1.0, "best": best}


def epochs(run, callback, bests: list[bool], first: int = 1) -> int | None:
    """Feed one row per entry of ``bests`` (``best`` flag) as the loop does; the epoch it stopped at."""
    for epoch, best in enumerate(bests, start=first):
        run.epoch = epoch
        run.history.append(row(epoch, best))
        callback.on_epoch_end(run, run.history[-1])
        if run.should_stop:
            return epoch
    return None


def printed(run) -> str:
    return run.console.file.getvalue()


# ---------------------------------------------------------------------------------------------
# registration


def test_listed_with_their_plugin(cli):
    r = cli("list", "callbacks", "--json")
    assert r.code == 0, r.err
    rows = {c["name"]: c for c in json.loads(r.out)["callbacks"]}
    assert {"early-stopping", "tensorboard"} <= set(rows)
    assert rows["early-stopping"]["plugin"] == rows["tensorboard"]["plugin"] == "callbacks"
    assert "patience" in rows["early-stopping"]["help"] and "log_dir" in rows["tensorboard"]["help"]

    r = cli("plugins", "--json")
    info = next(p for p in json.loads(r.out)["plugins"] if p["name"] == "callbacks")
    assert (info["status"], info["builtin"], info["module"]) == ("loaded", True, "cvkit_plugins.callbacks")
    assert info["registered"] == {"callbacks": ["early-stopping", "tensorboard"]}


def test_importing_the_plugin_imports_no_torch():
    code = "import sys, cvkit_plugins.callbacks; sys.exit('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_built_ins_cost_nothing_per_step():
    for callback in (build("early-stopping"), build("tensorboard")):
        assert not hasattr(callback, "on_step_end")


# ---------------------------------------------------------------------------------------------
# early-stopping


@pytest.mark.parametrize("patience", [1, 2, 3])
def test_early_stopping_stops_after_patience_epochs_without_a_best(tmp_path, patience):
    run = fake_run(tmp_path)
    stopped = epochs(run, build("early-stopping", patience=patience), [True] + [False] * 10)
    assert stopped == 1 + patience
    assert run.should_stop is True
    assert printed(run).splitlines() == [f"early stop: no better val accuracy for {patience} epochs"]


def test_early_stopping_counts_from_the_last_best_epoch(tmp_path):
    run = fake_run(tmp_path)
    callback = build("early-stopping", patience=3)
    # epochs 1..8: best at 1, 3 and 5; two epochs without a best never stop it, the third does
    assert epochs(run, callback, [True, False, True, False, True, False, False, False]) == 8
    assert printed(run).count("early stop") == 1


def test_early_stopping_default_patience_is_5(tmp_path):
    run = fake_run(tmp_path)
    assert epochs(run, build("early-stopping"), [False] * 10) == 5


def test_early_stopping_is_quiet_without_progress_output_and_starts_again_when_built(tmp_path):
    run = fake_run(tmp_path, show_progress=False)
    assert epochs(run, build("early-stopping", patience=2), [True, False, False, False]) == 3
    assert printed(run) == ""
    # a resumed run builds it again: the count starts again from patience
    run = fake_run(tmp_path, show_progress=False)
    assert epochs(run, build("early-stopping", patience=2), [False, False], first=4) == 5


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "3", None])
def test_early_stopping_rejects_a_patience_that_is_not_a_whole_number_from_1(bad):
    with pytest.raises(UsageError) as caught:
        build("early-stopping", patience=bad)
    message = str(caught.value)
    assert "\n" not in message and "--opt callback.early-stopping.patience" in message
    assert repr(bad) in message


def test_early_stopping_unknown_option_is_a_usage_error():
    with pytest.raises(UsageError, match="patience"):
        build("early-stopping", paitence=3)


# ---------------------------------------------------------------------------------------------
# tensorboard

TAGS = {"loss/train": "train_loss", "loss/val": "val_loss", "accuracy/train": "train_accuracy",
        "accuracy/val": "val_accuracy", "lr": "lr"}


def read_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def train(run, callback, bests, *, first: int = 1, pngs: dict | None = None) -> None:
    """on_train_start, the epochs, the plots the engine writes (``pngs``: name -> size), on_train_end."""
    callback.on_train_start(run)
    epochs(run, callback, bests, first=first)
    for name, size in (pngs or {}).items():
        Image.new("RGB", size, (200, 30, 30)).save(run.run_dir / name)
    callback.on_train_end(run, {"run_dir": str(run.run_dir), "stopped_by": None})


def test_tensorboard_writes_one_scalar_per_epoch_per_tag_and_the_plots(tmp_path):
    run = fake_run(tmp_path)
    callback = build("tensorboard")
    train(run, callback, [True, False, True], pngs={"curves.png": (64, 48), "confusion_matrix.png": (40, 40)})
    assert callback.writer is None  # closed

    events = read_events(tmp_path / "tensorboard")
    assert sorted(events.Tags()["scalars"]) == sorted(TAGS)
    for tag, column in TAGS.items():
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [1, 2, 3]
        assert [s.value for s in scalars] == pytest.approx([row(e)[column] for e in (1, 2, 3)])
    assert sorted(events.Tags()["images"]) == ["confusion_matrix", "curves"]
    [curves] = events.Images("curves")
    [confusion] = events.Images("confusion_matrix")
    assert (curves.width, curves.height, curves.step) == (64, 48, 3)
    assert (confusion.width, confusion.height) == (40, 40)


def test_tensorboard_without_the_plots_adds_no_images(tmp_path):
    run = fake_run(tmp_path)
    train(run, build("tensorboard"), [True, False])
    events = read_events(tmp_path / "tensorboard")
    assert events.Tags()["images"] == [] and [s.step for s in events.Scalars("lr")] == [1, 2]


def test_tensorboard_log_dir_option(tmp_path):
    run = fake_run(tmp_path / "run")
    run.run_dir.mkdir()
    train(run, build("tensorboard", log_dir=str(tmp_path / "logs")), [True])
    assert not (run.run_dir / "tensorboard").exists()
    assert [s.step for s in read_events(tmp_path / "logs").Scalars("accuracy/val")] == [1]


def test_tensorboard_a_resumed_run_appends_to_the_same_log_dir(tmp_path):
    train(fake_run(tmp_path), build("tensorboard"), [True, False])
    train(fake_run(tmp_path), build("tensorboard"), [True, False], first=3)
    events = read_events(tmp_path / "tensorboard")
    assert [s.step for s in events.Scalars("loss/val")] == [1, 2, 3, 4]


def test_tensorboard_writes_nothing_outside_rank_0(tmp_path):
    run = fake_run(tmp_path, is_main=False)
    callback = build("tensorboard")
    train(run, callback, [True, False], pngs={"curves.png": (10, 10)})
    assert callback.writer is None
    assert not (tmp_path / "tensorboard").exists()


def test_tensorboard_without_the_package_fails_at_build_time(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "tensorboard" else find_spec(name, *args))
    with pytest.raises(UsageError) as caught:
        build("tensorboard")
    assert str(caught.value) == TB_MISSING


@pytest.mark.parametrize("bad", [3, "", [1]])
def test_tensorboard_log_dir_must_be_a_path(bad):
    with pytest.raises(UsageError, match=r"--opt callback\.tensorboard\.log_dir"):
        build("tensorboard", log_dir=bad)
