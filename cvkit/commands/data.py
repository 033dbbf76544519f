"""`cvkit data`: make image folders to train on."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

from cvkit.errors import DataError, UsageError

DEMO_DATASET = "shapes"

# name -> torchvision dataset class, for `cvkit data download`
DOWNLOADS = {
    "cifar10": "CIFAR10",
    "mnist": "MNIST",
    "fashion-mnist": "FashionMNIST",
}


def _count(root: Path) -> dict:
    counts = {}
    for split in ("train", "val"):
        d = root / split
        counts[split] = sum(1 for p in d.rglob("*") if p.is_file() and not p.name.startswith(".")) if d.is_dir() else 0
    return counts


def make_demo_data(folder: str, *, seed: int = 0, train_per_class: int | None = None,
                   val_per_class: int | None = None, size: int | None = None, plugins=None) -> dict:
    """Draw the built-in demo tree through the ``shapes`` dataset plugin (offline, deterministic).

    Sizes left None are the plugin's defaults (1000 and 100 pictures per class, 64 pixels)."""
    from cvkit.build import build_dataset

    before = _top_level(Path(folder))
    sizes = {"train_per_class": train_per_class, "val_per_class": val_per_class, "size": size}
    options = {"seed": seed, **{k: v for k, v in sizes.items() if v is not None}}
    ds = build_dataset(DEMO_DATASET, folder, split="train", transform=None, options=options, plugins=plugins)
    root = Path(folder)
    return {"root": str(root), "classes": list(ds.classes), "counts": _count(root), "seed": seed,
            "created": _top_level(root) != before}


def _top_level(root: Path) -> dict:
    """What the folder's entries are: redrawing the tree replaces them (new inode or mtime)."""
    try:
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in root.iterdir()}
    except OSError:
        return {}


def download_dataset(name: str, folder: str) -> dict:
    """Write a torchvision dataset out as ``folder/train/<class>/*.png`` and ``folder/val/<class>/*.png``."""
    key = name.lower().replace("_", "-")
    if key not in DOWNLOADS:
        raise UsageError(f"cvkit data download {name!r}: unknown dataset (one of: {', '.join(DOWNLOADS)})")
    import torchvision.datasets as tvd

    root = Path(folder)
    if root.exists() and any(root.iterdir()):
        raise UsageError(f"{root}: folder is not empty; choose a new folder")
    cache = root / ".download"
    cls = getattr(tvd, DOWNLOADS[key])
    splits = {}
    created = not root.exists()
    try:
        with contextlib.redirect_stdout(sys.stderr):  # torchvision prints its progress on stdout
            for split, train in (("train", True), ("val", False)):
                splits[split] = cls(str(cache), train=train, download=True)
    except (OSError, RuntimeError) as exc:  # URLError, socket errors, "Dataset not found or corrupted"
        if created:
            shutil.rmtree(root, ignore_errors=True)
        reason = " ".join(str(exc).split())
        raise DataError(f"cannot download {key} ({type(exc).__name__}: {reason}); "
                        f"this needs internet access") from None
    classes = list(splits["train"].classes)
    for split, ds in splits.items():
        names = [c.split(" - ")[-1].replace("/", "-") for c in ds.classes]
        for c in names:
            os.makedirs(root / split / c, exist_ok=True)
        for i in range(len(ds)):
            img, label = ds[i]
            img.save(root / split / names[label] / f"{i:05d}.png")
    return {"root": str(root), "classes": classes, "counts": _count(root), "dataset": key}


def render_check(report: dict) -> None:
    from rich.markup import escape as esc
    from rich.table import Table

    from cvkit import ui

    splits = report["splits"]
    classes = sorted({c for s in splits.values() for c in s["classes"]})
    say = lambda text: ui.out.print(text, soft_wrap=True)  # noqa: E731  (paths stay whole, never wrapped)
    layout = "its own train and val splits" if report["layout"] == "folders" else "no validation split"
    say(f"[bold]{esc(report['root'])}[/] ({esc(report.get('dataset', 'imagefolder'))}: {layout})")
    table = Table()
    table.add_column("class")
    for name in splits:
        table.add_column(name, justify="right")
    for c in classes:
        cells = []
        for s in splits.values():
            n = s["classes"].get(c)
            cells.append("[red]missing[/]" if n is None else f"[red]{n}[/]" if n == 0 else str(n))
        table.add_row(esc(c), *cells)
    table.add_row("[bold]images[/]", *[f"[bold]{s['images']}[/]" for s in splits.values()], end_section=True)
    ui.out.print(table)
    for name, s in splits.items():
        if s["hidden_ignored"] or s["other_files"]:
            say(f"{name}: ignored {s['hidden_ignored']} hidden entries and {s['other_files']} non-image files")
    for e in report["errors"]:
        say(f"[red]error:[/] {esc(e)}")
    for u in report.get("unreadable", []):
        say(f"[red]unreadable:[/] {esc(u['error'])}")
    for w in report["warnings"]:
        say(f"[yellow]warning:[/] {esc(w)}")
    for n in report.get("notes", []):  # not problems: what `cvkit train` will need for this layout
        say(f"[cyan]note:[/] {esc(n)}")
    if "unreadable" not in report:
        ui.out.print("(quick check: images were not decoded)")
    elif not (report["errors"] or report["unreadable"] or report["warnings"]):
        ui.out.print("[green]no problems found[/]")
