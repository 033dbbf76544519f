"""The GPU check: every CUDA path of cvkit, run once on a real GPU, on data it draws itself.

    python benchmarks/gpu_check.py                   # on a machine with a CUDA GPU (a few minutes)
    python benchmarks/gpu_check.py --dry-run         # the same steps on the CPU, smaller (the suite runs this)
    bash benchmarks/gpu_check.sh                     # on a lent GPU machine: install cvkit there, then this

Each step is a ``python -m cvkit ...`` (or pytest, or the benchmark) subprocess of this one, checked
for what a CUDA path must give: the device and precision it ran on, finite numbers, the same
predictions on the GPU and on the CPU from a checkpoint saved on the GPU, nccl under ``--nproc 1``,
the grad scaler's state under fp16, the frozen backbone's two levers (cached features, fused
backbone) on the GPU, and the speed of cvkit against the plain chapter loop there
(``benchmarks/run.py --quick --device cuda``). A GPU is lent rarely and briefly, so a failed step
does not stop the others (only the steps that need its result are skipped): one run finds every
failure. The report is one JSON file (``--out``) and a table on stdout; the exit status is 1 when a
step failed, after a last line on stderr naming the first failure, else 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
STEP_TIMEOUT = 540  # seconds: one command on the lent machine may run 10 minutes at most
# the drawn data (pictures per class: train, val) and the images of export --check: the GPU run's, and
# the dry run's, just enough for every step to run its path once (the suite runs it on 2 CPU cores)
SIZES = {"gpu": {"per_class": (64, 16), "check": 16}, "dry_run": {"per_class": (4, 2), "check": 4}}


class Failed(Exception):
    """A step's check did not hold; the message is its one-line reason."""


