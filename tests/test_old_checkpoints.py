"""A run written by cvkit before the engine of issue 13 (commit 9ef4613; tests/fixtures/before-engine,
made as its expected.json says) still evaluates, predicts and resumes exactly as that cvkit did."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import REPO
from cvkit_plugins.demo import make_shapes

DATA = REPO / "tests" / "fixtures" / "before-engine"
EXPECTED = json.loads((DATA / "expected.json").read_text())


@pytest.fixture
def old_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_shapes("shapes", train_per_class=4, val_per_class=2, size=32, seed=13)
    (tmp_path / "run").mkdir()
    for name in ("last.pt", "best.pt"):  # after its one epoch both held the same checkpoint
        shutil.copy(DATA / "last.pt", tmp_path / "run" / name)
    return tmp_path / "run"


def test_an_old_checkpoint_predicts_and_evaluates_as_before(cli, old_run):
    r = cli("predict", "shapes/val", "--checkpoint", str(old_run), "--precision", "fp32", "--device", "cpu", "--json")
    assert r.code == 0, r.err
    got = [{"path": p["path"], "label": p["predictions"][0]["label"], "probability": p["predictions"][0]["probability"]}
           for p in json.loads(r.out)]
    assert [g["label"] for g in got] == [e["label"] for e in EXPECTED["predict"]]
    assert [g["probability"] for g in got] == pytest.approx([e["probability"] for e in EXPECTED["predict"]], abs=1e-6)
    r = cli("eval", "shapes", "--checkpoint", str(old_run), "--precision", "fp32", "--device", "cpu", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["accuracy"] == EXPECTED["eval"]["accuracy"]
    assert report["loss"] == pytest.approx(EXPECTED["eval"]["loss"], abs=1e-6)


def test_an_old_run_resumes_exactly(cli, old_run):
    r = cli("train", "--resume", str(old_run), "--epochs", "2", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["epochs_run"] == 1
    header, *rows = (old_run / "metrics.csv").read_text().splitlines()
    last = dict(zip(header.split(","), rows[-1].split(",")))
    for key, value in EXPECTED["resumed_epoch_2"].items():
        assert float(last[key]) == pytest.approx(value, abs=1e-6), key
