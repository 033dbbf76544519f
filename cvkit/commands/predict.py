"""`cvkit predict`: top-k classes for images, files, folders or globs, in batches."""

from __future__ import annotations

import csv
import glob
import io
import os
import time
from pathlib import Path

from cvkit import ui
from cvkit.errors import DataError, UsageError
from cvkit.images import IMAGE_EXTENSIONS, load_image

GRID_MAX = 64  # pictures drawn by --grid, the first ones
GRID_THUMB = 256  # pixels, the longer side of each picture drawn (a tile is about 230)


def _walk_images(folder: str, skipped: list[dict]) -> list[Path]:
    """Image files under ``folder``, following links once (a link loop is skipped and reported);
    other files are reported as skipped, hidden ones ignored."""
    found, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            skipped.append({"path": dirpath, "reason": "symbolic link loop"})
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = os.path.join(dirpath, name)
            if not os.path.exists(path):
                skipped.append({"path": path, "reason": "broken symbolic link"})
            elif name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(path))
            else:
                skipped.append({"path": path, "reason": "not an image file"})
    return found


def expand_inputs(items: list[str]) -> tuple[list[Path], list[dict]]:
    """Files as given, folders searched for images, globs expanded; duplicates dropped, order kept.
    Returns the image paths and what was skipped (path and reason)."""
    paths: list[Path] = []
    skipped: list[dict] = []
    for item in items:
        if any(ch in item for ch in "*?[") and not os.path.exists(item):
            matches = sorted(glob.glob(item, recursive=True))
            files = [Path(m) for m in matches if os.path.isfile(m) and m.lower().endswith(IMAGE_EXTENSIONS)]
            if not files:
                raise DataError(f"{item}: no images match this pattern")
            paths += files
        elif os.path.isdir(item):
            found = _walk_images(item, skipped)
            if not found:
                raise DataError(f"{item}: folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        elif os.path.exists(item):
            paths.append(Path(item))
        else:
            raise DataError(f"{item}: no such file or folder")
    seen, unique = set(), []
    for p in paths:
        if p not in seen:
            seen.add(p)
            unique.append(p)
    return unique, skipped


def dataset_inputs(data: str, dataset: str, options: dict | None, plugins) -> list:
    """The images of DATA in format ``dataset``, every split: their files where the format lists
    them, else ``(name, picture)`` pairs read from it (a stream), named ``DATA[i]``."""
    from cvkit.build import build_dataset, dataset_splits

    has = dataset_splits(dataset, data, options=options, plugins=plugins)
    items, seen = [], set()
    for split in [s for s in ("train", "val", "test") if s in has] or [None]:
        ds = build_dataset(dataset, data, split=split, transform=None, options=options, plugins=plugins)
        samples = getattr(ds, "samples", None)
        if samples is None:
            start = len(items)
            items += [(f"{data}[{start + i}]", picture) for i, (picture, _) in enumerate(ds)]
            continue
        for path, _ in samples:
            if path not in seen:
                seen.add(path)
                items.append(Path(path))
    if not items:
        raise DataError(f"{data}: no images ({dataset} format)")
    return items


def predict_images(images: list[str], *, checkpoint: str | None = None, top_k: int = 3, batch_size: int = 32,
                   device: str = "auto", precision: str = "auto", grid: str | None = None,
                   grid_input: bool = False, dataset: str | None = None, dataset_options: dict | None = None,
                   tta: bool = False, plugins=None) -> dict:
    """Top-k classes of ``images`` (files, folders, globs; with ``dataset``, the data of that
    format, e.g. a CSV of labels or shards: every image it holds). ``grid``: also draw the first
    :data:`GRID_MAX` images into this PNG, each captioned with its top class and probability: the
    user's own pictures, or with ``grid_input`` what the model was given (after the eval transform).
    ``checkpoint`` may be an ``.onnx`` file ``cvkit export`` wrote: it runs with onnxruntime, and
    nothing here imports torch. ``tta``: each image is also predicted mirrored (the views of
    :data:`cvkit.onnxrun.TTA_VIEWS`), and the probabilities are the mean of the views'."""
    from cvkit.onnxrun import TTA_VIEWS

    if top_k < 1:
        raise UsageError(f"--top-k {top_k}: must be at least 1")
    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    if dataset:
        if len(images) != 1:
            raise UsageError(f"--dataset {dataset}: give one DATA to predict, not {len(images)}")
        paths, skipped = dataset_inputs(images[0], dataset, dataset_options, plugins), []
    else:
        paths, skipped = expand_inputs(images)
    views = TTA_VIEWS if tta else None
    model = load_predictor(checkpoint, device, precision, plugins, views)
    k = min(top_k, len(model.classes))
    results, shown = [], []
    started = time.perf_counter()
    for chunk, inputs, failed in decoded_batches(paths, batch_size, model.transform, model.min_side):
        skipped += failed
        if not inputs:
            continue
        for p, x, preds in zip(chunk, inputs, top_classes(model, inputs, k)):
            results.append({"path": str(p), "predictions": preds})
            if grid and len(shown) < GRID_MAX:
                shown.append(x)
    seconds = time.perf_counter() - started
    if not results:
        raise DataError(f"no readable images among {len(paths)} ({skipped[0]['path']}: {skipped[0]['reason']})")
    report = {"checkpoint": str(model.path), "model": model.name, "device": model.device,
              "precision": model.precision, "tta": list(views) if views else None, "images": len(results),
              "seconds": round(seconds, 4),
              "images_per_second": round(len(results) / seconds, 2) if seconds > 0 else None,
              "results": results, "skipped": skipped}
    if grid:
        report["grid"] = str(_draw_grid(Path(grid), results[:len(shown)], shown, model, len(results),
                                        grid_input=grid_input))
    return report


def load_predictor(checkpoint, device: str = "auto", precision: str = "auto", plugins=None, views=None):
    """The model of a checkpoint, run directory or exported file, ready to predict: an
    :class:`OnnxPredictor` for an ``.onnx`` file (no torch), else a :class:`TorchPredictor`. Both
    have ``transform`` (picture -> model input), ``logits(inputs)``, ``classes`` and ``min_side``."""
    from cvkit.onnxrun import is_onnx

    return (OnnxPredictor if is_onnx(checkpoint) else TorchPredictor)(checkpoint, device, precision, plugins, views)


def top_classes(model, inputs: list, k: int) -> list[list[dict]]:
    """Per input, its ``k`` most likely classes as ``predict --json`` gives them: ``{"label",
    "probability"}`` (6 digits), the most likely first."""
    from cvkit.onnxrun import softmax_topk

    values, indices = softmax_topk(model.logits(inputs), k)
    return [[{"label": model.classes[i], "probability": round(float(v), 6)} for v, i in zip(vs.tolist(), ids.tolist())]
            for vs, ids in zip(values, indices)]


class TorchPredictor:
    """A cvkit checkpoint (or an exported ``.safetensors``) rebuilt in PyTorch."""

    def __init__(self, checkpoint, device, precision, plugins, views=None):
        from cvkit.build import decode_min_side
        from cvkit.device import resolve_device, resolve_precision
        from cvkit.inference import restore_model, with_tta

        self.dev = resolve_device(device)
        self.precision = resolve_precision(precision, self.dev)
        self.model, ckpt, spec, self.transform, self.path = restore_model(checkpoint, device=self.dev,
                                                                          plugins=plugins)
        self.classes, self.name, self.device = list(ckpt["classes"]), spec.name, str(self.dev)
        self.mean, self.std, self.input_size = spec.mean, spec.std, spec.input_size
        self.min_side = decode_min_side(spec)  # large JPEGs decode at a reduced scale, never below this
        if views:  # its logits are then the log of the views' mean probabilities
            self.model = with_tta(self.model, views)

    def logits(self, inputs):
        import torch

        from cvkit.device import autocast

        batch = torch.stack(inputs).to(self.dev)  # one image alone is still a batch: N=1
        with torch.inference_mode(), autocast(self.dev, self.precision):
            return self.model(batch).float().cpu().numpy()

    def model_input(self, x):
        from cvkit import reports

        return reports.denormalize(x, self.mean, self.std)


class OnnxPredictor:
    """An ``.onnx`` file cvkit exported, run by onnxruntime on the CPU, fp32; numpy, no torch."""

    def __init__(self, checkpoint, device, precision, plugins, views=None):
        from cvkit.onnxrun import OnnxModel

        if device not in ("auto", "cpu"):
            raise UsageError(f"--device {device}: an .onnx model runs on the CPU here (onnxruntime)")
        if precision not in ("auto", "fp32"):
            raise UsageError(f"--precision {precision}: an .onnx model runs in the precision it was exported in")
        self.onnx, self.views = OnnxModel(checkpoint), views
        meta = self.onnx.meta
        self.path, self.classes, self.name = self.onnx.path, self.onnx.classes, meta["model"]
        self.device, self.precision = "cpu onnxruntime", meta.get("quantization") or "fp32"
        self.mean, self.std, self.input_size = meta["mean"], meta["std"], meta["input_size"]
        self.transform = self.onnx.preprocess
        resize = meta["resize"]
        self.min_side = max([resize if isinstance(resize, int) else 0, *(meta["crop"] or meta["input_size"][1:])])

    def logits(self, inputs):
        import numpy as np

        from cvkit.onnxrun import run_views

        batch = np.stack(inputs)
        return run_views(self.onnx, batch, self.views) if self.views else self.onnx.run(batch)

    def model_input(self, x):
        import numpy as np

        mean = np.asarray(self.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(self.std, dtype=np.float32).reshape(-1, 1, 1)
        return np.clip(x * std + mean, 0.0, 1.0).transpose(1, 2, 0)  # H x W x C, as image_grid takes arrays


def _thumbnail(path, fallback):
    """The picture at ``path`` as the user sees it: RGB, at most GRID_THUMB pixels a side, aspect
    kept. Opened again here, after the predictions, so only the pictures drawn are read twice; if
    it can no longer be read, ``fallback`` (what the model was given) is drawn instead."""
    from PIL import Image

    try:
        picture = load_image(path, min_side=GRID_THUMB).convert("RGB")
    except DataError:
        return fallback
    picture.thumbnail((GRID_THUMB, GRID_THUMB), Image.Resampling.LANCZOS)
    return picture


def _draw_grid(out: Path, results: list[dict], inputs: list, model, total: int, *, grid_input: bool):
    from cvkit import reports

    model_inputs = [model.model_input(x) for x in inputs]
    if grid_input:
        images = model_inputs
    else:
        images = [_thumbnail(r["path"], x) for r, x in zip(results, model_inputs)]
    labels = [f"{r['predictions'][0]['label']} {r['predictions'][0]['probability']:.2f}\n"
              f"{Path(r['path']).name[:24]}" for r in results]
    what = "predictions" + (f" (the first {len(results)} of {total})" if total > len(results) else "")
    if grid_input:
        what += f", model input after the eval transform ({'x'.join(map(str, model.input_size))})"
    return reports.image_grid(images, labels, out, title=f"{model.name} ({model.path}): {what}")


def decoded_batches(paths, batch_size: int, transform, min_side):
    """``(paths, tensors, skipped)`` per batch, in order. The next batch is decoded and transformed
    in a background thread while the caller runs the model on this one (Pillow and torch release
    the GIL); an unreadable file is reported in ``skipped`` and does not stop the others."""
    from concurrent.futures import ThreadPoolExecutor

    def decode(chunk):
        kept, tensors, failed = [], [], []
        for p in chunk:
            if isinstance(p, tuple):  # (name, picture) read from a stream
                p, picture = p
            else:
                try:
                    picture = load_image(p, min_side=min_side)
                except DataError as exc:
                    failed.append({"path": str(p), "reason": str(exc).removeprefix(f"{p}: ")})
                    continue
            kept.append(p)
            tensors.append(transform(picture))
        return kept, tensors, failed

    chunks = [paths[i:i + batch_size] for i in range(0, len(paths), batch_size)]
    if len(chunks) <= 1:
        yield from map(decode, chunks)
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cvkit-decode") as pool:
        pending = pool.submit(decode, chunks[0])
        for chunk in chunks[1:]:
            ready = pending.result()
            pending = pool.submit(decode, chunk)  # decoded while the model runs on ``ready``
            yield ready
        yield pending.result()


def predictions_csv(report: dict) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["path", "rank", "label", "probability"])
    for r in report["results"]:
        for rank, p in enumerate(r["predictions"], 1):
            writer.writerow([r["path"], rank, p["label"], p["probability"]])
    return buf.getvalue()


def predict_summary(report: dict) -> str:
    """One line: how many images, which model, and how fast (the loop over the images alone)."""
    rate = report.get("images_per_second")
    return (f"{report['images']} images, model {report['model']} from {report['checkpoint']}, "
            f"{report['seconds']:.2f}s ({rate} images/s, {report['device']} {report['precision']})"
            + tta_note(report))


def tta_note(report: dict) -> str:
    """``, TTA: identity + hflip (mean probabilities)`` where the report's predictions are test-time
    augmented, else nothing."""
    views = report.get("tta")
    return f", TTA: {' + '.join(views)} (mean probabilities)" if views else ""


# In a narrow terminal the table loses these columns first, in this order; the image, its top
# label and that label's probability always stay, and no value is ever cut short.
PREDICTION_DROP = ("bar", "also")
BAR_WIDTH = 10


def prediction_table(report: dict):
    """One table, a row per image: its path (whole), the top class and probability, a bar, and for
    --top-k above 1 the other guesses in one column."""
    from rich.markup import escape as esc
    from rich.table import Table

    also = any(len(r["predictions"]) > 1 for r in report["results"])
    table = Table(show_edge=False, header_style="bold")
    table.add_column("image", overflow="fold")
    table.add_column("label", overflow="fold", style="bold")
    table.add_column("probability", justify="right", no_wrap=True)
    table.add_column("bar", style="cyan", no_wrap=True, min_width=BAR_WIDTH)
    if also:
        table.add_column("also", overflow="fold")
    for r in report["results"]:
        top, *rest = r["predictions"]
        row = [esc(r["path"]), esc(top["label"]), f"{top['probability']:.3f}",
               "█" * round(top["probability"] * BAR_WIDTH)]
        if also:
            row.append(esc(", ".join(f"{p['label']} {p['probability']:.3f}" for p in rest)))
        table.add_row(*row)
    return table


def render_predictions(report: dict) -> None:
    from rich.markup import escape as esc

    ui.print_fitted(prediction_table(report), drop=PREDICTION_DROP)
    ui.out.print(esc(predict_summary(report)), soft_wrap=True)
    if report.get("grid"):
        ui.out.print(f"grid: {esc(report['grid'])}", soft_wrap=True)
