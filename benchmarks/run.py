"""cvkit against the plain chapter code, side by side, on data this script draws itself.

    python benchmarks/run.py                      # the full benchmark (~11 min on 2 quiet CPU cores)
    python benchmarks/run.py --quick              # tiny sizes, 1-2 epochs: checks the harness (~2 min)
    python benchmarks/run.py --rows net,help --out results.json
    python benchmarks/run.py --device cuda --rows frozen,frozen-cached,finetune,predict
    python benchmarks/run.py --cvkit-ref 429ec50  # cvkit as of a commit instead of the working tree

Every measurement is a subprocess of this one, run one after another (never two at once), with the
same data, epochs, batch size, learning rate and seed on both sides; each training and predict
command runs twice (``--repeat``), plain and cvkit alternating, and each side's fastest run counts:

- plain: ``benchmarks/plain.py`` (the chapter's ImageFolder -> DataLoader -> model ->
  CrossEntropyLoss -> SGD momentum 0.9 -> StepLR loop and ``train_model``, fp32; and a plain
  torchvision predict script);
- cvkit: ``cvkit train DATA --model M --weights none ... --json --out RUN`` and
  ``cvkit predict FOLDER --checkpoint RUN/best.pt --json``, with cvkit's defaults otherwise
  (``--precision auto``, ``--workers auto`` unless ``--cvkit-workers`` says otherwise).

Rows (``--rows``, comma-separated; default all):

- ``net``: the chapter's Net on the grayscale 32x32 set, 10 epochs: train images/s (images / seconds
  in train phases) cvkit / plain, and both best validation accuracies.
- ``frozen``: resnet18-frozen with the chapter's augmentation: train images/s cvkit / plain.
- ``frozen-cached``: resnet18-frozen with ``--transforms plain`` (deterministic, so cvkit may cache
  backbone features): images/s of the epochs after the first, cvkit / plain. If cvkit's
  ``metrics.csv`` has a ``train_seconds`` column the train phases are compared; otherwise (cvkit
  today) its ``seconds`` column, the whole epoch (train + val), is compared with the plain loop's
  whole epoch, and the table says so.
- ``finetune``: resnet18-finetune with the chapter's augmentation: train images/s cvkit / plain.
- ``predict``: a folder of JPEGs: images/s of the whole command (process start to exit, the same for
  both) cvkit / plain script (one image at a time, ``--plain-predict-batch``), and the top-1
  agreement of cvkit's default precision with ``--precision fp32``. The checkpoint is the
  ``frozen`` row's cvkit run, or a 1-epoch resnet18-frozen cvkit run when that row is not run.
- ``help``: median wall time of ``cvkit --help`` / median of ``python -c "import torch"``, the two
  interleaved.

The table has a target column (the issue's: net >= 1.5x with accuracy within 1 point, frozen >= 3x,
cached >= 20x per epoch, finetune >= 2x, predict >= 2x with >= 99% agreement, help <= 0.15) and
pass/fail. ``--out FILE`` writes every raw number as JSON. Each measurement also records the CPU
time of its process tree and how busy the rest of the machine was meanwhile (``others``: the share
of all cores used by processes not ours, from /proc/stat): the machine is shared, so a high share
means that row's timing is noisy. The exit status is 1 when a command failed, else 0 (also when
targets fail).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import data as bench_data  # noqa: E402

ROWS = ("net", "frozen", "frozen-cached", "finetune", "predict", "help")

# (epochs, batch size, lr) per row, full and --quick
FULL = {"net": (10, 32, 0.05), "frozen": (3, 32, 0.01), "frozen-cached": (4, 32, 0.01),
        "finetune": (2, 32, 0.01), "help_repeats": 7}
QUICK = {"net": (2, 32, 0.05), "frozen": (1, 8, 0.01), "frozen-cached": (2, 8, 0.01),
         "finetune": (1, 8, 0.01), "help_repeats": 3}

MODELS = {"frozen": "resnet18-frozen", "frozen-cached": "resnet18-frozen", "finetune": "resnet18-finetune"}
CHAPTER_WORKERS = {"net": 2, "frozen": 4, "frozen-cached": 4, "finetune": 4}  # CIFAR chapter: 2; transfer: 4

TARGETS = {
    "net": 1.5, "net-accuracy": 1.0, "frozen": 3.0, "frozen-cached": 20.0, "finetune": 2.0,
    "predict": 2.0, "predict-agreement": 0.99, "help": 0.15,
}


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- measuring subprocesses --------------------------------------------------------------------

def _cpu_jiffies():
    """(busy, total) jiffies of the whole machine, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    total = sum(fields[:8])
    return total - idle, total


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


WAIT_QUIET = {"seconds": 0.0, "share": 0.25}  # set from --wait-quiet


