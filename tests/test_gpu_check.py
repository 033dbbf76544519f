"""benchmarks/gpu_check.py, rehearsed on the CPU: the script a session with a lent GPU only has to run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def run_check(tmp_path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(report), *args], capture_output=True,
                          text=True, cwd=tmp_path, timeout=600)
    return proc, json.loads(report.read_text())


@pytest.mark.slow
def test_the_dry_run_passes_every_step_on_the_cpu(tmp_path):
    proc, report = run_check(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stderr[-2000:]
    status = {s["step"]: s["status"] for s in report["steps"]}
    assert status.pop("cuda tests") == "skipped"  # no GPU here: the tests skip themselves, and the check says so
    assert status.pop("export and ONNX Runtime predict") == "ok"
    assert set(status.values()) == {"ok"} and len(status) >= 10, status
    detail = {s["step"]: s["detail"] for s in report["steps"]}
    assert "gloo" in detail["train --nproc 1 (DDP)"]  # a process group of one, nccl on a GPU
    assert "cached_features" in detail["train resnet18-frozen (cached features)"]
    assert "frozen_backbone" in detail["train resnet18-frozen (fused backbone)"]
    assert report["device"] == "cpu" and report["dry_run"] and report["device_report"]["cuda"]["available"] is False
    assert f"{report['passed']} passed, 0 failed" in proc.stdout  # the table's last line


def test_a_missing_gpu_fails_at_once_in_one_line(tmp_path):
    proc, report = run_check(tmp_path, "--device", "cuda", "--no-bench")
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("gpu_check: FAILED (1 of ") and "first: device: " in last and "sees no CUDA GPU" in last
    assert [s["status"] for s in report["steps"]][:2] == ["failed", "skipped"]
    assert {s["status"] for s in report["steps"][1:]} == {"skipped"}  # nothing else ran without the device
