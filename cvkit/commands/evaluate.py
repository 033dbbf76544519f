"""`cvkit eval`: a checkpoint's loss, accuracy, per-class scores and confusion matrix on a folder,
the pairs of classes it confuses most and the images of its highest losses (see :mod:`cvkit.analysis`)."""

from __future__ import annotations

from pathlib import Path

from cvkit import ui
from cvkit.analysis import TOP_LOSSES
from cvkit.errors import DataError, UsageError


def run_splits(ckpt: dict, transform, plugins, *, dataset: str | None = None, options: dict | None = None):
    """``(splits, root)``: the run's own train and val splits, as it made them (its DATA, format,
    ``--val-split`` and seed), both through ``transform``."""
    from cvkit.data import load_splits

    config = ckpt.get("config") or {}
    dataset, options = _format_of(config, dataset, options)
    root = config.get("data")
    if not root:
        raise DataError("the checkpoint does not record its training data")
    splits = load_splits(root, dataset=dataset, train_transform=transform, eval_transform=transform,
                         val_split=config.get("val_split"), seed=config.get("seed", 0), options=options,
                         plugins=plugins)
    return splits, root


def _format_of(config: dict, dataset: str | None, options: dict | None) -> tuple[str, dict | None]:
    """The data format (``dataset``, else the one the run trained on) and its options (with the
    run's own when it is that format, e.g. the CSV's column names)."""
    trained_on = config.get("dataset") or "imagefolder"
    dataset = dataset or trained_on
    if dataset == trained_on:
        options = {**((config.get("options") or {}).get("dataset") or {}), **(options or {})}
    return dataset, options


def eval_data(data: str | None, ckpt: dict, transform, plugins, dataset: str | None = None,
              options: dict | None = None):
    """The dataset to evaluate on: DATA's validation split (all of DATA when it has no splits), or
    the run's own validation split. The format is ``dataset``, else the one the run trained on."""
    from cvkit.build import build_dataset, dataset_splits

    if data is None:
        if not (ckpt.get("config") or {}).get("data"):
            raise DataError("no DATA given and the checkpoint does not record its training data")
        splits, root = run_splits(ckpt, transform, plugins, dataset=dataset, options=options)
        return splits.val, f"{root} (the run's validation split)"
    dataset, options = _format_of(ckpt.get("config") or {}, dataset, options)
    has = dataset_splits(dataset, data, options=options, plugins=plugins)
    split = "val" if "val" in has else "train" if "train" in has else None
    ds = build_dataset(dataset, data, split=split, transform=transform, options=options, plugins=plugins)
    return ds, data if split is None else f"{data} ({split})"


def class_map(data_classes: list[str], ckpt_classes: list[str], where: str):
    """Dataset label -> checkpoint label, matched by class name, never by folder order."""
    import torch

    unknown = [c for c in data_classes if c not in ckpt_classes]
    if unknown:
        raise DataError(unknown_classes_message(unknown, ckpt_classes, where))
    return torch.tensor([ckpt_classes.index(c) for c in data_classes])


UNKNOWN_NAMED = 5  # unknown classes named in the message; the rest are counted
KNOWN_NAMED = 12  # the checkpoint's classes named in it (an ImageNet checkpoint knows 1000)


def unknown_classes_message(unknown: list[str], known: list[str], where: str) -> str:
    """One line: every unknown class named (up to UNKNOWN_NAMED, then counted as unknown), apart
    from the list of the classes the checkpoint knows."""
    named = ", ".join(repr(c) for c in unknown[:UNKNOWN_NAMED])
    if len(unknown) > UNKNOWN_NAMED:
        named += f" and {len(unknown) - UNKNOWN_NAMED} more unknown"
    subject = f"class {named} is not one" if len(unknown) == 1 else f"classes {named} are not ones"
    knows = f"it knows: {', '.join(known)}"
    if len(known) > KNOWN_NAMED:
        knows = f"it knows {len(known)}: {', '.join(known[:KNOWN_NAMED])} and {len(known) - KNOWN_NAMED} others"
    return f"{where}: {subject} the checkpoint knows ({knows})"