class Check:
    def __init__(self, device: str, work: Path, dry_run: bool, bench: bool):
        self.device, self.work, self.dry_run, self.bench = device, work, dry_run, bench
        self.sizes = SIZES["dry_run" if dry_run else "gpu"]
        self.data = work / "shapes"
        self.runs = work / "runs"
        self.steps: list[dict] = []
        self.results: dict = {}
        self.predicted: dict = {}  # (checkpoint, options) -> cvkit predict's JSON on the val pictures

    # --- running ---------------------------------------------------------------------------------

    def cvkit(self, *args: str, timeout: float = STEP_TIMEOUT) -> subprocess.CompletedProcess:
        return self.command([sys.executable, "-m", "cvkit", *args], timeout=timeout)

    def command(self, argv: list[str], timeout: float = STEP_TIMEOUT) -> subprocess.CompletedProcess:
        proc = subprocess.run(argv, capture_output=True, text=True, cwd=self.work, timeout=timeout,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if proc.returncode != 0:
            lines = [line for line in proc.stderr.splitlines() if line.strip()] or ["(no output)"]
            raise Failed(f"exit {proc.returncode}: {lines[-1].strip()}")
        return proc

    def json_of(self, *args: str) -> dict | list:
        proc = self.cvkit(*args, "--json")
        try:
            return json.loads(proc.stdout)
        except json.JSONDecodeError:
            raise Failed(f"cvkit {args[0]} --json printed no JSON: {proc.stdout[:200]!r}") from None

    def predict(self, checkpoint: str, *options: str) -> list:
        """``cvkit predict`` of the val pictures. It only reads, so the same command again (the dry run's
        device is the CPU; export compares with the GPU's predictions) reuses the first answer."""
        key = (checkpoint, *options)
        if key not in self.predicted:
            self.predicted[key] = self.json_of("predict", str(self.data / "val"), "--checkpoint", checkpoint,
                                               *options)
        return self.predicted[key]

    def step(self, name: str, needs: tuple[str, ...], function) -> None:
        """Run one step unless a step it needs did not pass; record what happened."""
        missing = [n for n in needs if self.results.get(n) != "ok"]
        record = {"step": name, "status": "skipped", "seconds": 0.0, "detail": ""}
        if missing:
            record["detail"] = f"needs {', '.join(missing)}"
        else:
            started = time.perf_counter()
            try:
                outcome = function()
                record["status"], record["detail"] = ("ok", outcome) if not isinstance(outcome, tuple) else outcome
            except Failed as exc:
                record["status"], record["detail"] = "failed", str(exc)
            except subprocess.TimeoutExpired as exc:
                record["status"], record["detail"] = "failed", f"no answer in {exc.timeout:.0f} s"
            record["seconds"] = round(time.perf_counter() - started, 1)
        self.results[name] = record["status"]
        self.steps.append(record)
        print(f"[gpu-check] {record['status']:>7}  {name}  {record['detail']}", file=sys.stderr, flush=True)

    # --- the steps -------------------------------------------------------------------------------

    def device_step(self):
        report = self.json_of("device")
        self.results["device_report"] = report
        if self.device == "cuda":
            cuda = report["cuda"]
            if not cuda["available"] or not cuda["devices"]:
                raise Failed(f"torch {report['versions']['torch']} sees no CUDA GPU")
            if not report["auto"]["device"].startswith("cuda"):
                raise Failed(f"--device auto picks {report['auto']['device']}, not the GPU")
            gpu = cuda["devices"][0]
            return f"{gpu['name']}, {gpu['memory_gib']} GiB, CUDA {cuda['version']}; auto: {report['auto']}"
        return f"CPU rehearsal; auto: {report['auto']}"

    def precisions(self) -> list[str]:
        """Every precision this device runs: fp32, bf16 where it has it, fp16 on a GPU."""
        if self.device == "cuda":
            gpus = self.results["device_report"]["cuda"]["devices"]
            return ["fp32", "fp16"] + (["bf16"] if gpus and gpus[0]["bf16"] else [])
        return ["fp32", "bf16"]

    def data_step(self):
        train, val = self.sizes["per_class"]
        result = self.json_of("data", "demo", str(self.data), "--train-per-class", str(train),
                              "--val-per-class", str(val), "--size", "64")
        return f"{result['counts']['train']} train / {result['counts']['val']} val pictures"

    def train(self, name: str, *args: str) -> dict:
        out = self.runs / name
        summary = self.json_of("train", str(self.data), "--device", self.device, "--seed", "0", "--out", str(out),
                               *args)
        if not str(summary["device"]).startswith(self.device):
            raise Failed(f"trained on {summary['device']}, not {self.device}")
        if not math.isfinite(summary["best_val_accuracy"]):
            raise Failed(f"best val accuracy {summary['best_val_accuracy']}")
        losses = [float(v) for row in _metrics(out) for k, v in row.items() if k.endswith("loss")]
        if not losses or not all(math.isfinite(v) for v in losses):
            raise Failed(f"{out}/metrics.csv: losses not finite: {losses}")
        return summary

    def train_net(self, precision: str):
        summary = self.train(f"net-{precision}", "--model", "net", "--epochs", "2", "--lr", "0.05",
                             "--precision", precision, "--workers", "2")
        if summary["precision"] != precision:
            raise Failed(f"asked for {precision}, ran {summary['precision']}")
        run = _run_record(self.runs / f"net-{precision}" / "last.pt")
        if precision == "fp16" and not run["scaler"]:
            raise Failed("fp16 without the grad scaler's state in last.pt")
        return f"val acc {summary['best_val_accuracy']:.3f}, {summary['train_images_per_second']} img/s"

    def train_resnet(self, name: str, model: str, transforms: str, precision: str, lever: str):
        epochs = "2" if lever == "cached_features" else "1"
        summary = self.train(name, "--model", model, "--weights", "none", "--transforms", transforms,
                             "--epochs", epochs, "--batch-size", "16", "--lr", "0.01", "--precision", precision)
        run = _run_record(self.runs / name / "last.pt")
        if lever and not run.get(lever):
            raise Failed(f"{lever} was not used on {self.device} (run record: {run})")
        if precision == "fp16" and not run["scaler"]:
            raise Failed("fp16 without the grad scaler's state in last.pt")
        return (f"{summary['precision']}, val acc {summary['best_val_accuracy']:.3f}, "
                f"{summary['train_images_per_second']} img/s" + (f", {lever}" if lever else ""))

    def eval_step(self):
        summary_acc = _best_accuracy(self.runs / "net-fp32")
        report = self.json_of("eval", "--checkpoint", str(self.runs / "net-fp32"), "--device", self.device,
                              "--precision", "fp32")
        if not str(report["device"]).startswith(self.device):
            raise Failed(f"evaluated on {report['device']}")
        if abs(report["accuracy"] - summary_acc) > 1e-6:
            raise Failed(f"eval accuracy {report['accuracy']} differs from the run's best {summary_acc}")
        return f"accuracy {report['accuracy']:.3f} on {report['images']} images, as in training"

    def predict_step(self):
        """best.pt was saved by a run on the GPU: predictions there and on the CPU agree."""
        checkpoint = str(self.runs / "net-fp32" / "best.pt")
        here = self.predict(checkpoint, "--device", self.device, "--precision", "fp32")
        cpu = self.predict(checkpoint, "--device", "cpu", "--precision", "fp32")
        if [r["path"] for r in here] != [r["path"] for r in cpu]:
            raise Failed("the GPU and the CPU predicted different image lists")
        top = sum(a["predictions"][0]["label"] == b["predictions"][0]["label"] for a, b in zip(here, cpu))
        gap = max(abs(a["predictions"][0]["probability"] - b["predictions"][0]["probability"])
                  for a, b in zip(here, cpu))
        if top != len(here) or gap > 1e-3:
            raise Failed(f"top-1 agrees on {top} of {len(here)} images, largest probability gap {gap:.2g}")
        return f"{len(here)} images: same top-1 on {self.device} and cpu, largest probability gap {gap:.1e}"

    def ddp_step(self):
        out = self.runs / "ddp"
        self.json_of("train", str(self.data), "--model", "net", "--epochs", "1", "--device", self.device,
                     "--nproc", "1", "--workers", "0", "--out", str(out))
        run = _run_record(out / "last.pt")
        expected = "nccl" if self.device == "cuda" else "gloo"
        if run.get("backend") != expected or run.get("processes") != 1:
            raise Failed(f"--nproc 1 ran with backend {run.get('backend')} and {run.get('processes')} process(es)")
        return f"torchrun, 1 process, {expected}"

    def cuda_tests_step(self):
        proc = self.command([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "cuda",
                             "-o", "addopts=", str(REPO / "tests" / "test_cuda.py")])
        last = proc.stdout.strip().splitlines()[-1]
        if self.device == "cuda" and ("skipped" in last or "passed" not in last):
            raise Failed(f"the cuda tests did not all run: {last}")
        return last if self.device == "cuda" else ("skipped", f"no GPU here: {last}")

    def bench_step(self):
        out = self.work / "bench.json"
        self.command([sys.executable, str(HERE / "run.py"), "--quick", "--device", self.device,
                      "--rows", "net,frozen,finetune,predict", "--repeat", "1", "--out", str(out),
                      "--data-root", str(self.work / "bench-data")])
        results = json.loads(out.read_text())
        self.results["bench"] = results
        parts = []
        for name, row in results.get("rows", {}).items():
            if "error" in row:
                raise Failed(f"benchmark row {name}: {row['error']}")
            accuracy = (f" (val acc {row['cvkit_val_accuracy']:.3f} vs plain {row['best_plain_val_accuracy']:.3f})"
                        if "cvkit_val_accuracy" in row else
                        f" (agreement {row['agreement']:.3f})" if "agreement" in row else "")
            parts.append(f"{name} {row.get('ratio')}x{accuracy}")
        return "; ".join(parts) + " (cvkit / plain; --quick sizes, 1 run each)"

    def export_step(self):
        """The GPU run's checkpoint exported (ONNX and pt2, each --check'ed against PyTorch), then
        predicted with onnxruntime: the same top-1 as the checkpoint on the GPU."""
        run = self.runs / "net-fp32"
        checks = []
        for fmt in ("onnx", "pt2"):
            report = self.json_of("export", str(run), "--format", fmt, "--check", str(self.sizes["check"]))
            if not report["check"]["passed"]:
                raise Failed(f"{fmt} export: --check failed ({report['check']})")
            checks.append(f"{fmt} max |dlogit| {report['check']['max_abs_logit_difference']:.1e}")
        onnx = self.predict(str(run / "best.onnx"))
        here = self.predict(str(run / "best.pt"), "--device", self.device, "--precision", "fp32")
        top = sum(a["predictions"][0]["label"] == b["predictions"][0]["label"] for a, b in zip(onnx, here))
        if len(onnx) != len(here) or top != len(here):
            raise Failed(f"onnxruntime and {self.device} agree on {top} of {len(here)} images")
        return f"{'; '.join(checks)}; onnxruntime predict: same top-1 as {self.device} on {top} images"

    def run_all(self) -> None:
        self.step("device", (), self.device_step)
        self.step("data", ("device",), self.data_step)
        precisions = self.precisions() if self.results["device"] == "ok" else []
        for precision in precisions:
            self.step(f"train net {precision}", ("data",), lambda p=precision: self.train_net(p))
        best = "bf16" if "bf16" in precisions else "fp32"
        scaled = "fp16" if "fp16" in precisions else best
        self.step("train resnet18-frozen (fused backbone)", ("data",),
                  lambda: self.train_resnet("frozen-fused", "resnet18-frozen", "chapter", best, "frozen_backbone"))
        self.step("train resnet18-frozen (cached features)", ("data",),
                  lambda: self.train_resnet("frozen-cached", "resnet18-frozen", "plain", best, "cached_features"))
        self.step(f"train resnet18-finetune {scaled}", ("data",),
                  lambda: self.train_resnet("finetune", "resnet18-finetune", "chapter", scaled, ""))
        self.step("eval", ("train net fp32",), self.eval_step)
        self.step("predict, and the GPU's checkpoint on the CPU", ("train net fp32",), self.predict_step)
        self.step("train --nproc 1 (DDP)", ("data",), self.ddp_step)
        self.step("cuda tests", ("device",), self.cuda_tests_step)
        if self.bench:
            self.step("benchmark rows", ("device",), self.bench_step)
        self.step("export and ONNX Runtime predict", ("train net fp32",), self.export_step)


def _metrics(run_dir: Path) -> list[dict]:
    import csv

    with open(run_dir / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _best_accuracy(run_dir: Path) -> float:
    return max(float(row["val_accuracy"]) for row in _metrics(run_dir))


def _run_record(checkpoint: Path) -> dict:
    """The checkpoint's run record, and whether it holds the grad scaler's state (read on the CPU)."""
    import torch

    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)
    return {**saved.get("run", {}), "scaler": bool(saved.get("scaler_state"))}


def render(report: dict) -> str:
    lines = [f"cvkit GPU check on {report['device']}" + (" (dry run on the CPU)" if report["dry_run"] else ""),
             f"{'step':<46} {'status':>7} {'s':>6}  detail"]
    for s in report["steps"]:
        lines.append(f"{s['step']:<46} {s['status']:>7} {s['seconds']:>6.1f}  {s['detail']}")
    lines.append(f"{report['passed']} passed, {report['failed']} failed, {report['skipped']} skipped "
                 f"in {report['seconds']:.0f} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="rehearse on the CPU, smaller")
    parser.add_argument("--device", help="cuda or cpu [cuda; --dry-run: cpu]")
    parser.add_argument("--out", default="runs/gpu-check.json", help="the JSON report [runs/gpu-check.json]")
    parser.add_argument("--work-dir", help="where data and runs go [a temporary folder, removed at the end]")
    parser.add_argument("--bench", action=argparse.BooleanOptionalAction, default=None,
                        help="also the benchmark rows on this device [on for cuda, off for --dry-run]")
    args = parser.parse_args(argv)
    device = args.device or ("cpu" if args.dry_run else "cuda")
    bench = args.bench if args.bench is not None else not args.dry_run
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="cvkit-gpu-check-"))
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    check = Check(device, work.resolve(), args.dry_run, bench)
    try:
        check.run_all()
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    statuses = [s["status"] for s in check.steps]
    report = {"device": device, "dry_run": args.dry_run, "seconds": round(time.perf_counter() - started, 1),
              "passed": statuses.count("ok"), "failed": statuses.count("failed"),
              "skipped": statuses.count("skipped"), "steps": check.steps,
              "device_report": check.results.get("device_report"), "bench": check.results.get("bench")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, out)
    print(render(report))
    failed = [s for s in check.steps if s["status"] == "failed"]
    if failed:
        print(f"gpu_check: FAILED ({len(failed)} of {len(check.steps)} steps), first: "
              f"{failed[0]['step']}: {failed[0]['detail']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
