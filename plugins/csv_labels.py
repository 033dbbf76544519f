"""Built-in plugin: the ``csv`` dataset format, a CSV file listing image paths and their labels.

DATA is a ``.csv`` file, or a folder holding ``labels.csv`` (else its only ``*.csv``). The header
row names the columns: the image (``filename``, else ``path``), the ``label`` and, optionally, the
``split`` (train; val, valid or validation; test). Image paths are relative to the CSV file's
folder, or absolute. Options (``--opt dataset.KEY=VALUE``): ``file``, ``image_column``,
``label_column``, ``split_column`` (``none`` ignores a ``split`` column).

Every row is checked when the dataset is built (the first problem is one DataError that counts the
rest); an unreadable image is found when it is loaded. The dataset is a plain map-style class laid
out as torchvision's DatasetFolder (``samples``, ``targets``, ``loader``), so this module imports
no torch and DataLoader workers can pickle it.
"""

from __future__ import annotations

import csv
import functools
import os
from dataclasses import dataclass

import cvkit
from cvkit.errors import DataError, UsageError, message_of
from cvkit.images import load_image

HELP = "CSV of image paths and labels: DATA is a .csv file or a folder with labels.csv (filename,label[,split])"
SPLIT_VALUES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
SPLIT_ORDER = ("train", "val", "test")
MULTI_LABEL = "multi-label rows are not supported (cvkit trains single-label classifiers)"
LABEL_SEPARATORS = (";", "|", ",")


def find_csv(root, file: str | None = None) -> str:
    """The CSV file DATA names: DATA itself, or in a folder ``file``, ``labels.csv`` or its only ``*.csv``."""
    root = str(root)
    if not os.path.exists(root):
        raise DataError(f"{root}: no such file or folder")
    if not os.path.isdir(root):
        if file:
            raise UsageError(f"--opt dataset.file={file}: DATA {root} is a file; the option picks a CSV "
                             f"file inside a folder")
        return root
    if file:
        path = os.path.join(root, str(file))
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file (--opt dataset.file={file})")
        return path
    if os.path.isfile(os.path.join(root, "labels.csv")):
        return os.path.join(root, "labels.csv")
    found = sorted(n for n in os.listdir(root) if n.lower().endswith(".csv") and not n.startswith(".")
                   and os.path.isfile(os.path.join(root, n)))
    if len(found) == 1:
        return os.path.join(root, found[0])
    what = f"several CSV files ({', '.join(found)}) and no labels.csv" if found else "no .csv file"
    raise DataError(f"{root}: {what}; name the file as DATA or pick one with --opt dataset.file=NAME")


