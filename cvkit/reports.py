"""PNG reports: training curves, confusion matrix, labelled image grids.

Figures are built with ``matplotlib.figure.Figure`` rather than pyplot, so nothing opens a window,
picks a GUI backend or leaves a figure behind in pyplot's global list (the Agg canvas renders PNGs
on any machine, headless included). matplotlib and torch are imported inside the functions: the
command line imports this module at start-up.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

DPI = 120
TRAIN_COLOUR = "#1f77b4"
VAL_COLOUR = "#d62728"
BEST_COLOUR = "#2ca02c"


def plot_curves(history, path, *, title: str = "Training curves") -> Path:
    """Loss and accuracy per epoch, train and val side by side, the best val-accuracy epoch marked.

    ``history`` is a list of dicts with ``epoch``, ``train_loss``, ``train_accuracy`` and, when the
    epoch was validated, ``val_loss`` and ``val_accuracy`` (accuracies from 0 to 1).
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    rows = sorted(history, key=lambda row: row["epoch"])
    if not rows:
        raise ValueError("plot_curves: history is empty")
    epochs = [row["epoch"] for row in rows]

    fig = Figure(figsize=(11, 4.2), dpi=DPI, layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    best = _best_epoch(rows)
    for ax, key, label in ((loss_ax, "loss", "Loss"), (acc_ax, "accuracy", "Accuracy")):
        for split, colour, marker in (("train", TRAIN_COLOUR, "o"), ("val", VAL_COLOUR, "s")):
            points = [(row["epoch"], row[f"{split}_{key}"]) for row in rows
                      if _is_number(row.get(f"{split}_{key}"))]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, color=colour, marker=marker, markersize=5, linewidth=1.8, label=split)
        if best is not None:
            ax.axvline(best["epoch"], color=BEST_COLOUR, linestyle="--", linewidth=1.2, zorder=1)
        ax.set_title(label, fontsize=12)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label.lower())
        if len(set(epochs)) <= 20:
            ax.set_xticks(sorted(set(epochs)))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
        ax.grid(True, alpha=0.3)
    if best is not None:
        acc_ax.plot([best["epoch"]], [best["val_accuracy"]], marker="*", markersize=15, color=BEST_COLOUR,
                    markeredgecolor="white", linestyle="none", zorder=5,
                    label=f"best val accuracy: {best['val_accuracy']:.1%} (epoch {best['epoch']})")
    # accuracy on a fixed 0-100% scale: runs compare at a glance and one epoch is not a zoomed-in dot
    acc_ax.set_ylim(0.0, 1.04)
    acc_ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    losses = [row[k] for row in rows for k in ("train_loss", "val_loss") if _is_number(row.get(k))]
    loss_ax.set_ylim(0.0, max(losses, default=1.0) * 1.12 or 1.0)
    # one legend under both panels: inside either it would cover points somewhere
    handles, labels = acc_ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), fontsize=10, frameon=False)
    fig.suptitle(wrap_title(title, 11 - 0.4, 14, bold=True), fontsize=14, fontweight="bold")
    return _save(fig, path, title)


