"""Built-in plugin: the ``imagefolder`` dataset format (``ROOT/<split>/<class>/*`` or ``ROOT/<class>/*``)."""

import os

import cvkit
from cvkit.errors import DataError

SPLIT_ALIASES = {"val": ("val", "valid", "validation"), "train": ("train",), "test": ("test",)}


def split_dir(root: str, split: str | None) -> str:
    """``ROOT/<split>`` (``valid`` and ``validation`` count as ``val``); ``ROOT`` when split is None."""
    if not os.path.isdir(root):
        raise DataError(f"{root}: no such folder")
    if split is None:
        return root
    for name in SPLIT_ALIASES.get(split, (split,)):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            return path
    raise DataError(f"{root}: has no {split!r} folder (looked for {', '.join(SPLIT_ALIASES.get(split, (split,)))})")


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
    register("imagefolder", build_imagefolder,
             help="torchvision ImageFolder: ROOT/train/<class>/*, ROOT/val/<class>/* or ROOT/<class>/*")
