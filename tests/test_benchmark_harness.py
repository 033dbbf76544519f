"""The benchmark harness (benchmarks/run.py) runs end to end and reports its ratios.

Only the harness is checked here, never a speed: no assertion reads a timing.
"""

from __future__ import annotations

import hashlib
import importlib.util
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


def _bench_run():
    """benchmarks/run.py as a module (it puts benchmarks/ on sys.path itself)."""
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


# --- the verdicts, on made-up numbers (no timing is measured or read) --------------------------

def _train_run(workers, rate, accuracy, epochs=3):
    return {"wall_seconds": 1.0, "others_busy": 0.0,
            "result": {"workers": workers, "train_images_per_second": rate, "best_val_accuracy": accuracy,
                       "epochs": epochs, "precision": "fp32"}}


def _training_row(bench, row, plain: dict, cvkit: tuple):
    """``plain``: {config: (workers, images/s, accuracy)}; ``cvkit``: (images/s, accuracy)."""
    plains = {c: _train_run(*v) for c, v in plain.items()}
    cv = _train_run(0, *cvkit)
    cv["run"] = {"workers": 0}
    r = bench.training_summary(plains, cv)
    return {**r, **bench.judge(row, r)}


def test_judge_compares_with_the_faster_plain_configuration():
    bench = _bench_run()
    r = _training_row(bench, "net", {"0": (0, 1500.0, 0.99), "chapter": (2, 1000.0, 0.99)}, (2000.0, 0.99))
    assert r["faster_plain"] == "0"
    assert r["ratio"] == pytest.approx(2000 / 1500, abs=1e-3)
    assert r["ratios"]["chapter"] == pytest.approx(2.0)
    assert r["speed_passed"] is False and r["passed"] is False  # 2x the chapter's count, 1.33x the faster
    r = _training_row(bench, "net", {"0": (0, 900.0, 0.99), "chapter": (2, 1000.0, 0.99)}, (2000.0, 0.99))
    assert r["faster_plain"] == "chapter" and r["ratio"] == pytest.approx(2.0) and r["passed"] is True


@pytest.mark.parametrize("row, plain_accuracies, cvkit_accuracy, passes", [
    ("frozen", (0.90, 1.00), 0.94, False),  # 6 points below the best plain configuration
    ("frozen", (0.90, 1.00), 0.95, True),  # exactly at the 5-point tolerance
    ("frozen", (0.90, 0.80), 0.99, True),  # more accurate never fails
    ("finetune", (0.70, 0.80), 0.70, False),
    ("frozen-cached", (1.00, 1.00), 0.9556, True),
    ("net", (0.997, 0.99), 0.985, False),  # 1.2 points below: net's tolerance is 1 point
    ("net", (0.997, 0.99), 0.99, True),
])
def test_accuracy_guard_fails_a_fast_row(row, plain_accuracies, cvkit_accuracy, passes):
    bench = _bench_run()
    first, second = plain_accuracies
    r = _training_row(bench, row, {"0": (0, 10.0, first), "chapter": (4, 8.0, second)}, (1000.0, cvkit_accuracy))
    assert r["speed_passed"] is True  # 100x: only the accuracy decides
    assert r["best_plain_val_accuracy"] == max(plain_accuracies)
    assert r["accuracy_tolerance_points"] == bench.ACCURACY_TOLERANCE[row]
    assert r["accuracy_passed"] is passes and r["passed"] is passes


def test_table_marks_a_row_failed_by_its_accuracy():
    bench = _bench_run()
    results = {"frozen": _training_row(bench, "frozen", {"0": (0, 30.0, 1.0), "chapter": (4, 20.0, 0.99)},
                                       (120.0, 0.90))}
    lines = bench.table_rows(results)
    headline, other, accuracy = lines
    assert "vs plain 0 workers (the faster)" in headline["metric"]
    assert headline["plain"] == 30.0 and headline["ratio"] == pytest.approx(4.0)
    assert headline["passed"] is False and headline["note"].startswith("FAIL")
    assert "the chapter's 4 workers" in other["metric"] and other["ratio"] == pytest.approx(6.0)
    assert other["passed"] is None
    assert accuracy["metric"] == "best val accuracy" and accuracy["passed"] is False
    assert accuracy["plain"] == 1.0 and accuracy["cvkit"] == 0.90 and accuracy["ratio"] == pytest.approx(-10.0)
    assert "5 pt" in accuracy["target"]


