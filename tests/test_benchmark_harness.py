"""The benchmark harness (benchmarks/run.py) runs end to end and reports its ratios.

Only the harness is checked here, never a speed: no assertion reads a timing.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "benchmarks"


def _bench_data():
    sys.path.insert(0, str(BENCH))
    try:
        import data
    finally:
        sys.path.remove(str(BENCH))
    return data


def _digests(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_bench_data_is_deterministic_and_cached(tmp_path):
    data = _bench_data()
    first = data.make_gray(tmp_path / "a", seed=3, train_per_class=2, val_per_class=1)
    data.make_gray(tmp_path / "b", seed=3, train_per_class=2, val_per_class=1)
    assert first["created"] and first["train"] == 8 and first["val"] == 4
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")
    assert data.make_gray(tmp_path / "a", seed=3, train_per_class=2, val_per_class=1)["created"] is False

    data.make_predict(tmp_path / "p", seed=1, count=2)
    data.make_predict(tmp_path / "q", seed=1, count=2)
    assert _digests(tmp_path / "p") == _digests(tmp_path / "q")
    from PIL import Image

    for path in (tmp_path / "p").glob("*.jpg"):
        with Image.open(path) as im:
            assert im.mode == "RGB" and 300 <= im.width <= 1200


def test_bench_data_never_deletes_other_folders(tmp_path):
    data = _bench_data()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(SystemExit):
        data.make_gray(tmp_path / "mine", train_per_class=1, val_per_class=1)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.slow
def test_quick_benchmark_reports_ratios(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--rows", "net,help", "--epochs-net", "1",
         "--help-repeats", "1", "--data-root", str(tmp_path / "data"), "--work-dir", str(tmp_path / "work"),
         "--out", str(out)],
        capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cvkit vs the plain chapter loop" in proc.stdout
    assert "ratio" in proc.stdout and "target" in proc.stdout

    report = json.loads(out.read_text())
    assert report["meta"]["quick"] is True and report["meta"]["rows"] == ["net", "help"]
    net, help_row = report["rows"]["net"], report["rows"]["help"]
    for key in ("ratio", "plain_val_accuracy", "cvkit_val_accuracy", "accuracy_gap_points"):
        assert key in net, key
    assert net["ratio"] is not None and net["ratio"] > 0
    assert net["plain"]["result"]["train_images_per_second"] > 0
    assert net["cvkit"]["result"]["train_images_per_second"] > 0
    assert help_row["ratio"] is not None and help_row["ratio"] > 0

    lines = {(line["row"], line["metric"].split(",")[0]): line for line in report["table"]}
    assert set(lines) == {("net", "train images/s"), ("net", "best val accuracy"),
                          ("--help", "seconds (median): import torch vs cvkit --help")}
    for line in lines.values():
        assert {"plain", "cvkit", "ratio", "target", "passed"} <= set(line)
        assert line["passed"] in (True, False)