def read_csv(path: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the non-blank data rows of ``path``, each row with the file line it starts on."""
    records, last, reader = [], 0, None
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            for cells in reader:
                start, last = last + 1, reader.line_num
                if any(c.strip() for c in cells):
                    records.append((start, [c.strip() for c in cells]))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise DataError(f"{path} row {last + 1}: not valid CSV ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not records:
        raise DataError(f"{path}: empty file (the first row must be a header: filename,label[,split])")
    if len(records) == 1:
        raise DataError(f"{path}: no data rows, only the header ({', '.join(records[0][1])})")
    return records[0][1], records[1:]


@dataclass(frozen=True)
class Columns:
    """Where the image, label and (optional) split cells are in a row."""

    image: str
    label: str
    split: str | None
    index: dict

    def cell(self, cells: list[str], name: str | None) -> str:
        i = self.index.get(name) if name is not None else None
        return cells[i] if i is not None and i < len(cells) else ""


def pick_columns(path: str, header: list[str], image_column=None, label_column=None,
                 split_column=None) -> Columns:
    """The columns the options name (or the defaults); a missing one is a DataError listing them all."""
    index = {}
    for i, name in enumerate(header):
        index.setdefault(name, i)
    listed = ", ".join(header)
    if image_column is None:
        image_column = next((n for n in ("filename", "path") if n in index), None)
        if image_column is None:
            raise DataError(f"{path}: no 'filename' or 'path' column (columns: {listed}; the first row must be "
                            f"a header); name the image column with --opt dataset.image_column=NAME")
    if split_column is None:
        split_column = "split" if "split" in index else None
    elif str(split_column).lower() in ("", "none"):
        split_column = None
    named = {"image_column": str(image_column), "label_column": str(label_column or "label"),
             "split_column": None if split_column is None else str(split_column)}
    for option, name in named.items():
        if name is not None and name not in index:
            raise DataError(f"{path}: no column {name!r} (columns: {listed}); "
                            f"name it with --opt dataset.{option}=NAME")
    return Columns(named["image_column"], named["label_column"], named["split_column"], index)


def split_of(path: str, line: int, value: str) -> tuple[str | None, str | None]:
    """``(split, None)`` for a known split value, ``(None, problem)`` for any other."""
    split = SPLIT_VALUES.get(value.lower())
    if split is None:
        return None, f"{path} row {line}: split {value!r} is not train, val (valid, validation) or test"
    return split, None


@dataclass(frozen=True)
class Row:
    """One data row: its line in the file, the image cell as written and as an absolute path."""

    line: int
    cell: str
    path: str
    label: str
    split: str


def _row_problem(path: str, row: Row, seen: dict, columns: Columns, split_problem: str | None) -> str | None:
    if not row.cell:
        return f"{path} row {row.line}: empty {columns.image!r} cell"
    if not row.label:
        return f"{path} row {row.line}: {row.cell}: empty label (column {columns.label!r})"
    if split_problem:
        return split_problem
    if any(sep in row.label for sep in LABEL_SEPARATORS):
        return f"{path}: {MULTI_LABEL}: row {row.line} has label {row.label!r}"
    first = seen.setdefault(row.path, row)
    if first is not row and first.label != row.label:
        return (f"{path}: {MULTI_LABEL}: row {row.line} lists {row.cell} with label {row.label!r}, "
                f"row {first.line} with {first.label!r}")
    if first is not row:
        return (f"{path} row {row.line}: {row.cell} is listed twice with label {row.label!r} "
                f"(rows {first.line} and {row.line}): remove the duplicate row")
    if not os.path.exists(row.path):
        return f"{path} row {row.line}: {row.cell}: no such file"
    if os.path.isdir(row.path):
        return f"{path} row {row.line}: {row.cell}: is a folder, not an image"
    return None


def _raise_first(problems: list[str]) -> None:
    if problems:
        n = len(problems) - 1
        more = f" (and {n} more {'row' if n == 1 else 'rows'} with problems)" if n else ""
        raise DataError(problems[0] + more)


def read_rows(path: str, columns: Columns, records: list[tuple[int, list[str]]]) -> list[Row]:
    """Every data row, checked once: empty cells, split values, multi-label and duplicate rows, files."""
    folder = os.path.dirname(os.path.abspath(path))
    rows, problems, seen = [], [], {}
    for line, cells in records:
        split, problem = "train", None
        if columns.split is not None:
            split, problem = split_of(path, line, columns.cell(cells, columns.split))
        cell = columns.cell(cells, columns.image)
        row = Row(line, cell, os.path.normpath(os.path.join(folder, cell)), columns.cell(cells, columns.label),
                  split or "")
        problem = _row_problem(path, row, seen, columns, problem)
        if problem:
            problems.append(problem)
        else:
            rows.append(row)
    _raise_first(problems)
    return rows


class CsvImages:
    """The rows of one split as a map-style dataset yielding ``(transform(image), label)``.

    ``samples``, ``imgs``, ``targets`` and ``loader`` are read at each access, as in torchvision's
    DatasetFolder, so cvkit may replace the loader (decode cache) or drop samples (bad images).
    """

    def __init__(self, csv_path: str, rows: list[Row], classes: list[str], transform=None, loader=load_image):
        self.csv_path = csv_path
        self.root = os.path.dirname(os.path.abspath(csv_path))
        self.classes = list(classes)
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}
        self.samples = [(r.path, self.class_to_idx[r.label]) for r in rows]
        self.imgs = self.samples
        self.targets = [t for _, t in self.samples]
        self.transform = transform
        self.loader = loader
        self.lines = {r.path: r.line for r in rows}

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            image = self.loader(path)
        except DataError as exc:
            raise DataError(f"{self.csv_path} row {self.lines.get(path, '?')}: {message_of(exc)}") from None
        return (image if self.transform is None else self.transform(image)), target

    def __repr__(self) -> str:
        return f"CsvImages({self.csv_path!r}, {len(self)} images, {len(self.classes)} classes)"


def build_csv(root: str, *, split: str | None, transform, min_side: int | None = None, file: str | None = None,
              image_column: str | None = None, label_column: str = "label", split_column: str | None = None):
    """The rows of ``split`` (None: every row but test) of the CSV file DATA names."""
    path = find_csv(root, file)
    header, records = read_csv(path)
    columns = pick_columns(path, header, image_column, label_column, split_column)
    rows = read_rows(path, columns, records)
    classes = sorted({r.label for r in rows})  # every row's label: train and val share one list
    if split is None:
        chosen = [r for r in rows if r.split != "test"]
    elif split in SPLIT_ORDER:
        chosen = [r for r in rows if r.split == split]
    else:
        raise DataError(f"{path}: no split {split!r} (a CSV's splits are train, val and test)")
    if not chosen:
        where = f"column {columns.split!r}" if columns.split else "no split column: every row is train"
        raise DataError(f"{path}: no {split or 'train or val'} rows ({where})")
    loader = functools.partial(load_image, min_side=min_side) if min_side else load_image
    return CsvImages(path, chosen, classes, transform=transform, loader=loader)


def csv_splits(root: str, *, file: str | None = None, image_column: str | None = None,
               label_column: str = "label", split_column: str | None = None) -> tuple:
    """The splits the split column holds, in train, val, test order; ``()`` without a split column."""
    path = find_csv(root, file)
    header, records = read_csv(path)
    columns = pick_columns(path, header, image_column, label_column, split_column)
    if columns.split is None:
        return ()
    found, problems = set(), []
    for line, cells in records:
        split, problem = split_of(path, line, columns.cell(cells, columns.split))
        found.add(split)
        if problem:
            problems.append(problem)
    _raise_first(problems)
    return tuple(s for s in SPLIT_ORDER if s in found)


@cvkit.hookimpl
def register_datasets(register):
    register("csv", build_csv, splits=csv_splits, help=HELP)