def busy_share(window: float = 1.0) -> float | None:
    """The share of all cores in use over the next ``window`` seconds (None off Linux)."""
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    j0 = _cpu_jiffies()
    t0 = time.perf_counter()
    time.sleep(window)
    j1 = _cpu_jiffies()
    if not (j0 and j1):
        return None
    return (j1[0] - j0[0]) / hz / ((time.perf_counter() - t0) * (os.cpu_count() or 1))


def wait_until_quiet() -> float:
    """With ``--wait-quiet S``: wait (at most S seconds) until other processes use less than a
    quarter of the machine; returns the seconds waited."""
    limit = WAIT_QUIET["seconds"]
    if limit <= 0:
        return 0.0
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        share = busy_share()
        if share is None or share < WAIT_QUIET["share"]:
            break
    return round(time.perf_counter() - start, 1)


class Failed(Exception):
    def __init__(self, record: dict):
        super().__init__(record["error"])
        self.record = record


def measure(cmd: list[str], *, log_path: Path | None = None, timeout: float | None = None,
            env: dict | None = None) -> dict:
    """Run ``cmd`` to the end; its stdout, wall seconds, CPU seconds of its process tree and the
    share of the machine that other processes used meanwhile. Raises :class:`Failed` on a
    non-zero exit."""
    waited = wait_until_quiet()
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    cores = os.cpu_count() or 1
    cpu0, jiffies0 = _children_cpu(), _cpu_jiffies()
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    wall = time.perf_counter() - t0
    cpu, jiffies1 = _children_cpu() - cpu0, _cpu_jiffies()
    others = None
    if jiffies0 and jiffies1 and wall > 0:
        busy = (jiffies1[0] - jiffies0[0]) / hz
        others = max(0.0, min(1.0, (busy - cpu) / (wall * cores)))
    if log_path is not None:
        log_path.write_text(f"$ {' '.join(cmd)}\n--- exit {proc.returncode}, {wall:.2f}s\n--- stdout\n"
                            f"{proc.stdout}\n--- stderr\n{proc.stderr}")
    record = {"cmd": cmd, "wall_seconds": round(wall, 4), "cpu_seconds": round(cpu, 3),
              "others_busy": None if others is None else round(others, 3), "returncode": proc.returncode,
              "waited_for_quiet": waited}
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
        record["error"] = f"exit {proc.returncode}: {' '.join(cmd)}\n{tail}"
        raise Failed(record)
    record["stdout"] = proc.stdout
    return record


def parse_json(text: str):
    text = text.strip()
    try:
        return json.loads(text)
    except ValueError:
        pass
    for opener in ("{", "["):  # the last line that is JSON on its own
        for line in reversed(text.splitlines()):
            if line.startswith(opener):
                try:
                    return json.loads(line)
                except ValueError:
                    continue
    raise ValueError(f"no JSON in output: {text[-300:]!r}")


def cvkit_command() -> list[str]:
    """The ``cvkit`` entry point of this interpreter's environment (what users run)."""
    exe = Path(sys.executable).parent / "cvkit"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("cvkit")
    return [found] if found else [sys.executable, "-m", "cvkit"]


# --- the rows ----------------------------------------------------------------------------------

