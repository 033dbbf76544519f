"""`cvkit export`: a trained checkpoint as ONNX, TorchScript, torch.export (pt2) or safetensors,
carrying its description, and checked against the PyTorch model."""

from __future__ import annotations

import time
from pathlib import Path

from cvkit import ui
from cvkit.errors import CheckpointError, CvkitError, UsageError

# --check fails when the largest |logit difference| exceeds this fraction of the largest |logit|
# of the PyTorch model on the same inputs (at least 1): float32 exporters differ by ~1e-6 of it
RELATIVE_TOLERANCE = 1e-3
INT8_AGREEMENT = 0.99  # an int8 model passes --check when at least this share of top-1 classes agree
NEEDS = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "safetensors": ("safetensors",)}


def export_model(source: str | None, *, fmt: str = "onnx", out: str | None = None, check: int | None = None,
                 quantize: str | None = None, plugins=None) -> dict:
    """Write the model of ``source`` (a run directory's ``best.pt``, a checkpoint file, or with
    None the newest run's) in ``fmt``; ``check``: compare the export with the PyTorch model on that
    many images; ``quantize="int8"`` (ONNX): int8, calibrated on the run's training images.
    Returns the report (``--json``)."""
    from cvkit.exporters import FORMATS, ExportFailed, write

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt}: unknown format; choose one of {', '.join(FORMATS)}")
    if check is not None and check < 1:
        raise UsageError(f"--check {check}: must be at least 1")
    if quantize not in (None, "int8") or (quantize and fmt != "onnx"):
        raise UsageError(f"--quantize {quantize}: only int8, and only with --format onnx")
    _needs(fmt)
    model, ckpt, spec, transform, path = _restore(source, plugins)
    from cvkit.describe import describe

    try:
        meta = describe(ckpt, transform)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    target = Path(out) if out else path.with_name(path.stem + FORMATS[fmt])
    if target.exists() and target.resolve() == path.resolve():
        raise UsageError(f"--out {out}: is the checkpoint being exported; choose another file")
    if target.is_dir():
        raise UsageError(f"--out {out}: is a directory; give a file name")
    calibration = None
    if quantize:
        meta["quantization"] = "int8"
        calibration = _calibration_batches(ckpt, transform, plugins, where=f"--quantize int8 ({path})")
    started = time.perf_counter()
    try:
        write(fmt, model, meta, target, state=ckpt["model_state"], calibration=calibration)
    except ExportFailed as exc:
        raise CheckpointError(f"{path}: model {spec.name!r} cannot be exported as {fmt} ({exc})") from None
    report = {"checkpoint": str(path), "model": spec.name, "format": fmt, "out": str(target),
              "bytes": target.stat().st_size, "seconds": round(time.perf_counter() - started, 2),
              "metadata": {k: v for k, v in meta.items() if k != "cvkit_model"}}
    if check:
        report["check"] = check_export(fmt, target, model, ckpt, transform, check, plugins=plugins,
                                       quantized=bool(quantize))
    return report


CALIBRATION_IMAGES = 128  # training images (eval transform) that set an int8 model's activation ranges
CALIBRATION_BATCH = 16


def _calibration_batches(ckpt: dict, transform, plugins, *, where: str) -> list:
    """Batches of the run's training images as the model sees them at inference (eval transform)."""
    import torch

    from cvkit.commands.evaluate import run_splits

    try:
        splits, _ = run_splits(ckpt, transform, plugins)
    except CvkitError as exc:
        raise CheckpointError(f"{where}: calibrates on the run's training images, which cannot be read "
                              f"({exc})") from None
    images = _spread(splits.train, CALIBRATION_IMAGES)
    return [torch.stack(images[i:i + CALIBRATION_BATCH]).float().numpy()
            for i in range(0, len(images), CALIBRATION_BATCH)]


def _needs(fmt: str) -> None:
    import importlib.util

    from cvkit.onnxrun import INSTALL

    missing = [m for m in NEEDS.get(fmt, ()) if importlib.util.find_spec(m) is None]
    if missing:
        raise UsageError(f"--format {fmt} needs {', '.join(missing)}: {INSTALL}")


def _restore(source, plugins):
    from cvkit.checkpoint import find_checkpoint
    from cvkit.inference import restore_model
    from cvkit.onnxrun import is_onnx

    path = find_checkpoint(source, option="export")
    if is_onnx(path) or path.suffix in (".pt2",) or path.name.endswith(".torchscript.pt"):
        raise CheckpointError(f"export {source}: already an export; give the checkpoint it came from")
    import torch

    return restore_model(str(path), device=torch.device("cpu"), option="export", plugins=plugins, fuse=False)