def _predict_run(batch, seconds, loop_rate, top1):
    return {"wall_seconds": seconds, "others_busy": 0.0, "top1": dict(top1),
            "result": {"batch_size": batch, "loop_images_per_second": loop_rate}}


def test_predict_row_has_a_batched_plain_line_and_compares_with_the_faster():
    bench = _bench_run()
    top1 = {f"/p/{i}.jpg": "sea" for i in range(20)}
    runs = {"plain": _predict_run(1, 10.0, 4.0, top1), "plain_batched": _predict_run(32, 8.0, 6.0, top1),
            "cvkit": {"wall_seconds": 4.0, "others_busy": 0.0, "top1": dict(top1), "loop_images_per_second": 12.0},
            "cvkit_fp32": {"wall_seconds": 5.0, "others_busy": 0.0, "top1": dict(top1)}}
    r = {**bench.predict_summary(runs), "images": 20}
    assert r["faster_plain"] == "plain_batched"
    assert r["ratio"] == pytest.approx(2.0) and r["ratios"]["plain"] == pytest.approx(2.5)
    assert r["loop_ratio"] == pytest.approx(2.0) and r["agreement"] == 1.0
    lines = bench.table_rows({"predict": r})
    whole = [line for line in lines if "whole command" in line["metric"]]
    assert "vs plain batch 32 (the faster)" in whole[0]["metric"] and whole[0]["passed"] is True
    assert "vs plain one image at a time" in whole[1]["metric"] and whole[1]["passed"] is None


def test_onnx_rows_verdicts_and_table_lines():
    bench = _bench_run()
    top1 = {f"/p/{i}.jpg": "sea" for i in range(100)}

    def predict_onnx(seconds, differ):  # the row from made-up runs; ``differ`` images predicted otherwise
        runs = {"plain": _predict_run(1, 10.0, 12.0, top1),
                "cvkit_onnx": {"wall_seconds": seconds, "others_busy": 0.0, "loop_images_per_second": 60.0,
                               "ran_on": "cpu onnxruntime fp32",
                               "top1": {**top1, **{f"/p/{i}.jpg": "dusk" for i in range(differ)}}}}
        return {**bench.predict_onnx_summary(runs), "images": 100, "export": {"wall_seconds": 9.0}}

    r = predict_onnx(2.0, 1)
    assert r["images_per_second"] == {"plain": 10.0, "cvkit_onnx": 50.0}
    assert r["ratio"] == pytest.approx(5.0) and r["loop_ratio"] == pytest.approx(5.0) and r["agreement"] == 0.99
    one = {"predict_one_seconds": [0.5, 0.6, 0.7], "import_torch_seconds": [2.0, 2.0, 2.0], "predict_one_median": 0.6,
           "import_torch_median": 2.0, "ratio": 0.3, "others_busy": 0.0}
    result = {"images_per_second": {"torch-auto": 90.0, "torch-fp32": 50.0, "onnx": 60.0}, "batch_size": 32,
              "input_size": [3, 224, 224], "precision_auto": "bf16", "iterations": 7,
              "onnx_vs": {s: {"top1_agreement": 1.0, "relative_to_largest_logit": 1e-3}
                          for s in ("torch-auto", "torch-fp32")}}
    batch = {**bench.onnx_batch_summary(result), "run": {"others_busy": 0.0}}
    assert batch["ratios"] == {"torch-auto": pytest.approx(60 / 90, abs=1e-3), "torch-fp32": pytest.approx(1.2)}
    lines = bench.table_rows({"predict-onnx": r, "predict-one-onnx": one, "onnx-batch": batch})
    by_row = {}
    for line in lines:
        by_row.setdefault(line["row"], []).append(line)
    whole, loop, agreement = by_row["predict-onnx"]
    assert whole["ratio"] == pytest.approx(5.0) and whole["passed"] is True and ">= 4.0x" in whole["target"]
    assert loop["passed"] is None and agreement["passed"] is True and agreement["cvkit"] == 0.99
    assert [line["passed"] for line in by_row["predict-one-onnx"]] == [True]  # 0.3 <= 0.35
    assert [(line["plain"], line["cvkit"], line["passed"]) for line in by_row["onnx-batch"]] == [
        (90.0, 60.0, None), (50.0, 60.0, None)]  # no target
    one["ratio"] = 0.36
    lines = bench.table_rows({"predict-onnx": predict_onnx(3.0, 2), "predict-one-onnx": one})
    assert [line["passed"] for line in lines] == [False, None, False, False]  # 3.33x, 98%, 0.36
    assert set(bench.ONNX_ROWS) <= set(bench.ROWS) and not set(bench.ONNX_ROWS) & set(bench.DEFAULT_ROWS)