def per_class_scores(matrix: list[list[int]], classes: list[str]) -> list[dict]:
    rows = []
    for i, name in enumerate(classes):
        tp = matrix[i][i]
        support = sum(matrix[i])
        predicted = sum(r[i] for r in matrix)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": support})
    return rows


def evaluate_checkpoint(*, data: str | None = None, checkpoint: str | None = None, batch_size: int = 64,
                        device: str = "auto", precision: str = "auto", workers: str | int = "auto",
                        out: str | None = None, show_progress: bool = True, dataset: str | None = None,
                        dataset_options: dict | None = None, tta: bool = False, top: int = TOP_LOSSES,
                        plugins=None) -> dict:
    """Loss, accuracy, per-class scores and confusion matrix of a checkpoint on DATA, the most confused
    pairs of classes and the ``top`` images of the highest loss. ``tta``: each image is also predicted
    mirrored (:data:`cvkit.onnxrun.TTA_VIEWS`); the prediction and the loss are those of the views'
    mean probabilities."""
    from cvkit.analysis import most_confused, top_losses
    from cvkit.build import build_loss
    from cvkit.inference import restore_model
    from cvkit.data import make_loader, parse_workers, resolve_workers
    from cvkit.device import resolve_device, resolve_precision
    from cvkit.plugins import get_plugins
    from cvkit.engine.phase import confusion_matrix, run_phase

    if top < 0:
        raise UsageError(f"--top {top}: the number of highest-loss images to show, 0 or more")
    plugins = plugins or get_plugins()
    dev = resolve_device(device)
    prec = resolve_precision(precision, dev)
    model, ckpt, spec, transform, path = restore_model(checkpoint, device=dev, plugins=plugins)
    if ckpt.get("exported") and str(path).lower().endswith(".onnx"):
        prec = "fp32"  # onnxruntime runs the model as exported
    loss_name = (ckpt.get("config") or {}).get("loss") or "cross-entropy"
    model, views = _with_tta(model, loss_name) if tta else (model, None)
    classes = list(ckpt["classes"])
    dataset, source = eval_data(data, ckpt, transform, plugins, dataset=dataset,
                                options=dataset_options)
    if len(dataset) == 0:
        raise DataError(f"{source}: no images to evaluate")
    label_map = class_map(list(dataset.classes), classes, source)
    options = (ckpt.get("config") or {}).get("options") or {}
    loss_fn = build_loss(loss_name, options=options.get("loss"), plugins=plugins)
    loader = make_loader(dataset, batch_size=batch_size, shuffle=False,
                         workers=resolve_workers(parse_workers(workers), len(dataset), spec.input_size),
                         device=dev)
    topk = 5 if len(classes) > 5 else 1
    with ui.make_progress(enabled=show_progress) as progress:
        result = run_phase(model, loader, loss_fn, device=dev, precision=prec, progress=progress,
                           description="eval", label_map=label_map, collect="scores", topk=topk)
    matrix = confusion_matrix(result["targets"], result["predictions"], len(classes))
    report = {
        "checkpoint": str(path),
        "model": spec.name,
        "data": source,
        "images": result["images"],
        "loss": result["loss"],
        "accuracy": result["accuracy"],
        "top5_accuracy": result.get("top5_accuracy"),
        "classes": classes,
        "per_class": per_class_scores(matrix, classes),
        "confusion_matrix": matrix,
        "most_confused": most_confused(matrix, classes),
        "top_losses": top_losses(result, dataset, classes, top),
        "device": str(dev),
        "precision": prec,
        "tta": views,
        "images_per_second": round(result["images_per_second"], 2),
    }
    if out:
        report["files"] = _write_eval_pictures(Path(out), report, dataset, spec)
    return report


