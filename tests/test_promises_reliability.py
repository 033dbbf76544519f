"""Issue 10, reliability promises that had no test: Ctrl-C during ``predict``, a hostile
``train --weights`` file, ``CVKIT_LOADER_TIMEOUT`` (0 waits forever) and "nothing is written" when
the train and val class sets differ (docs/reliability.md rows 3, 9, 14 and 18)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import train_run
from cvkit_plugins.demo import make_shapes

FAST = ["--epochs", "1", "--workers", "0", "--batch-size", "8", "--lr", "0.01", "--seed", "0"]
NET = ["--model", "net", *FAST]
SUBPROCESS_TIMEOUT = 120


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("promises") / "shapes"
    make_shapes(root, train_per_class=4, val_per_class=16, size=32, seed=10)  # 64 val images
    return root


@pytest.fixture(scope="module")
def run(shapes, tmp_path_factory) -> Path:
    out = train_run(tmp_path_factory.mktemp("runs") / "run", str(shapes), *NET)
    assert (out / "best.pt").exists()
    return out


def _error_lines(err: str) -> list[str]:
    return [line.strip() for line in err.splitlines() if line.strip()]


def _one_line(r, code: int) -> str:
    assert r.code == code, (r.code, r.err)
    lines = _error_lines(r.err)
    assert len(lines) == 1 and "Traceback" not in r.err, r.err
    assert lines[0].startswith("cvkit: error: "), lines[0]
    return " ".join(lines[0].split())


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# --- row 14: Ctrl-C outside training is one line and exit 130, in a real process -------------------

# A ``cvkit`` run as the program (the console script's path, fast exit included), with one test
# hook: each image decoded by ``predict`` is logged to $EVENTS and then takes 50 ms more, so the
# command is surely still running when the test has seen it start and sends the signal.
PREDICT_CHILD = """
import os, sys, time
import cvkit.commands.predict as predict

real_load_image = predict.load_image

def load_image(path, **kwargs):
    picture = real_load_image(path, **kwargs)
    with open(os.environ["EVENTS"], "a") as f:
        f.write("decoded\\n")
    time.sleep(0.05)
    return picture

predict.load_image = load_image
sys.argv = ["cvkit", *sys.argv[1:]]
from cvkit.cli import main
main()
"""


def _decoded(events: Path) -> int:
    return events.read_text().count("decoded") if events.exists() else 0


def test_ctrl_c_during_predict_is_one_line_and_130(run, shapes, tmp_path):
    images = sorted((shapes / "val").rglob("*.png"))
    assert len(images) == 64
    child, events = tmp_path / "predict_child.py", tmp_path / "events.txt"
    child.write_text(PREDICT_CHILD)
    proc = subprocess.Popen([sys.executable, str(child), "predict", str(shapes / "val"), "--checkpoint", str(run),
                             "--batch-size", "4", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "EVENTS": str(events)})
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT
        while _decoded(events) < 6:  # past the first batch: the model runs, the next batch decodes
            if proc.poll() is not None:
                out, err = proc.communicate()
                pytest.fail(f"predict exited {proc.returncode} before it was interrupted: {err}")
            if time.monotonic() > deadline:
                pytest.fail(f"predict decoded no images in {SUBPROCESS_TIMEOUT}s")
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=SUBPROCESS_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert _decoded(events) < len(images), "predict finished before the signal arrived"
    assert proc.returncode == 130, (proc.returncode, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert _error_lines(err) == ["cvkit: error: interrupted (Ctrl-C)"], err
    assert out == ""  # no half-written --json document


# --- row 9: a checkpoint whose pickle would run code, given to `train --weights` --------------------

class _Payload:
    """Unpickling this creates the marker file: what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("model, wrap", [("net", "state-dict"), ("net", "checkpoint"),
                                         ("resnet18-finetune", "state-dict")])
def test_train_weights_that_would_run_code_are_refused(cli, run, shapes, tmp_path, monkeypatch, model, wrap):
    monkeypatch.delenv("CVKIT_TRUST_CHECKPOINTS", raising=False)
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    if wrap == "checkpoint":  # a real cvkit checkpoint with one extra entry
        payload = torch.load(run / "best.pt", weights_only=True)
        payload["extra"] = _Payload(marker)
    else:
        from cvkit.build import build_model

        torch.manual_seed(0)
        payload = dict(build_model(model, num_classes=4, weights="none").state_dict())
        payload["extra"] = _Payload(marker)
    torch.save(payload, evil)
    # the file is what it claims: a full-pickle load of it does run the code
    control = tmp_path / "control.pt"
    shutil.copy(evil, control)
    torch.load(control, weights_only=False)
    assert marker.exists()
    marker.unlink()

    args = ["train", str(shapes), *FAST, "--model", model, "--weights", str(evil), "--out", str(tmp_path / "out")]
    r = cli(*args)
    assert not marker.exists(), "loading the weights ran the file's code"
    line = _one_line(r, 4)
    assert str(evil) in line and "refused" in line and "--trust-checkpoints" in line, line
    assert not (tmp_path / "out" / "last.pt").exists()