def _best_epoch(rows) -> dict | None:
    validated = [row for row in rows if _is_number(row.get("val_accuracy"))]
    # the first epoch that reached the best accuracy: later ties add nothing
    return max(validated, key=lambda row: (row["val_accuracy"], -row["epoch"])) if validated else None


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plot_confusion_matrix(matrix, classes, path, *, title: str = "Confusion matrix") -> Path:
    """Counts per (true, predicted) pair, coloured by the share of each true class.

    Rows are true classes and columns predictions, so the diagonal is what was right and each row's
    colours show where that class went. Fonts shrink with the number of classes; past 30 classes
    the counts are left out and only the colours remain.
    """
    from matplotlib.figure import Figure

    counts = [[int(v) for v in row] for row in matrix]
    n = len(classes)
    if n == 0 or len(counts) != n or any(len(row) != n for row in counts):
        raise ValueError(f"plot_confusion_matrix: need a {n}x{n} matrix for {n} classes")
    shares = [[v / sum(row) if sum(row) else 0.0 for v in row] for row in counts]
    total = sum(map(sum, counts))
    right = sum(counts[i][i] for i in range(n))

    cell = 0.55 if n <= 12 else 0.42  # inches
    label_room = 0.09 * max(len(str(c)) for c in classes) + 1.2
    side = max(3.0, n * cell)
    width = side + label_room + 1.6
    # the title spans the figure (it may name a model, a checkpoint and a folder): wrapped to its width
    heading = wrap_title(title, width - 0.3, 12, bold=True)
    fig = Figure(figsize=(width, side + label_room + 0.6 + 0.2 * heading.count("\n")), dpi=DPI,
                 layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, shrink=0.8, pad=0.02)
    colorbar.set_label("share of the true class")

    tick_size = 10 if n <= 12 else 9 if n <= 20 else 8
    ax.set_xticks(range(n), [str(c) for c in classes], rotation=45 if n > 4 else 0,
                  ha="right" if n > 4 else "center", rotation_mode="anchor", fontsize=tick_size)
    ax.set_yticks(range(n), [str(c) for c in classes], fontsize=tick_size)
    ax.set_xlabel("predicted", fontsize=11)
    ax.set_ylabel("true", fontsize=11)
    ax.tick_params(which="both", length=0)
    ax.set_xticks([i - 0.5 for i in range(1, n)], minor=True)
    ax.set_yticks([i - 0.5 for i in range(1, n)], minor=True)
    ax.grid(which="minor", color="white", linewidth=1)
    for spine in ax.spines.values():
        spine.set_visible(False)

    if n <= 30:
        count_size = 11 if n <= 8 else 9 if n <= 12 else 7.5 if n <= 20 else 6.5
        for i, row in enumerate(counts):
            for j, value in enumerate(row):
                if value == 0 and n > 8:
                    continue  # many classes: empty cells stay blank so the errors stand out
                ax.text(j, i, str(value), ha="center", va="center", fontsize=count_size,
                        color="white" if shares[i][j] > 0.55 else "#222222")

    accuracy = f"accuracy {right / total:.1%} of {total}" if total else "no samples"
    fig.suptitle(heading, fontsize=12, fontweight="bold")
    ax.set_title(accuracy, fontsize=11)
    return _save(fig, path, f"{title}: {accuracy}")


