"""Built-in plugin: the ``imagefolder`` dataset format (``ROOT/<split>/<class>/*`` or ``ROOT/<class>/*``).

The format decides its own layout (:func:`imagefolder_splits`): ``ROOT/train`` with ``ROOT/val``
(``valid`` and ``validation`` count as ``val``) are two splits; ``ROOT/train`` alone is a train
split cvkit holds part of out with ``--val-split``; class folders directly under ROOT are data
without splits (``split=None``), split the same way.
"""

import os

import cvkit
from cvkit.errors import DataError

SPLIT_ALIASES = {"val": ("val", "valid", "validation"), "train": ("train",), "test": ("test",)}


def _find(root: str, split: str) -> str | None:
    for name in SPLIT_ALIASES.get(split, (split,)):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    return None


def split_dir(root: str, split: str | None) -> str:
    """``ROOT/<split>`` (``valid`` and ``validation`` count as ``val``); ``ROOT`` when split is None."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such folder")
    if split is None:
        return root
    path = _find(root, split)
    if path is None:
        raise DataError(f"{root}: has no {split!r} folder (looked for {', '.join(SPLIT_ALIASES.get(split, (split,)))})")
    return path


def imagefolder_splits(root: str, **_options) -> tuple:
    """``("train", "val")``, ``("train",)`` or ``()`` (class folders directly under ROOT)."""
    if not os.path.exists(root):
        raise DataError(f"{root}: no such folder")
    if not os.path.isdir(root):
        raise DataError(f"{root}: not a folder (DATA is a folder of class folders, or of train/ and val/; "
                        f"for a CSV of labels use --dataset csv)")
    if _find(root, "train"):
        return ("train", "val") if _find(root, "val") else ("train",)
    if not any(not d.startswith(".") and os.path.isdir(os.path.join(root, d)) for d in os.listdir(root)):
        raise DataError(f"{root}: no class folders (expected {root}/<class>/<images> or {root}/train and {root}/val)")
    return ()


def build_imagefolder(root: str, *, split: str | None, transform, allow_empty: bool = False,
                      min_side: int | None = None):
    """``min_side``: cvkit's hint of the smallest image side the model needs (large JPEGs then
    decode at a reduced scale, several times faster)."""
    from cvkit_plugins.imagefolder import CvkitImageFolder

    path = split_dir(root, split)
    try:
        return CvkitImageFolder(path, transform=transform, allow_empty=allow_empty, min_side=min_side)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: {exc}") from None


@cvkit.hookimpl
def register_datasets(register):
    register("imagefolder", build_imagefolder, splits=imagefolder_splits,
             help="torchvision ImageFolder: ROOT/train/<class>/*, ROOT/val/<class>/* or ROOT/<class>/*")