# --- end to end ------------------------------------------------------------------------------------

@pytest.mark.slow
def test_quick_benchmark_reports_both_baselines_and_accuracies(tmp_path):
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / "run.py"), "--quick", "--smoke", "--rows", "net,frozen,predict,help",
         "--epochs-net", "1", "--help-repeats", "1", "--data-root", str(tmp_path / "data"),
         "--work-dir", str(tmp_path / "work"), "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "cvkit vs the plain chapter loop" in proc.stdout
    assert "ratio" in proc.stdout and "target" in proc.stdout

    report = json.loads(out.read_text())
    assert report["meta"]["quick"] is True and report["meta"]["smoke"] is True  # --quick on its least data
    assert report["meta"]["rows"] == ["net", "frozen", "predict", "help"]
    rows = report["rows"]
    for name in ("net", "frozen"):
        r = rows[name]
        assert set(r["plain_runs"]) == {"0", "chapter"}, name
        assert r["plain_workers"]["0"] == 0 and r["plain_workers"]["chapter"] == {"net": 2, "frozen": 4}[name]
        for config in ("0", "chapter"):
            assert r["plain_images_per_second"][config] > 0
            assert 0 <= r["plain_val_accuracies"][config] <= 1
        assert r["cvkit_images_per_second"] > 0 and 0 <= r["cvkit_val_accuracy"] <= 1
        assert r["faster_plain"] in ("0", "chapter") and r["ratio"] > 0
        assert r["passed"] == (r["speed_passed"] and r["accuracy_passed"])

    # the frozen row: both sides start from the same pretrained backbone
    backbone = rows["frozen"]["backbone"]["file"]
    assert Path(backbone).is_file() and Path(backbone).parent.parent == tmp_path / "data" / "smoke"
    for run in rows["frozen"]["plain_runs"].values():
        assert run["cmd"][run["cmd"].index("--backbone") + 1] == backbone
    cmd = rows["frozen"]["cvkit"]["cmd"]
    assert cmd[cmd.index("--weights") + 1] == backbone
    assert "--backbone" not in rows["net"]["plain_runs"]["0"]["cmd"]

    predict = rows["predict"]
    assert predict["batch_sizes"] == {"plain": 1, "plain_batched": 32}
    assert set(predict["ratios"]) == {"plain", "plain_batched"} and predict["ratio"] > 0
    assert predict["predicted"]["plain_batched"] == predict["images"]

    metrics = [(line["row"], line["metric"]) for line in report["table"]]
    assert sum(row == "net" and metric == "best val accuracy" for row, metric in metrics) == 1
    assert any(row == "resnet18-frozen" and "the chapter's 4 workers" in metric for row, metric in metrics)
    assert any(row == "predict" and "vs plain batch 32" in metric for row, metric in metrics)
    assert any(row == "predict" and "vs plain one image at a time" in metric for row, metric in metrics)
    for line in report["table"]:
        assert {"plain", "cvkit", "ratio", "target", "passed"} <= set(line)
        assert line["passed"] in (True, False, None)


@pytest.mark.slow
def test_quick_shards_benchmark_times_both_sources_in_one_run(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH / "shards.py"), "--quick", "--root", str(tmp_path / "data"),
                           "--workers", "0", "--json"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    folder, shards = result["images_per_second"]["folder"], result["images_per_second"]["shards"]
    assert len(folder) == len(shards) == 2 and min(folder + shards) > 0
    assert result["best_ratio"] == pytest.approx(max(shards) / max(folder), rel=1e-3)