class Bench:
    def __init__(self, args, work: Path, datasets: dict):
        self.args = args
        self.work = work
        self.data = datasets
        self.sizes = QUICK if args.quick else FULL
        self.cvkit = cvkit_command()
        self.env = cvkit_env(args.cvkit_source)
        self.results: dict = {}
        self.checkpoint: str | None = None

    def settings(self, row: str):
        epochs, batch, lr = self.sizes[row]
        override = {"net": self.args.epochs_net, "frozen": self.args.epochs_frozen,
                    "frozen-cached": self.args.epochs_cached, "finetune": self.args.epochs_finetune}[row]
        if override is not None:
            epochs = override
        if self.args.batch_size is not None:
            batch = self.args.batch_size
        if row == "net" and self.args.lr_net is not None:
            lr = self.args.lr_net
        if row != "net" and self.args.lr_resnet is not None:
            lr = self.args.lr_resnet
        if self.args.plain_workers == "chapter":
            workers = CHAPTER_WORKERS[row]
        else:
            workers = int(self.args.plain_workers)
        return epochs, batch, lr, workers

    def pairs(self, run_plain, run_cvkit) -> tuple[dict, dict]:
        """Run the plain and the cvkit side ``--repeat`` times, alternating; keep each side's run
        with the shortest wall time (the least disturbed by other processes) and list all runs."""
        plains, cvkits = [], []
        for attempt in range(1, self.args.repeat + 1):
            plains.append(run_plain(attempt))
            cvkits.append(run_cvkit(attempt))
        chosen = []
        for runs in (plains, cvkits):
            best = dict(min(runs, key=lambda r: r["wall_seconds"]))
            if len(runs) > 1:
                best["attempts"] = [{"wall_seconds": r["wall_seconds"], "others_busy": r["others_busy"],
                                     "train_images_per_second": (r.get("result") or {}).get("train_images_per_second")}
                                    for r in runs]
            chosen.append(best)
        return chosen[0], chosen[1]

    def _suffix(self, attempt: int) -> str:
        return f"-{attempt}" if self.args.repeat > 1 else ""

    def plain_train(self, row: str, model: str, data: str, transforms: str, attempt: int = 1) -> dict:
        epochs, batch, lr, workers = self.settings(row)
        cmd = [sys.executable, str(HERE / "plain.py"), "train", data, "--model", model, "--transforms", transforms,
               "--epochs", str(epochs), "--batch-size", str(batch), "--lr", str(lr), "--workers", str(workers),
               "--seed", str(self.args.seed), "--device", self.args.device]
        log(f"{row}: plain {model} ({transforms} transforms), {_epochs(epochs)}, batch {batch}, lr {lr}, "
            f"workers {workers}")
        rec = measure(cmd, log_path=self.work / f"{row}-plain{self._suffix(attempt)}.log")
        rec["result"] = parse_json(rec.pop("stdout"))
        log(f"{row}: plain {rec['result']['train_images_per_second']} train images/s, "
            f"best val acc {rec['result']['best_val_accuracy']:.3f} ({rec['wall_seconds']:.1f}s)")
        return rec

    def cvkit_train(self, row: str, model: str, data: str, transforms: str | None, *, epochs: int | None = None,
                    name: str | None = None, attempt: int = 1) -> dict:
        e, batch, lr, _ = self.settings(row)
        epochs = epochs or e
        name = (name or row) + self._suffix(attempt)
        out = self.work / f"{name}-cvkit-run"
        cmd = [*self.cvkit, "train", data, "--model", model, "--weights", "none", "--epochs", str(epochs),
               "--batch-size", str(batch), "--lr", str(lr), "--workers", self.args.cvkit_workers,
               "--seed", str(self.args.seed), "--device", self.args.device, "--json", "--out", str(out)]
        if transforms:
            cmd += ["--transforms", transforms]
        log(f"{row}: cvkit {model}" + (f" --transforms {transforms}" if transforms else "")
            + f", {_epochs(epochs)}, batch {batch}, lr {lr}, --workers {self.args.cvkit_workers}")
        rec = measure(cmd, log_path=self.work / f"{name}-cvkit.log", env=self.env)
        rec["result"] = parse_json(rec.pop("stdout"))
        rec["metrics"] = read_metrics(out / "metrics.csv")
        rec["run"] = read_run_record(out / "last.pt")
        log(f"{row}: cvkit {rec['result'].get('train_images_per_second')} train images/s, best val acc "
            f"{rec['result'].get('best_val_accuracy')} ({rec['result'].get('precision')}, {rec['wall_seconds']:.1f}s)")
        return rec

    def row_net(self) -> dict:
        data = self.data["gray"]["root"]
        plain, cv = self.pairs(lambda a: self.plain_train("net", "net", data, "chapter", attempt=a),
                               lambda a: self.cvkit_train("net", "net", data, None, attempt=a))
        p, c = plain["result"], cv["result"]
        return {"plain": plain, "cvkit": cv,
                "ratio": _ratio(c.get("train_images_per_second"), p["train_images_per_second"]),
                "plain_val_accuracy": p["best_val_accuracy"], "cvkit_val_accuracy": c.get("best_val_accuracy"),
                "accuracy_gap_points": _points(c.get("best_val_accuracy"), p["best_val_accuracy"])}

    def _resnet_row(self, row: str, transforms: str) -> dict:
        data = self.data["rgb"]["root"]
        model = MODELS[row]
        plain, cv = self.pairs(
            lambda a: self.plain_train(row, model, data, transforms, attempt=a),
            lambda a: self.cvkit_train(row, model, data, "plain" if transforms == "plain" else None, attempt=a))
        if row == "frozen":
            self.checkpoint = cv["result"].get("best_checkpoint")
        p, c = plain["result"], cv["result"]
        return {"plain": plain, "cvkit": cv,
                "ratio": _ratio(c.get("train_images_per_second"), p["train_images_per_second"]),
                "plain_val_accuracy": p["best_val_accuracy"], "cvkit_val_accuracy": c.get("best_val_accuracy")}

    def row_frozen(self) -> dict:
        return self._resnet_row("frozen", "chapter")

    def row_finetune(self) -> dict:
        return self._resnet_row("finetune", "chapter")

    def row_frozen_cached(self) -> dict:
        result = self._resnet_row("frozen-cached", "plain")
        p_hist = result["plain"]["result"]["history"]
        c_hist = result["cvkit"]["metrics"]
        train_size = result["plain"]["result"]["train_size"]
        later_p = [r for r in p_hist if r["epoch"] >= 2]
        later_c = [r for r in c_hist if r.get("epoch", 0) >= 2]
        basis = ("train phase" if later_c and all(isinstance(r.get("train_seconds"), float) for r in later_c)
                 else "epoch")
        if basis == "train phase":
            plain_rate = _rate(sum(r["train_images"] for r in later_p), sum(r["train_seconds"] for r in later_p))
            cvkit_rate = _rate(train_size * len(later_c), sum(r["train_seconds"] for r in later_c))
        else:  # cvkit's metrics.csv has the whole epoch's seconds only: compare whole epochs
            plain_rate = _rate(sum(r["train_images"] for r in later_p), sum(r["seconds"] for r in later_p))
            cvkit_rate = _rate(train_size * len(later_c), sum(r["seconds"] for r in later_c
                                                              if isinstance(r.get("seconds"), float)))
        key = "train_seconds" if basis == "train phase" else "seconds"
        first_p = p_hist[0] if p_hist else None
        first_c = c_hist[0] if c_hist else None
        result.update({
            "basis": basis,
            "epochs_compared": len(later_c),
            "plain_later_epoch_images_per_second": plain_rate,
            "cvkit_later_epoch_images_per_second": cvkit_rate,
            "ratio_per_later_epoch": _ratio(cvkit_rate, plain_rate),
            "ratio_first_epoch": _ratio(_rate(train_size, first_c.get(key)) if first_c else None,
                                        _rate(train_size, first_p[key]) if first_p else None),
            "note": None if basis == "train phase" else
            "cvkit's metrics.csv has no per-epoch train time: images/s = train images / epoch seconds "
            "(train + val phases), the same for the plain loop",
        })
        if not later_c:
            result["note"] = "needs at least 2 epochs (--epochs-cached)"
        return result

    def row_predict(self) -> dict:
        folder = self.data["predict"]["root"]
        images = self.data["predict"]["images"]
        made = None
        if not self.checkpoint:
            made = self.cvkit_train("frozen", "resnet18-frozen", self.data["rgb"]["root"], None, epochs=1,
                                    name="predict-checkpoint-run")
            self.checkpoint = made["result"]["best_checkpoint"]
        ck = self.checkpoint
        plain_preds = self.work / "plain-predictions.json"
        cmd = [sys.executable, str(HERE / "plain.py"), "predict", folder, "--checkpoint", ck,
               "--out", str(plain_preds), "--batch-size", str(self.args.plain_predict_batch),
               "--device", self.args.device]
        base = [*self.cvkit, "predict", folder, "--checkpoint", ck, "--top-k", "1", "--device", self.args.device,
                "--json"]
        runs = {"plain": [], "cvkit": [], "cvkit_fp32": []}
        for attempt in range(1, self.args.repeat + 1):
            s = self._suffix(attempt)
            log(f"predict: plain script on {images} JPEGs, batch {self.args.plain_predict_batch}")
            rec = measure(cmd, log_path=self.work / f"predict-plain{s}.log")
            rec["result"] = parse_json(rec.pop("stdout"))
            runs["plain"].append(rec)
            log("predict: cvkit predict (default precision)")
            rec = measure(base, log_path=self.work / f"predict-cvkit{s}.log", env=self.env)
            report = parse_json(rec.pop("stdout"))
            rec["top1"] = _top1(report)
            rec["loop_images_per_second"] = _loop_rate(self.work / f"predict-cvkit{s}.log")
            runs["cvkit"].append(rec)
            log("predict: cvkit predict --precision fp32")
            rec = measure([*base, "--precision", "fp32"], log_path=self.work / f"predict-cvkit-fp32{s}.log",
                          env=self.env)
            rec["top1"] = _top1(parse_json(rec.pop("stdout")))
            runs["cvkit_fp32"].append(rec)
        for key, recs in runs.items():  # the least disturbed run of each command
            best = dict(min(recs, key=lambda r: r["wall_seconds"]))
            if len(recs) > 1:
                best["attempts"] = [{"wall_seconds": r["wall_seconds"], "others_busy": r["others_busy"]} for r in recs]
            runs[key] = best
        plain, cv, cv32 = runs["plain"], runs["cvkit"], runs["cvkit_fp32"]
        cv_top, cv32_top = cv.pop("top1"), cv32.pop("top1")
        plain_top = json.loads(plain_preds.read_text())
        common = sorted(set(cv_top) & set(cv32_top))
        agree = sum(cv_top[p] == cv32_top[p] for p in common)
        common_plain = sorted(set(plain_top) & set(cv32_top))
        plain_rate = _rate(plain["result"]["images"], plain["wall_seconds"])
        cvkit_rate = _rate(len(cv_top), cv["wall_seconds"])
        log(f"predict: plain {plain_rate} images/s, cvkit {cvkit_rate} images/s (whole commands)")
        return {"plain": plain, "cvkit": cv, "cvkit_fp32": cv32, "checkpoint": ck, "checkpoint_run": made,
                "images": images, "predicted": {"plain": len(plain_top), "cvkit": len(cv_top), "cvkit_fp32": len(cv32_top)},
                "plain_images_per_second": plain_rate, "cvkit_images_per_second": cvkit_rate,
                "cvkit_fp32_images_per_second": _rate(len(cv32_top), cv32["wall_seconds"]),
                "ratio": _ratio(cvkit_rate, plain_rate),
                "loop_ratio": _ratio(cv.get("loop_images_per_second"), plain["result"]["loop_images_per_second"]),
                "agreement": round(agree / len(common), 4) if common else None,
                "plain_vs_cvkit_fp32_agreement": (round(sum(plain_top[p] == cv32_top[p] for p in common_plain)
                                                        / len(common_plain), 4) if common_plain else None),
                "timing": "wall time of each whole command (start-up, imports, model load, all images)"}

    def row_help(self) -> dict:
        n = self.sizes["help_repeats"] if self.args.help_repeats is None else self.args.help_repeats
        help_cmd = [*self.cvkit, "--help"]
        torch_cmd = [sys.executable, "-c", "import torch"]
        log(f"help: {' '.join(help_cmd)} and python -c 'import torch', {n} times each, interleaved")
        helps, torches, others = [], [], []
        for _ in range(n):
            h = measure(help_cmd, env=self.env)
            t = measure(torch_cmd)
            helps.append(h["wall_seconds"])
            torches.append(t["wall_seconds"])
            others += [h["others_busy"], t["others_busy"]]
        h_med, t_med = statistics.median(helps), statistics.median(torches)
        others = [o for o in others if o is not None]
        return {"help_seconds": helps, "import_torch_seconds": torches, "help_median": round(h_med, 4),
                "import_torch_median": round(t_med, 4), "ratio": round(h_med / t_med, 4) if t_med else None,
                "others_busy": round(statistics.mean(others), 3) if others else None}

    def run(self, rows) -> bool:
        ok = True
        for row in rows:
            method = getattr(self, "row_" + row.replace("-", "_"))
            started = time.perf_counter()
            try:
                self.results[row] = method()
            except Failed as exc:
                ok = False
                self.results[row] = {"error": exc.record["error"], "failed": exc.record}
                log(f"{row}: FAILED\n{exc.record['error']}")
            except (ValueError, KeyError, TypeError, OSError) as exc:
                ok = False
                self.results[row] = {"error": f"{type(exc).__name__}: {exc}"}
                log(f"{row}: FAILED: {type(exc).__name__}: {exc}")
            self.results[row]["row_seconds"] = round(time.perf_counter() - started, 2)
        return ok


