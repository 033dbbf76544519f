"""`cvkit lr-find`: the learning-rate range test on a tiny drawn set (each sweep a few seconds)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

import pytest
from PIL import Image

from conftest import REPO
from cvkit.commands.lr_find import MAX_STEPS, lr_schedule, smooth, suggest
from cvkit_plugins.demo import make_shapes

# AdamW descends clearly on this set in 100 steps; SGD barely moves before it diverges
FAST = ("--model", "net", "--workers", "0", "--device", "cpu", "--precision", "fp32", "--batch-size", "16",
        "--optimizer", "adamw")


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("lr-find") / "shapes"
    make_shapes(root, train_per_class=8, val_per_class=2, size=32, seed=6)
    return root


def snapshot(root) -> dict:
    """Every file under ``root``: size, modification time and content hash."""
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_sweep_suggests_an_lr_where_the_loss_falls_and_writes_nothing(cli, shapes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(shapes)
    r = cli("lr-find", str(shapes), *FAST, "--start-lr", "1e-4", "--end-lr", "10", "--steps", "70", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    lrs, smoothed, raw = report["lrs"], report["losses"]["smoothed"], report["losses"]["raw"]
    assert report["steps"] == len(lrs) == len(smoothed) == len(raw) > 20
    assert lrs[0] == pytest.approx(1e-4) and all(b > a for a, b in zip(lrs, lrs[1:]))
    assert smoothed == pytest.approx(smooth(raw))
    # the suggestion lies on the descending part of the curve: lower than the start, before the minimum
    assert report["rule"] == "steepest"
    at = lrs.index(report["suggested_lr"])
    assert smoothed[at] < smoothed[0]
    assert report["suggested_lr"] < report["lr_at_minimum"]
    assert report["minimum_lr"] == pytest.approx(report["lr_at_minimum"] / 10)
    assert report["stopped_because"] and report["plot"] is None
    # a sweep: nothing written, no ./runs, the data as it was
    assert list(tmp_path.iterdir()) == []
    assert snapshot(shapes) == before


def test_a_huge_end_lr_ends_the_sweep_early_and_says_why(cli, shapes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = cli("lr-find", str(shapes), *FAST, "--start-lr", "0.01", "--end-lr", "1e8", "--steps", "60", "--json")
    assert r.code == 0, r.err
    report = json.loads(r.out)
    assert report["steps"] < 60
    assert report["stopped_because"] != "reached --end-lr"
    assert "4x its minimum" in report["stopped_because"] or "non-finite" in report["stopped_because"]
    assert report["suggested_lr"] < report["lrs"][-1]


def test_out_writes_only_the_png(cli, shapes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = snapshot(shapes)
    r = cli("lr-find", str(shapes), *FAST, "--start-lr", "1e-3", "--end-lr", "1e4", "--steps", "20", "--out", "plots")
    assert r.code == 0, r.err
    png = tmp_path / "plots" / "lr_find.png"
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*")] == [png.parent.relative_to(tmp_path),
                                                                        png.relative_to(tmp_path)]
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > 400
        assert "learning-rate range test" in image.text["Title"]
    assert "suggested lr" in r.out and "stopped because" in r.out and "plots/lr_find.png" in r.out
    assert "cvkit train" in r.out and "--lr" in r.out
    assert snapshot(shapes) == before


@pytest.mark.parametrize("args, words", [
    (("--steps", str(MAX_STEPS + 1)), ["--steps", str(MAX_STEPS)]),
    (("--start-lr", "1", "--end-lr", "0.1"), ["--end-lr", "--start-lr"]),
    (("--out", "curve.jpg"), ["--out", ".png"]),
])
def test_a_bad_option_is_one_line(cli, shapes, tmp_path, monkeypatch, args, words):
    monkeypatch.chdir(tmp_path)
    r = cli("lr-find", str(shapes), *FAST, *args)
    assert r.code == 2
    lines = [line for line in r.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in r.err, r.err
    for word in words:
        assert word in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_suggestion_rules_on_a_drawn_curve():
    lrs = lr_schedule(1e-6, 1.0, 61)
    assert lrs[0] == pytest.approx(1e-6) and lrs[-1] == pytest.approx(1.0) and lrs[30] == pytest.approx(1e-3)
    # flat, then falling fastest around lr 1e-3, lowest at 1e-2, then rising
    curve = [2.0 - 1.5 / (1 + (1e-3 / lr) ** 2) + 40 * max(0.0, lr - 1e-2) for lr in lrs]
    found = suggest(lrs, curve)
    assert found["rule"] == "steepest"
    assert found["suggested_lr"] == pytest.approx(1e-3, rel=0.3)
    assert found["lr_at_minimum"] == pytest.approx(1e-2, rel=0.3)
    assert found["minimum_lr"] == pytest.approx(found["lr_at_minimum"] / 10)
    # a loss that only rises has no steepest descent: the minimum's lr/10 is suggested, and says so
    rising = suggest(lrs, [1.0 + lr for lr in lrs])
    assert rising["rule"] == "minimum/10" and rising["suggested_lr"] == pytest.approx(1e-7)
    assert "lr/10" in rising["why"]


def test_lr_find_help_does_not_import_torch():
    probe = ("import sys\nfrom cvkit.cli import main\ntry:\n    main(['lr-find', '--help'])\nexcept SystemExit:\n"
             "    pass\nprint('torch' in sys.modules, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.stderr.strip().splitlines()[-1] == "False", proc.stderr
    for option in ("--start-lr", "--end-lr", "--steps", "--out", "--batch-size", "--optimizer", "--opt"):
        assert option in proc.stdout