def check_export(fmt: str, target: Path, model, ckpt: dict, transform, count: int, *, plugins=None,
                 quantized: bool = False) -> dict:
    """The exported file and the PyTorch model on the same ``count`` inputs: the largest logit
    difference and the top-1 agreement. Inputs are the run's validation images where they can be
    read, else seeded random ones. Passes when every top-1 agrees and the difference is within the
    tolerance; an int8 model (``quantized``) when at least INT8_AGREEMENT of the top-1 agree."""
    import numpy as np
    import torch

    from cvkit.exporters import load_runner

    inputs, source = _check_inputs(ckpt, transform, count, plugins)
    with torch.inference_mode():
        expected = model(torch.from_numpy(inputs)).float().numpy()
    got = load_runner(fmt, target, plugins=plugins)(inputs)
    diff = float(np.abs(expected - got).max())
    agree = int((expected.argmax(1) == got.argmax(1)).sum())
    tolerance = RELATIVE_TOLERANCE * max(1.0, float(np.abs(expected).max()))
    if quantized:
        passed, tolerance = agree >= INT8_AGREEMENT * len(inputs), None
    else:
        passed = agree == len(inputs) and diff <= tolerance
    return {"inputs": source, "images": len(inputs), "max_abs_logit_difference": diff,
            "tolerance": tolerance, "top1_agreement": agree / len(inputs), "top1_agreeing": agree,
            "passed": passed}


def _spread(dataset, count: int) -> list:
    """``count`` inputs of ``dataset`` spread evenly over it (a folder tree lists its classes in
    turn), or for a stream its first ``count``."""
    import itertools

    from torch.utils.data import IterableDataset

    if isinstance(dataset, IterableDataset):
        return [x for x, _ in itertools.islice(iter(dataset), count)]
    n = len(dataset)
    picks = sorted({int(i * n / count) for i in range(count)}) if n > count else range(n)
    return [dataset[i][0] for i in picks]


def _check_inputs(ckpt: dict, transform, count: int, plugins):
    """(N x C x H x W float32 array, where it came from)."""
    import torch

    from cvkit.commands.evaluate import eval_data

    try:
        dataset, where = eval_data(None, ckpt, transform, plugins)
        tensors = _spread(dataset, count)
        if tensors:
            return torch.stack(tensors).float().numpy(), f"{len(tensors)} images of {where}"
        reason = "it holds no images"
    except CvkitError as exc:
        reason = str(exc)
    generator = torch.Generator().manual_seed(0)
    size = list(ckpt["model"]["input_size"])
    inputs = torch.randn(count, *size, generator=generator).numpy()
    return inputs, f"{count} random inputs (the run's validation images cannot be read: {reason})"


def render_export(report: dict) -> None:
    from rich.markup import escape as esc

    out = ui.out
    meta = report["metadata"]
    size = report["bytes"] / 2**20
    out.print(f"exported [bold]{esc(report['model'])}[/] from {esc(report['checkpoint'])} as {report['format']}: "
              f"{esc(report['out'])} ({size:.1f} MiB, {report['seconds']:.1f}s)", soft_wrap=True)
    classes = meta["classes"]
    shown = ", ".join(classes[:8]) + (f" and {len(classes) - 8} more" if len(classes) > 8 else "")
    out.print(esc(f"  classes ({len(classes)}): {shown}"), soft_wrap=True)
    out.print(esc(f"  input {'x'.join(map(str, meta['input_size']))}, resize {meta['resize']} {meta['interpolation']}, "
                  f"crop {meta['crop']}, mean {meta['mean']}, std {meta['std']}"), soft_wrap=True)
    check = report.get("check")
    if check:
        verdict = "[green]pass[/]" if check["passed"] else "[red bold]FAIL[/]"
        bound = (f"tolerance {check['tolerance']:.2e}" if check["tolerance"] is not None
                 else "int8: passes at 99% agreement")
        out.print(f"check on {esc(check['inputs'])}: top-1 agreement {check['top1_agreeing']}/{check['images']}, "
                  f"largest |logit difference| {check['max_abs_logit_difference']:.2e} ({bound}): {verdict}",
                  soft_wrap=True)