def read_metrics(path: Path) -> list[dict]:
    if not path.exists():
        return []
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row = {}
            for key, value in raw.items():
                try:
                    row[key] = int(value) if key == "epoch" else float(value)
                except (TypeError, ValueError):
                    row[key] = value if value not in ("", None) else None
            rows.append(row)
    return rows


def read_run_record(path: Path) -> dict | None:
    """The ``run`` record of a cvkit checkpoint (resolved device, precision, workers), if readable."""
    try:
        import torch

        return torch.load(path, map_location="cpu", weights_only=True).get("run")
    except Exception:  # noqa: BLE001 - informative only
        return None


def _loop_rate(log_path: Path):
    """cvkit predict's own images/s of its loop, from the summary line it writes on stderr with
    --json ("N images, model M from C, S.SSs (R images/s, ...)"); None for a cvkit without it."""
    import re

    found = re.findall(r"\(([0-9.]+) images/s, ", log_path.read_text(errors="replace"))
    return float(found[-1]) if found else None


def _top1(report) -> dict:
    items = report["results"] if isinstance(report, dict) else report
    return {os.path.abspath(r["path"]): r["predictions"][0]["label"] for r in items}


def _rate(images, seconds):
    return round(images / seconds, 3) if images and seconds else None


def _ratio(a, b):
    return round(a / b, 3) if a is not None and b else None


