"""What `cvkit eval` finds beyond its scores: the images with the highest losses (fastai's
``plot_top_losses``) and the pairs of classes most often taken for one another (``most_confused``).

The pairs come from the confusion matrix; the top losses from the lists
:func:`cvkit.engine.phase.run_phase` collects with ``collect="scores"``: each image's predicted and
true label, the probabilities of those two classes and its loss, in the dataset's order.
"""

from __future__ import annotations

from pathlib import Path

from cvkit import ui

TOP_LOSSES = 16  # images in the top losses (`cvkit eval --top`)
MOST_CONFUSED_SHOWN = 10  # pairs in the printed table; the JSON has all of them
DIGITS = 6  # the JSON's probabilities and losses are rounded to these


def most_confused(matrix: list[list[int]], classes: list[str]) -> list[dict]:
    """Each off-diagonal cell of the confusion matrix that is not 0, as ``{"true", "predicted",
    "count"}``: the highest count first, ties in the classes' order (true, then predicted)."""
    cells = [(matrix[t][p], t, p) for t in range(len(classes)) for p in range(len(classes))
             if t != p and matrix[t][p] > 0]
    cells.sort(key=lambda cell: (-cell[0], cell[1], cell[2]))
    return [{"true": classes[t], "predicted": classes[p], "count": count} for count, t, p in cells]


def top_losses(result: dict, dataset, classes: list[str], count: int) -> list[dict]:
    """The ``count`` images of the highest loss, highest first (ties by position): each one's
    position in the dataset, its file (None where the dataset does not list them), true and
    predicted class, the probabilities of both and its loss."""
    losses = result["losses"]
    order = sorted(range(len(losses)), key=lambda i: (-losses[i], i))[:count]
    return [{"index": i, "path": sample_path(dataset, i),
             "true": classes[result["targets"][i]], "predicted": classes[result["predictions"][i]],
             "probability": round(result["probabilities"][i], DIGITS),
             "true_probability": round(result["true_probabilities"][i], DIGITS),
             "loss": round(losses[i], DIGITS)} for i in order]


def sample_path(dataset, index: int) -> str | None:
    """The file of the sample at ``index``: from the dataset's ``samples`` (ImageFolder-like), through
    a Subset (the run's held-out validation split) and relabelling wrappers; else None."""
    for _ in range(8):  # wrappers of wrappers, but never a loop
        samples = getattr(dataset, "samples", None)
        if samples is not None:
            try:
                return str(samples[index][0])
            except (TypeError, IndexError, KeyError):
                return None
        inner = getattr(dataset, "dataset", None)
        if inner is None:
            return None
        indices = getattr(dataset, "indices", None)
        if indices is not None:  # torch.utils.data.Subset
            index = int(indices[index])
        elif not _same_length(dataset, inner):  # a wrapper that reorders or drops samples: unknown
            return None
        dataset = inner
    return None


def _same_length(a, b) -> bool:
    try:
        return len(a) == len(b)
    except TypeError:
        return False


def _samples_at(dataset, indices: list[int]):
    """The samples at these positions (ascending); a stream (sharded data, read in the same order on
    every pass) is read again up to the last of them."""
    from torch.utils.data import IterableDataset

    if not isinstance(dataset, IterableDataset):
        return [dataset[i] for i in indices]
    wanted, found = set(indices), {}
    for i, sample in enumerate(dataset):
        if i in wanted:
            found[i] = sample
        if i >= indices[-1]:
            break
    return [found[i] for i in indices]


def write_top_losses(path: Path, report: dict, dataset, spec, shows: str) -> Path:
    """``report["top_losses"]`` as a grid of the images the model saw, highest loss first, each
    captioned with its predicted and true class, their probabilities and the loss: red where
    the prediction is wrong, green where it is right (with little confidence)."""
    from cvkit import reports

    rows = report["top_losses"]
    positions = sorted(r["index"] for r in rows)
    pixels = {i: x for i, (x, _) in zip(positions, _samples_at(dataset, positions))}
    images = [reports.denormalize(pixels[r["index"]], spec.mean, spec.std) for r in rows]
    captions = [f"pred: {r['predicted']} {r['probability']:.2f}\ntrue: {r['true']} {r['true_probability']:.2f}\n"
                f"loss {r['loss']:.2f}" for r in rows]
    colors = ["green" if r["predicted"] == r["true"] else "red" for r in rows]
    wrong = sum(r["count"] for r in report["most_confused"])
    shown = "the highest loss" if len(rows) == 1 else f"the {len(rows)} highest losses"
    title = (f"{shows}: {shown} of {report['images']} images ({wrong} misclassified) "
             f"on {report['data']}")
    return reports.image_grid(images, captions, path, colors=colors, title=title)


def render_most_confused(report: dict) -> None:
    """The most confused pairs (up to MOST_CONFUSED_SHOWN) as a table, or one line saying none is.
    The table has a column for each class of a pair; where that is too wide for the terminal, the
    count comes first and each pair is one cell, "true → predicted", that wraps between the names
    (a name is folded only where it is wider than the terminal)."""
    pairs = report.get("most_confused") or []
    if not pairs:
        ui.out.print("most confused: no image is misclassified", style="dim", markup=False, highlight=False)
        return
    table = _pairs_table(pairs[:MOST_CONFUSED_SHOWN], apart=True)
    if not ui.fits(table, ui.out):
        table = _pairs_table(pairs[:MOST_CONFUSED_SHOWN], apart=False)
    ui.print_fitted(table)
    if len(pairs) > MOST_CONFUSED_SHOWN:
        ui.out.print(f"(the first {MOST_CONFUSED_SHOWN} of {len(pairs)} pairs: see --json for all)", style="dim",
                     markup=False, highlight=False)


def _pairs_table(pairs: list[dict], *, apart: bool):
    from rich import box
    from rich.markup import escape as esc
    from rich.table import Table

    title = "most confused (true → predicted)"
    table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                  min_width=min(len(title), ui.out.width))  # the title on one line where it can be
    if apart:
        table.add_column("true")
        table.add_column("predicted")
        table.add_column("count", justify="right", no_wrap=True)
        for pair in pairs:
            table.add_row(esc(pair["true"]), esc(pair["predicted"]), str(pair["count"]))
    else:
        table.add_column("count", justify="right", no_wrap=True)
        table.add_column("true → predicted")
        for pair in pairs:
            table.add_row(str(pair["count"]), f"{esc(pair['true'])} → {esc(pair['predicted'])}")
    return table