LOGIT_LOSSES = ("mse",)  # losses of the raw logits, not of the probabilities they give


def _with_tta(model, loss: str):
    """``(model under test-time augmentation, its views)``: its logits are the log of the views' mean
    probabilities, so the loop's accuracy is theirs and its cross-entropy their NLL."""
    from cvkit.inference import TTA_VIEWS, with_tta

    if loss in LOGIT_LOSSES:
        raise UsageError(f"--tta: the run's loss {loss!r} compares raw logits, and test-time augmentation "
                         f"averages probabilities; evaluate it without --tta")
    return with_tta(model, TTA_VIEWS), list(TTA_VIEWS)


def _write_eval_pictures(out: Path, report: dict, dataset, spec) -> dict:
    from cvkit import reports
    from cvkit.analysis import write_top_losses

    shows = f"{report['model']} ({report['checkpoint']})"  # each picture says which model and run it shows
    files = {"confusion_matrix": str(reports.plot_confusion_matrix(
        report["confusion_matrix"], report["classes"], out / "confusion_matrix.png",
        title=f"{shows}: confusion matrix on {report['data']}"))}
    if report["top_losses"]:
        files["top_losses"] = str(write_top_losses(out / "top_losses.png", report, dataset, spec, shows))
    return files


def render_eval(report: dict) -> None:
    from rich import box
    from rich.markup import escape as esc
    from rich.table import Table

    from cvkit.analysis import render_most_confused

    out = ui.out
    top5 = f", top-5 {report['top5_accuracy']:.3f}" if report.get("top5_accuracy") is not None else ""
    tta = f", TTA: {' + '.join(report['tta'])} (mean probabilities)" if report.get("tta") else ""
    out.print(f"[bold]{esc(report['model'])}[/] from {esc(report['checkpoint'])} on {esc(report['data'])}: "
              f"{report['images']} images{tta}")
    out.print(f"accuracy [bold]{report['accuracy']:.3f}[/]{top5}, loss {report['loss']:.4f}")
    table = Table(title="per class", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    table.add_column("class")
    for col in ("precision", "recall", "f1", "support"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in report["per_class"]:
        table.add_row(esc(r["class"]), f"{r['precision']:.3f}", f"{r['recall']:.3f}", f"{r['f1']:.3f}", str(r["support"]))
    ui.print_fitted(table, drop=("support", "f1"))
    _render_confusion(report)
    render_most_confused(report)
    for name, path in (report.get("files") or {}).items():
        out.print(f"{name.replace('_', ' ')}: {esc(path)}")


def _render_confusion(report: dict) -> None:
    """The matrix with class names as column headers; where that is too wide for the terminal, numbered
    columns (1..N, the rows say which class each number is); where even that is too wide, one line."""
    from rich import box
    from rich.markup import escape as esc
    from rich.table import Table

    out, classes = ui.out, report["classes"]
    for numbered in (False, True):
        cm = Table(title="confusion matrix (rows: true, columns: predicted)", title_justify="left",
                   box=box.SIMPLE_HEAD, pad_edge=False)
        cm.add_column("true \\ pred", style="bold")
        for n, c in enumerate(classes, 1):
            cm.add_column(str(n) if numbered else esc(c), justify="right", no_wrap=True)
        for i, row in enumerate(report["confusion_matrix"]):
            label = f"{i + 1} {esc(classes[i])}" if numbered else esc(classes[i])
            cm.add_row(label, *[f"[green]{v}[/]" if i == j else (f"[red]{v}[/]" if v else "0")
                                for j, v in enumerate(row)])
        if ui.fits(cm, out):
            out.print(cm)
            return
    out.print(f"(the confusion matrix of {len(classes)} classes does not fit in {out.width} columns: "
              "see --json, or --out DIR for confusion_matrix.png)", style="dim", markup=False, highlight=False)
