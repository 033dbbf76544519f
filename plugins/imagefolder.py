"""torchvision's ImageFolder read through cvkit's image loader (imports torch: load it from a factory)."""

import functools

from torchvision.datasets import ImageFolder

from cvkit.images import IMAGE_EXTENSIONS, load_image


def _visible_image(path: str) -> bool:
    name = path.replace("\\", "/").rsplit("/", 1)[-1]
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


class CvkitImageFolder(ImageFolder):
    """ImageFolder that ignores hidden folders (``.ipynb_checkpoints``, ``.git``) and hidden files."""

    def __init__(self, root, transform=None, allow_empty: bool = False, min_side: int | None = None):
        loader = functools.partial(load_image, min_side=min_side) if min_side else load_image
        super().__init__(root, transform=transform, loader=loader, is_valid_file=_visible_image,
                         allow_empty=allow_empty)

    def find_classes(self, directory):
        classes, _ = super().find_classes(directory)
        classes = [c for c in classes if not c.startswith(".")]
        return classes, {c: i for i, c in enumerate(classes)}