def _points(a, b):
    return round(100 * (a - b), 2) if a is not None and b is not None else None


# --- the table ---------------------------------------------------------------------------------

def _others(*records) -> str:
    values = [r.get("others_busy") for r in records if isinstance(r, dict) and r.get("others_busy") is not None]
    return f"{max(values):.0%}" if values else "?"


def table_rows(results: dict, args) -> list[dict]:
    """One dict per line of the table: row, metric, plain, cvkit, ratio, target, passed, note."""
    lines = []

    def add(row, metric, plain, cvkit, ratio, target, passed, note=""):
        lines.append({"row": row, "metric": metric, "plain": plain, "cvkit": cvkit, "ratio": ratio,
                      "target": target, "passed": passed, "note": note})

    def workers_note(r):
        run = (r["cvkit"].get("run") or {})
        return (f"workers plain {r['plain']['result']['workers']} / cvkit {run.get('workers', '?')}, "
                f"cvkit {r['cvkit']['result'].get('precision')}, others busy {_others(r['plain'], r['cvkit'])}")

    for row, r in results.items():
        if "error" in r:
            add(row, "error", None, None, None, None, False, r["error"].splitlines()[0])
            continue
        if row == "net":
            e = r["plain"]["result"]["epochs"]
            add("net", f"train images/s, {_epochs(e)}", r["plain"]["result"]["train_images_per_second"],
                r["cvkit"]["result"].get("train_images_per_second"), r["ratio"], f">= {TARGETS['net']}x",
                _ge(r["ratio"], TARGETS["net"]), workers_note(r))
            gap = r["accuracy_gap_points"]
            add("net", "best val accuracy", r["plain_val_accuracy"], r["cvkit_val_accuracy"],
                None if gap is None else gap, "within 1 point",
                None if gap is None else abs(gap) <= TARGETS["net-accuracy"],
                "ratio column: cvkit - plain, in points")
        elif row in ("frozen", "finetune"):
            name = "resnet18-frozen" if row == "frozen" else "resnet18-finetune"
            e = r["plain"]["result"]["epochs"]
            add(name, f"train images/s, chapter augmentation, {_epochs(e)}",
                r["plain"]["result"]["train_images_per_second"], r["cvkit"]["result"].get("train_images_per_second"),
                r["ratio"], f">= {TARGETS[row]}x", _ge(r["ratio"], TARGETS[row]),
                workers_note(r) + f"; val acc plain {r['plain_val_accuracy']:.3f} cvkit "
                f"{_fmt(r['cvkit_val_accuracy'])}")
        elif row == "frozen-cached":
            basis = "train phase" if r["basis"] == "train phase" else "whole epoch (train+val)"
            add("resnet18-frozen, plain transforms", f"images/s per epoch after the first, {basis}, "
                f"{_epochs(r['epochs_compared'])}", r["plain_later_epoch_images_per_second"],
                r["cvkit_later_epoch_images_per_second"], r["ratio_per_later_epoch"],
                f">= {TARGETS['frozen-cached']}x", _ge(r["ratio_per_later_epoch"], TARGETS["frozen-cached"]),
                workers_note(r) + f"; first epoch ratio {_fmt(r['ratio_first_epoch'])}")
        elif row == "predict":
            add("predict", f"images/s, {r['images']} JPEGs, whole command", r["plain_images_per_second"],
                r["cvkit_images_per_second"], r["ratio"], f">= {TARGETS['predict']}x",
                _ge(r["ratio"], TARGETS["predict"]),
                f"plain one image at a time (batch {args.plain_predict_batch}), its loop alone "
                f"{r['plain']['result']['loop_images_per_second']} images/s; cvkit fp32 "
                f"{r['cvkit_fp32_images_per_second']} images/s; others busy "
                f"{_others(r['plain'], r['cvkit'], r['cvkit_fp32'])}")
            add("predict", f"images/s, {r['images']} JPEGs, loop alone (read, transform, model)",
                r["plain"]["result"]["loop_images_per_second"], r["cvkit"].get("loop_images_per_second"),
                r.get("loop_ratio"), "", None,
                "each command's own timing of its loop over the images, start-up and model loading left out; "
                "the target is on the whole command")
            add("predict", "top-1 agreement, default precision vs fp32", None, r["agreement"], r["agreement"],
                f">= {TARGETS['predict-agreement']:.0%}", _ge(r["agreement"], TARGETS["predict-agreement"]),
                f"plain script vs cvkit fp32: {_fmt(r['plain_vs_cvkit_fp32_agreement'])}")
        elif row == "help":
            add("--help", "seconds (median): import torch vs cvkit --help", r["import_torch_median"],
                r["help_median"], r["ratio"], f"<= {TARGETS['help']}", _le(r["ratio"], TARGETS["help"]),
                f"{len(r['help_seconds'])} run{'s' if len(r['help_seconds']) != 1 else ''} each, interleaved; others busy "
                f"{'?' if r['others_busy'] is None else format(r['others_busy'], '.0%')}")
    return lines


