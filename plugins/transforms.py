"""Built-in plugin: the chapter's augmentation (``chapter``) and a deterministic one (``plain``).

Sizes, channels and normalisation come from the model's registration, so ``net`` reads any image as
1x32x32 and resnet18 as 3x224x224.
"""

import cvkit


class ToChannels:
    """Convert a PIL image to 1 (grayscale) or 3 (RGB) channels. A class, not a lambda, so that
    DataLoader worker processes can pickle it."""

    def __init__(self, channels: int):
        if channels not in (1, 3):
            raise ValueError(f"the built-in transforms read images as 1 or 3 channels, not {channels}")
        self.mode = "L" if channels == 1 else "RGB"

    def __call__(self, img):
        return img if img.mode == self.mode else img.convert(self.mode)

    def __repr__(self):
        return f"ToChannels(mode={self.mode!r})"


def _mode(interpolation: str):
    from torchvision.transforms import InterpolationMode

    return InterpolationMode(interpolation)


def build_chapter(*, train: bool, input_size, mean, std, scale=(0.08, 1.0), flip: float = 0.5,
                  resize: int | None = None, interpolation: str = "bilinear"):
    """``resize`` and ``interpolation``: the model's (e.g. convnext_tiny: 236, bilinear)."""
    from torchvision import transforms as T

    channels, height, width = input_size
    mode = _mode(interpolation)
    if train:
        steps = [T.RandomResizedCrop((height, width), scale=tuple(scale), interpolation=mode),
                 T.RandomHorizontalFlip(flip)]
    else:
        steps = [T.Resize(resize or round(min(height, width) * 256 / 224), interpolation=mode),
                 T.CenterCrop((height, width))]
    return T.Compose([ToChannels(channels), *steps, T.ToTensor(), T.Normalize(mean, std)])


def build_plain(*, train: bool, input_size, mean, std, interpolation: str = "bilinear"):
    from torchvision import transforms as T

    channels, height, width = input_size
    return T.Compose([ToChannels(channels), T.Resize(min(height, width), interpolation=_mode(interpolation)),
                      T.CenterCrop((height, width)), T.ToTensor(), T.Normalize(mean, std)])


@cvkit.hookimpl
def register_transforms(register):
    register("chapter", build_chapter,
             help="train: RandomResizedCrop + RandomHorizontalFlip; eval: Resize (the model's, else size*256/224) + CenterCrop; then Normalize")
    register("plain", build_plain, deterministic=True,
             help="deterministic Resize + CenterCrop + Normalize, for train and eval")