# --- row 18: CVKIT_LOADER_TIMEOUT ---------------------------------------------------------------

def _loader(workers: int):
    from cvkit.data import make_loader

    data = torch.utils.data.TensorDataset(torch.zeros(4, 1), torch.zeros(4, dtype=torch.long))
    return make_loader(data, batch_size=2, shuffle=False, workers=workers, device=torch.device("cpu"))


@pytest.mark.parametrize("value, timeout", [(None, 300.0), ("0", 0.0), ("0.0", 0.0), (" 0 ", 0.0),
                                            ("2.5", 2.5), ("600", 600.0)])
def test_loader_timeout_reaches_the_dataloader(monkeypatch, value, timeout):
    """0 means no timeout at all (torch's DataLoader waits forever with timeout=0), not the default."""
    if value is None:
        monkeypatch.delenv("CVKIT_LOADER_TIMEOUT", raising=False)
    else:
        monkeypatch.setenv("CVKIT_LOADER_TIMEOUT", value)
    loader = _loader(workers=2)  # no worker starts until the loader is iterated
    assert loader.timeout == timeout
    assert _loader(workers=0).timeout == 0  # in-process loading never times out


def test_loader_timeout_zero_waits_forever_in_training(cli, shapes, tmp_path, monkeypatch):
    """Through `cvkit train`: every DataLoader it makes with workers gets timeout 0."""
    import torch.utils.data

    made = []
    real = torch.utils.data.DataLoader

    class Recording(real):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append((self.num_workers, self.timeout))

    monkeypatch.setattr(torch.utils.data, "DataLoader", Recording)
    monkeypatch.setenv("CVKIT_LOADER_TIMEOUT", "0")
    monkeypatch.setenv("CVKIT_NO_CACHE", "1")  # keep --workers 1 as asked
    r = cli("train", str(shapes), *NET, "--workers", "1", "--out", str(tmp_path / "run"), "--json")
    assert r.code == 0, r.err
    assert made and all(workers == 1 and timeout == 0 for workers, timeout in made), made


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "nan", "5s"])
def test_a_bad_loader_timeout_is_a_usage_error_naming_it(cli, shapes, tmp_path, monkeypatch, value):
    monkeypatch.setenv("CVKIT_LOADER_TIMEOUT", value)
    r = cli("train", str(shapes), *NET, "--workers", "1", "--out", str(tmp_path / "run"))
    line = _one_line(r, 2)
    assert "CVKIT_LOADER_TIMEOUT" in line and value in line, line
    assert not (tmp_path / "run" / "last.pt").exists()


# --- row 3: train and val class sets differ: exit 3 and nothing is written -------------------------

def test_class_mismatch_writes_nothing(cli, tmp_path, monkeypatch):
    data = tmp_path / "data"
    make_shapes(data, train_per_class=2, val_per_class=1, size=32, seed=11)
    shutil.move(str(data / "val" / "star"), str(data / "val" / "pentagon"))
    data_files = _files(data)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # where a run without --out goes: ./runs/<model>-<time>/

    out = work / "out"
    line = _one_line(cli("train", str(data), *NET, "--out", str(out)), 3)
    assert "val has a class the training split lacks (pentagon)" in line, line
    assert not out.exists() or not any(out.iterdir()), _files(out)
    line = _one_line(cli("train", str(data), *NET), 3)  # the default run directory
    assert "val has a class the training split lacks (pentagon)" in line
    assert _files(work) in ([], ["out"]), _files(work)  # no runs/, no stray files
    assert _files(data) == data_files  # nothing written next to the data either

    # the same commands on matching classes do write there: the checks above can see a write
    shutil.move(str(data / "val" / "pentagon"), str(data / "val" / "star"))
    assert cli("train", str(data), *NET, "--out", str(out)).code == 0
    assert (out / "last.pt").exists()
    assert cli("train", str(data), *NET).code == 0
    assert list((work / "runs").glob("*/last.pt"))