def _ge(value, target):
    return None if value is None else value >= target


def _le(value, target):
    return None if value is None else value <= target


def _fmt(value):
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def print_table(lines: list[dict], meta: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(170, shutil.get_terminal_size((170, 40)).columns))
    commit = meta.get("cvkit_commit") or "?"
    if meta.get("cvkit_uncommitted_changes"):
        commit += " + uncommitted changes"
    title = (f"cvkit vs the plain chapter loop: {meta['date']}, {meta['cpu']} ({meta['cores']} cores), "
             f"torch {meta['torch']}, device {meta['device']}, cvkit {commit}" + (" [--quick]" if meta["quick"] else ""))
    table = Table(title=title, title_justify="left", show_lines=False)
    for name, justify in (("row", "left"), ("metric", "left"), ("plain", "right"), ("cvkit", "right"),
                          ("ratio", "right"), ("target", "right"), ("", "center"), ("notes", "left")):
        table.add_column(name, justify=justify, overflow="fold")
    for line in lines:
        mark = {True: "[green]pass[/]", False: "[red]FAIL[/]", None: "-"}[line["passed"]]
        ratio = line["ratio"]
        ratio_text = "-" if ratio is None else (f"{ratio:+.2f} pt" if line["metric"] == "best val accuracy"
                                                else f"{ratio:.1%}" if "agreement" in line["metric"]
                                                else f"{ratio:.2f}x" if line["row"] != "--help" else f"{ratio:.3f}")
        table.add_row(line["row"], line["metric"], _fmt(line["plain"]), _fmt(line["cvkit"]), ratio_text,
                      line["target"] or "-", mark, line["note"])
    console.print(table)