def image_grid(images, labels, path, *, colors=None, ncols: int | None = None, title: str | None = None) -> Path:
    """Pictures in a grid with a caption under each: the chapter's ``imshow(make_grid(...))`` and
    ``visualize_model``.

    ``images`` are PIL images, CHW tensors in [0, 1] (1 or 3 channels), HxW tensors or numpy
    arrays; ``labels`` one string per picture (may span lines); ``colors`` an optional colour per
    picture for its caption and frame, e.g. green for right and red for wrong.
    """
    from matplotlib.figure import Figure

    images = list(images)
    labels = [str(label) for label in labels]
    if not images:
        raise ValueError("image_grid: no images")
    if len(labels) != len(images):
        raise ValueError(f"image_grid: {len(images)} images but {len(labels)} labels")
    colors = list(colors) if colors is not None else [None] * len(images)
    if len(colors) != len(images):
        raise ValueError(f"image_grid: {len(images)} images but {len(colors)} colors")

    count = len(images)
    ncols = max(1, min(ncols or min(8, math.ceil(math.sqrt(count))), count))
    nrows = math.ceil(count / ncols)
    lines = max(label.count("\n") + 1 for label in labels)
    font = 9 if ncols <= 6 else 8
    tile = 1.9 if ncols <= 6 else 1.6  # inches
    caption = lines * font * 1.45 / 72 + 0.1  # inches of text under each tile
    width = ncols * tile + 0.2
    heading = wrap_title(title, width - 0.2, 13, bold=True) if title else None  # to the grid's width
    height = nrows * (tile + caption) + (0.1 + 0.3 * (heading.count("\n") + 1) if heading else 0.1)
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for index, ax in enumerate(axes.flat):
        if index >= count:
            ax.set_axis_off()
            continue
        pixels = _as_pixels(images[index])
        if pixels.ndim == 2:
            ax.imshow(pixels, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        else:
            ax.imshow(pixels, vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_anchor("S")  # pictures of other shapes sit on one line, so a row's captions line up
        colour = colors[index]
        ax.set_xlabel(labels[index], fontsize=font, color=colour or "black", linespacing=1.2)
        for spine in ax.spines.values():
            spine.set_color(colour or "#bbbbbb")
            spine.set_linewidth(2.5 if colour else 0.8)
    if heading:
        fig.suptitle(heading, fontsize=13, fontweight="bold")
    return _save(fig, path, title)


def _as_pixels(image):
    """HxW or HxWx3 float array in [0, 1] from a PIL image, tensor or array."""
    import numpy as np

    if hasattr(image, "detach"):  # torch tensor: CHW or HW
        array = image.detach().to("cpu").float().numpy()
        if array.ndim == 3:
            array = array.transpose(1, 2, 0)
    elif hasattr(image, "mode") and hasattr(image, "size"):  # PIL image
        array = np.asarray(image if image.mode in ("L", "RGB") else image.convert("RGB"), dtype=np.float32) / 255.0
    else:
        array = np.asarray(image, dtype=np.float32)
        if array.max(initial=0.0) > 1.0:  # 0-255 pixel values
            array = array / 255.0
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise ValueError(f"image_grid: cannot show an image of shape {tuple(array.shape)} "
                         "(expected CHW with 1 or 3 channels, HxW, or a PIL image)")
    return np.clip(array, 0.0, 1.0)


def denormalize(tensor, mean, std):
    """Undo ``Normalize(mean, std)`` on a CHW (or NCHW) tensor: pixels in [0, 1], as the model saw them."""
    import torch

    values = torch.as_tensor(tensor).detach().float()
    mean = torch.as_tensor(mean, dtype=values.dtype, device=values.device).reshape(-1, 1, 1)
    std = torch.as_tensor(std, dtype=values.dtype, device=values.device).reshape(-1, 1, 1)
    return (values * std + mean).clamp(0.0, 1.0)


def wrap_title(title: str, width_inches: float, fontsize: float, *, bold: bool = False) -> str:
    """``title`` broken into lines that fit ``width_inches`` at ``fontsize`` points (a run
    directory's path is long). Lines break at spaces where they can, and inside a word (a path)
    where they must; line breaks already in ``title`` are kept."""
    import textwrap

    per_char = fontsize / 72 * (0.68 if bold else 0.6)  # inches: DejaVu Sans's wider letters, a margin kept
    columns = max(12, int(width_inches / per_char))
    return "\n".join(line for part in title.split("\n")
                     for line in (textwrap.wrap(part, columns, break_on_hyphens=False) or [""]))


def _save(fig, path, title: str | None = None) -> Path:
    """Write ``fig`` as a PNG; ``title`` is also stored in the file's ``Title`` text field, where
    image viewers and ``PIL.Image.open(path).text`` find it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"Software": "cvkit"}
    if title:
        metadata["Title"] = " ".join(title.split())  # one line, however it was wrapped on the picture
    try:
        with warnings.catch_warnings():
            # a folder or class named in a script the font lacks (CJK, ...) is drawn as boxes; the
            # Title field keeps it whole, and a warning per letter on stderr would tell nothing more
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
            fig.savefig(path, format="png", dpi=DPI, facecolor="white", metadata=metadata)
    finally:
        fig.clear()  # a Figure outside pyplot is freed with its last reference; drop the artists now
    return path


def plot_lr_find(lrs, raw, smoothed, path, *, suggested_lr: float | None = None, minimum_lr: float | None = None,
                 title: str = "Learning-rate range test") -> Path:
    """The learning-rate range test (``cvkit lr-find``): loss against lr on a log axis, the smoothed
    loss over the raw one (faint), the suggested lr marked on the curve and labelled, and the
    minimum's lr/10 as a dashed line.

    ``lrs``, ``raw`` and ``smoothed`` are one value per optimizer step. The loss axis stops a little
    above the smoothed curve, so the raw spikes of the last, diverging steps do not squash it.
    """
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    points = [(lr, r, s) for lr, r, s in zip(lrs, raw, smoothed) if lr > 0 and _is_number(r) and _is_number(s)]
    if not points:
        raise ValueError("plot_lr_find: no finite losses")
    xs, rs, ss = zip(*points)

    fig = Figure(figsize=(7.5, 4.6), dpi=DPI, layout="constrained")
    ax = fig.subplots()
    ax.plot(xs, rs, color=TRAIN_COLOUR, alpha=0.25, linewidth=1.0, label="loss per step")
    ax.plot(xs, ss, color=TRAIN_COLOUR, linewidth=2.0, label="smoothed loss")
    ax.set_xscale("log")
    # plain numbers (1e-05, 0.001, 1) rather than mathtext powers, which load fonts a slim install lacks
    ax.xaxis.set_major_locator(LogLocator(base=10, numticks=12))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    if minimum_lr is not None and minimum_lr > 0:
        ax.axvline(minimum_lr, color="#7f7f7f", linestyle="--", linewidth=1.1, zorder=1,
                   label=f"minimum's lr/10: {minimum_lr:.2g}")
    if suggested_lr is not None and suggested_lr > 0:
        nearest = min(range(len(xs)), key=lambda i: abs(math.log(xs[i]) - math.log(suggested_lr)))
        ax.axvline(suggested_lr, color=BEST_COLOUR, linewidth=1.2, zorder=1)
        ax.plot([suggested_lr], [ss[nearest]], marker="*", markersize=15, color=BEST_COLOUR,
                markeredgecolor="white", linestyle="none", zorder=5, label=f"suggested lr: {suggested_lr:.2g}")
        span = math.log(max(xs[-1], xs[0] * 1.0001) / xs[0])
        right = math.log(suggested_lr / xs[0]) / span > 0.7  # near the right edge: the label goes left of the line
        ax.annotate(f"suggested {suggested_lr:.2g}", (suggested_lr, 1.0), xycoords=("data", "axes fraction"),
                    textcoords="offset points", xytext=(-5 if right else 5, -14), ha="right" if right else "left",
                    fontsize=10, color=BEST_COLOUR, fontweight="bold")
    # the loss axis: from the lowest loss to a little above where the smoothed loss started, so the
    # last, diverging steps (whose loss can be 1000x) leave the top and the descent stays readable
    lowest = min(range(len(ss)), key=ss.__getitem__)
    level, bottom = max(ss[:lowest + 1]), min(min(rs), min(ss))
    top = min(level + max(level - ss[lowest], 0.25 * abs(level)), max(max(ss), level))
    margin = 0.06 * (top - bottom) or 0.1 * abs(top) or 1.0
    ax.set_ylim(bottom - margin, top + margin)
    ax.set_xlabel("learning rate (log scale)")
    ax.set_ylabel("training loss")
    ax.grid(True, which="major", alpha=0.3)
    # under the axes: inside, a flat start or a long plateau would run under it
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=2, fontsize=9, frameon=False)
    fig.suptitle(wrap_title(title, 7.5 - 0.3, 12, bold=True), fontsize=12, fontweight="bold")
    return _save(fig, path, title)


def plot_explanations(pictures, heatmaps, captions, path, *, title: str = "Grad-CAM") -> Path:
    """Per image, side by side: the picture the model was given, its heatmap (0 to 1, ``jet``) and
    the heatmap laid over the picture, the caption above the three; two images to a row beyond
    three. ``pictures`` are CHW tensors in [0, 1] (1 or 3 channels), ``heatmaps`` HxW tensors of
    the same size."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    count = len(pictures)
    per_row = 1 if count <= 3 else 2
    nrows = math.ceil(count / per_row)
    tile, caption = 1.7, 0.35  # inches
    width = per_row * 3 * tile + (per_row - 1) * 0.3 + 0.2
    heading = wrap_title(title, width - 0.2, 12, bold=True)
    height = nrows * (tile + caption) + 0.35 * (heading.count("\n") + 1) + 0.2
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    cells = fig.subfigures(nrows, per_row, squeeze=False)
    jet = colormaps["jet"]
    for index, cell in enumerate(cells.flat):
        if index >= count:
            continue
        pixels = _as_pixels(pictures[index])
        rgb = np.repeat(pixels[:, :, None], 3, axis=2) if pixels.ndim == 2 else pixels[:, :, :3]
        heat = _as_pixels(heatmaps[index])
        overlay = 0.55 * rgb + 0.45 * jet(heat)[:, :, :3]
        axes = cell.subplots(1, 3)
        for ax, shown, name in zip(axes, (rgb, heat, overlay), ("image", "heatmap", "overlay")):
            ax.imshow(shown, cmap="jet" if shown is heat else None, vmin=0.0, vmax=1.0, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel(name, fontsize=8, color="#555555")
        cell.suptitle(wrap_title(captions[index], 3 * tile, 9), fontsize=9)
    fig.suptitle(heading, fontsize=12, fontweight="bold")
    return _save(fig, path, title)
