"""`cvkit explain`: Grad-CAM heatmaps of where a trained model looked, as a picture and as JSON."""

from __future__ import annotations

from pathlib import Path

from cvkit import ui
from cvkit.errors import DataError, UsageError

PICTURE_MAX = 32  # images drawn into --out, the first ones
JSON_DIGITS = 3  # heatmap values in --json


def explain_images(images: list[str], *, checkpoint: str | None = None, target: str | None = None,
                   out: str | None = None, batch_size: int = 16, device: str = "auto", tta: bool = False,
                   plugins=None) -> dict:
    """Grad-CAM for each of ``images`` (files, folders, globs) under a checkpoint: the class
    explained (``target``, else the predicted one), its probability, and a heatmap on the layer's
    grid (see :mod:`cvkit.explain`). ``out``: also draw image, heatmap and overlay per image into
    this PNG. ``tta``: the class is that of the mean probabilities of the image and its mirror,
    and the heatmap the mean of both (the mirror's mirrored back). Runs in float32."""
    import torch

    from cvkit.build import decode_min_side
    from cvkit.checkpoint import find_checkpoint
    from cvkit.commands.predict import decoded_batches, expand_inputs
    from cvkit.device import resolve_device
    from cvkit.explain import CannotExplain, find_layer, gradcam_views
    from cvkit.inference import TTA_VIEWS, restore_model
    from cvkit.onnxrun import is_onnx
    from cvkit.plugins import get_plugins

    if batch_size < 1:
        raise UsageError(f"--batch-size {batch_size}: must be at least 1")
    plugins = plugins or get_plugins()
    path = find_checkpoint(checkpoint)
    if is_onnx(path):
        raise UsageError(f"--checkpoint {path}: Grad-CAM needs the model's gradients, which an .onnx file "
                         "does not give; explain the run's checkpoint (.pt) instead")
    paths, skipped = expand_inputs(images)
    dev = resolve_device(device)
    model, ckpt, spec, transform, path = restore_model(path, device=dev, plugins=plugins, fuse=False)
    classes = list(ckpt["classes"])
    wanted = _class_index(target, classes)
    views = TTA_VIEWS if tta else None
    layer, results, shown = None, [], []
    for chunk, inputs, failed in decoded_batches(paths, batch_size, transform, decode_min_side(spec)):
        skipped += failed
        if not inputs:
            continue
        x = torch.stack(inputs).to(dev)
        if layer is None:
            try:
                layer = find_layer(model, x, _cam_layer(spec.name, plugins))
            except CannotExplain as exc:
                raise CannotExplain(f"--checkpoint {path}: model {spec.name!r} {exc}") from None
        targets = None if wanted is None else torch.full((len(inputs),), wanted, device=dev)
        probabilities, targets, cams = gradcam_views(model, x, layer, targets, views)
        for p, x1, probs, t, cam in zip(chunk, inputs, probabilities.cpu(), targets.tolist(), cams.cpu()):
            results.append(_result(p, probs, t, cam, classes, layer.name))
            if out and len(shown) < PICTURE_MAX:
                shown.append((x1, cam))
    if not results:
        raise DataError(f"no readable images among {len(paths)} ({skipped[0]['path']}: {skipped[0]['reason']})")
    report = {"checkpoint": str(path), "model": spec.name, "method": "grad-cam", "layer": layer.as_dict(),
              "layer_description": layer.describe(), "device": str(dev), "precision": "fp32",
              "tta": list(views) if views else None, "images": len(results), "results": results,
              "skipped": skipped}
    if out:
        report["picture"] = str(_draw(Path(out), report, shown, spec))
    return report


def _cam_layer(model_name: str, plugins) -> str | None:
    """The layer the model's registration names (``cam_layer=``), if any."""
    return plugins["models"].get(model_name).meta.get("cam_layer") or None


def _class_index(target: str | None, classes: list[str]) -> int | None:
    if target is None:
        return None
    if target not in classes:
        from cvkit.commands.evaluate import unknown_classes_message

        raise UsageError(unknown_classes_message([target], classes, f"--class {target}"))
    return classes.index(target)


def _result(path, probs, target: int, cam, classes: list[str], layer: str) -> dict:
    predicted = int(probs.argmax())
    cols = cam.shape[1]
    peak = int(cam.flatten().argmax()) if float(cam.max()) > 0 else None  # None: Grad-CAM found nothing
    return {"path": str(path), "class": classes[target], "probability": round(float(probs[target]), 6),
            "predicted": classes[predicted], "predicted_probability": round(float(probs[predicted]), 6),
            "layer": layer, "peak": None if peak is None else {"row": peak // cols, "column": peak % cols},
            "heatmap": [[round(float(v), JSON_DIGITS) for v in row] for row in cam.tolist()]}


def _draw(out: Path, report: dict, shown: list, spec) -> Path:
    from cvkit import reports
    from cvkit.explain import upsample

    pictures = [reports.denormalize(x, spec.mean, spec.std) for x, _ in shown]
    heatmaps = [upsample(cam[None], x.shape[-2:])[0] for (_, cam), x in zip(shown, pictures)]
    captions = [_caption(r) for r in report["results"][:len(shown)]]
    total = report["images"]
    what = f"Grad-CAM at {report['layer_description']}"
    if total > len(shown):
        what += f", the first {len(shown)} of {total} images"
    return reports.plot_explanations(pictures, heatmaps, captions, out,
                                     title=f"{report['model']} ({report['checkpoint']}): {what}")


def _caption(result: dict) -> str:
    name = Path(result["path"]).name
    caption = f"{result['class']} {result['probability']:.2f}"
    if result["predicted"] != result["class"]:
        caption += f" (predicted {result['predicted']} {result['predicted_probability']:.2f})"
    return f"{name[:32]}: {caption}"


def render_explanations(report: dict) -> None:
    from rich.markup import escape as esc
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    table.add_column("image", overflow="fold")
    table.add_column("class", overflow="fold", style="bold")
    table.add_column("probability", justify="right", no_wrap=True)
    table.add_column("predicted", overflow="fold")
    table.add_column("hottest cell", justify="right", no_wrap=True)
    rows, cols = report["layer"]["size"]
    for r in report["results"]:
        predicted = "same" if r["predicted"] == r["class"] else f"{r['predicted']} {r['predicted_probability']:.3f}"
        peak = r["peak"]
        hottest = f"row {peak['row'] + 1}/{rows}, col {peak['column'] + 1}/{cols}" if peak else "none (all zero)"
        table.add_row(esc(r["path"]), esc(r["class"]), f"{r['probability']:.3f}", esc(predicted), hottest)
    ui.print_fitted(table, drop=("hottest cell", "predicted"))
    tta = f", TTA: {' + '.join(report['tta'])}" if report.get("tta") else ""
    ui.out.print(esc(f"{report['images']} images, model {report['model']} from {report['checkpoint']}: "
                     f"Grad-CAM at {report['layer_description']}{tta}"), soft_wrap=True)
    if report.get("picture"):
        ui.out.print(f"picture: {esc(report['picture'])}", soft_wrap=True)
    else:
        ui.out.print("(add --out FILE.png for the image, heatmap and overlay of each)", style="dim",
                     markup=False, highlight=False)