# --- main --------------------------------------------------------------------------------------

def export_cvkit(ref: str, work: Path) -> tuple[Path, str]:
    """``cvkit/`` and ``plugins/`` of git commit ``ref`` of this checkout, exported into ``work``
    (``plugins`` also as ``cvkit_plugins``, its installed name); returns the folder and the commit."""
    commit = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", f"{ref}^{{commit}}"],
                            capture_output=True, text=True)
    if commit.returncode != 0:
        raise SystemExit(f"--cvkit-ref {ref}: not a commit of {HERE.parent} ({commit.stderr.strip()})")
    folder = work / f"cvkit-{commit.stdout.strip()}"
    folder.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(HERE.parent), "archive", ref, "cvkit", "plugins"],
                             capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    (folder / "cvkit_plugins").symlink_to("plugins")
    return folder, commit.stdout.strip()


def cvkit_env(source: str | None) -> dict | None:
    """The environment of cvkit's commands: PYTHONPATH starts with ``source`` when one is given."""
    if not source:
        return None
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(source), env.get("PYTHONPATH")) if p)
    return env


def machine_info(device: str, env: dict | None = None) -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cores": os.cpu_count(),
            "cpu": platform.processor() or platform.machine()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        if device.startswith("cuda") and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        info["torch"] = "?"
    try:
        import torchvision

        info["torchvision"] = torchvision.__version__
    except ImportError:
        pass
    # the cvkit the commands import (PYTHONPATH may point at another copy than this checkout)
    found = subprocess.run([sys.executable, "-c", "import cvkit, os; print(os.path.dirname(os.path.abspath(cvkit.__file__)))"],
                           capture_output=True, text=True, env=env, cwd=tempfile.gettempdir())  # not ./cvkit
    source = found.stdout.strip() or None
    info["cvkit_source"] = source
    if source:
        try:
            top = subprocess.run(["git", "-C", source, "rev-parse", "--show-toplevel"], capture_output=True,
                                 text=True).stdout.strip()
            if top and Path(top).resolve() == Path(source).resolve().parent:
                info["cvkit_commit"] = subprocess.run(["git", "-C", top, "rev-parse", "--short", "HEAD"],
                                                      capture_output=True, text=True).stdout.strip() or None
                dirty = subprocess.run(["git", "-C", top, "status", "--porcelain", "--", "cvkit", "plugins"],
                                       capture_output=True, text=True).stdout.strip()
                info["cvkit_uncommitted_changes"] = bool(dirty)
            else:
                info["cvkit_commit"] = "not a git checkout"
        except OSError:
            pass
    return info


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny data, 1-2 epochs: checks the harness, not speed")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, from {','.join(ROWS)} [all]")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (both sides) [cpu]")
    parser.add_argument("--out", help="write the raw numbers as JSON here")
    parser.add_argument("--data-root", default=".bench-data", help="cache of the drawn data [.bench-data]")
    parser.add_argument("--work-dir", help="where cvkit runs and logs go [a temporary folder, removed at the end]")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs-net", type=int, help="[10; --quick 2]")
    parser.add_argument("--epochs-frozen", type=int, help="[3; --quick 1]")
    parser.add_argument("--epochs-cached", type=int, help="[4; --quick 2] (at least 2)")
    parser.add_argument("--epochs-finetune", type=int, help="[2; --quick 1]")
    parser.add_argument("--batch-size", type=int, help="for every training row [32; --quick 8 for resnets]")
    parser.add_argument("--lr-net", type=float, help="[0.05]")
    parser.add_argument("--lr-resnet", type=float, help="[0.01]")
    parser.add_argument("--plain-workers", default="chapter",
                        help="DataLoader workers of the plain loop: a number, or chapter (2 for net as in the "
                             "CIFAR chapter, 4 for the resnets as in the transfer-learning chapter) [chapter]")
    parser.add_argument("--cvkit-workers", default="auto", help="cvkit train --workers [auto]")
    parser.add_argument("--plain-predict-batch", type=int, default=1,
                        help="images per forward pass of the plain predict script [1: one at a time]")
    parser.add_argument("--help-repeats", type=int, help="runs of each command in the help row [7; --quick 3]")
    parser.add_argument("--cvkit-ref", metavar="COMMIT",
                        help="benchmark cvkit/ and plugins/ as of this git commit (exported to the work folder "
                             "and put first on cvkit's PYTHONPATH) instead of the working tree; the installed "
                             "entry points must name the same plugin modules [the working tree]")
    parser.add_argument("--repeat", type=int,
                        help="run each training and predict command this many times, plain and cvkit "
                             "alternating, and keep each side's fastest run (for noisy machines) [2; --quick 1]")
    parser.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                        help="before each measurement wait up to this long for other processes to leave "
                             "the machine mostly idle (for shared machines) [0: do not wait]")
    args = parser.parse_args(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown or not rows:
        parser.error(f"--rows: unknown {', '.join(unknown) or 'nothing'}; choose from {','.join(ROWS)}")
    args.rows = [r for r in ROWS if r in rows]  # fixed order: predict reuses the frozen row's checkpoint
    if args.repeat is None:
        args.repeat = 1 if args.quick else 2
    if args.repeat < 1:
        parser.error("--repeat: at least 1")
    if args.plain_workers != "chapter" and not args.plain_workers.isdigit():
        parser.error("--plain-workers: a number or chapter")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    WAIT_QUIET["seconds"] = args.wait_quiet
    started = time.perf_counter()
    needs = set()
    if "net" in args.rows:
        needs.add("gray")
    if {"frozen", "frozen-cached", "finetune", "predict"} & set(args.rows):
        needs.add("rgb")
    if "predict" in args.rows:
        needs.update({"rgb", "predict"})
    log(f"data: drawing or reusing {', '.join(sorted(needs)) or 'nothing'} under {args.data_root}")
    datasets = bench_data.build_all(args.data_root, quick=args.quick, seed=args.seed,
                                    which=[n for n in ("gray", "rgb", "predict") if n in needs])
    for name, summary in datasets.items():
        summary["root"] = str(Path(summary["root"]).resolve())
        log(f"data: {name} {summary['root']} " + ("(drawn)" if summary["created"] else "(cached)"))

    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="cvkit-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="run-", dir=work)) if args.work_dir else work
    args.cvkit_source, args.cvkit_commit = None, None
    if args.cvkit_ref:
        source, args.cvkit_commit = export_cvkit(args.cvkit_ref, work)
        args.cvkit_source = str(source)
        log(f"cvkit: commit {args.cvkit_commit} exported to {source} (first on PYTHONPATH of cvkit's commands)")
    bench = Bench(args, work, datasets)
    ok = bench.run(args.rows)

    meta = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "quick": args.quick,
            "device": args.device, "rows": args.rows, "seconds": round(time.perf_counter() - started, 1),
            "cvkit": bench.cvkit, "settings": {row: dict(zip(("epochs", "batch_size", "lr", "plain_workers"),
                                                             bench.settings(row)))
                                               for row in ("net", "frozen", "frozen-cached", "finetune")},
            "cvkit_workers": args.cvkit_workers, "plain_predict_batch": args.plain_predict_batch,
            "repeat": args.repeat, "wait_quiet": args.wait_quiet,
            "data": datasets, **machine_info(args.device, bench.env)}
    if args.cvkit_ref:
        meta.update({"cvkit_ref": args.cvkit_ref, "cvkit_commit": args.cvkit_commit,
                     "cvkit_uncommitted_changes": False})
    lines = table_rows(bench.results, args)
    print_table(lines, meta)
    for row, s in meta["settings"].items():
        if row in args.rows or (row == "frozen" and "predict" in args.rows):
            print(f"  {row}: {_epochs(s['epochs'])}, batch {s['batch_size']}, lr {s['lr']}, plain loop "
                  f"num_workers={s['plain_workers']}, cvkit --workers {args.cvkit_workers}")
    if args.repeat > 1:
        print(f"  each training and predict command ran {args.repeat} times (plain and cvkit alternating); "
              f"the table shows each side's fastest run")
    print(f"benchmark took {meta['seconds']:.0f}s; work folder {work}" + ("" if args.keep or args.work_dir
                                                                           else " (removed)"))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"meta": meta, "table": lines, "rows": bench.results}, indent=1,
                                             default=str) + "\n")
        print(f"raw numbers: {args.out}")
    if not (args.keep or args.work_dir):
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
