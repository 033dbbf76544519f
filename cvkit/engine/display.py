"""What a person sees of a training run: the epoch table (fitted to the terminal) and the summary."""

from __future__ import annotations

from cvkit import ui

# In a narrow terminal the epoch table leaves out columns in this order (ui.fit); the rest keep their numbers.
EPOCH_COLUMNS_DROPPED = ("time", "lr", "train acc", "val loss", "train loss")


def print_epoch_row(console, cells: list[str], *, first: bool) -> None:
    from rich.table import Table

    table = Table(box=None, show_header=first, header_style="bold underline", pad_edge=False)
    for name, width in (("epoch", 7), ("train loss", 10), ("train acc", 9), ("val loss", 9), ("val acc", 8),
                        ("lr", 7), ("time", 6), ("", 4)):
        table.add_column(name, justify="right", min_width=width, no_wrap=True)
    table.add_row(*cells)
    dropped = ui.fit(table, EPOCH_COLUMNS_DROPPED, console=console)
    console.print(table)
    if first and dropped:
        console.print(f"(not shown at {console.width} columns: {', '.join(dropped)}; all of them are in "
                      "metrics.csv)", style="dim", markup=False, highlight=False)


def epochs_planned(epochs: int, start_epoch: int) -> str:
    """``25 epochs``, or ``epochs 7-25 of 25`` for a resumed run: how long this will take, said up front."""
    if start_epoch == 1:
        return f"{epochs} epoch" + ("s" if epochs > 1 else "")
    return f"epoch {epochs} of {epochs}" if start_epoch == epochs else f"epochs {start_epoch}-{epochs} of {epochs}"


def print_summary(summary: dict, console) -> None:
    from rich.markup import escape

    acc = summary["best_val_accuracy"]
    rate = summary["train_images_per_second"]  # None when no epoch trained in this call
    console.print(
        f"\n[bold green]done[/] in {summary['seconds']:.1f}s: best val accuracy "
        f"[bold]{acc:.3f}[/] at epoch {summary['best_epoch']} ("
        + (f"{rate} train images/s on " if rate is not None else "")
        + f"{summary['device']} {summary['precision']})"
        if acc is not None else f"\n[bold]done[/] in {summary['seconds']:.1f}s")
    for message in summary.get("warnings") or []:  # said before training too, on stderr
        console.print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)
    if summary["skipped_images"]:
        console.print(f"[yellow]skipped {len(summary['skipped_images'])} unreadable images:[/]")
        for item in summary["skipped_images"]:
            console.print(f"  {item['error']}", markup=False)
    console.print(f"run directory: {summary['run_dir']}")
    console.print(f"  evaluate: cvkit eval --checkpoint {summary['best_checkpoint']}")
    console.print(f"  predict:  cvkit predict IMAGE... --checkpoint {summary['best_checkpoint']}")
