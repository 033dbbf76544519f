"""Speed levers that keep results the same: memory layout, caches of decoded images and of frozen
backbone features. Each is measured in ``benchmarks/`` and documented in docs/performance.md.
"""

from __future__ import annotations

import contextlib
import os

CACHE_BUDGET_BYTES = 2 * 2**30  # transformed samples kept in memory across epochs, at most
DISABLE_ENV = "CVKIT_NO_CACHE"  # 1: no sample or feature caches (to compare, or to save memory)


def caches_enabled() -> bool:
    return os.environ.get(DISABLE_ENV, "").strip().lower() not in {"1", "true", "yes", "on"}


def use_channels_last(model) -> bool:
    """channels_last pays for convolutional nets on CPUs with AVX512/AMX and on GPUs (oneDNN and
    cuDNN pick faster NHWC kernels); measured in benchmarks/."""
    from torch import nn

    return any(isinstance(m, nn.Conv2d) for m in model.modules())


def to_channels_last(model):
    """Store the model's weights as NHWC and convert every input on the way in.

    A forward pre-hook, not a wrapper module, so the state dict keeps its keys."""
    import torch

    model.to(memory_format=torch.channels_last)

    def convert(module, args):
        x = args[0]
        if isinstance(x, torch.Tensor) and x.dim() == 4:
            return (x.contiguous(memory_format=torch.channels_last), *args[1:])
        return None

    model.register_forward_pre_hook(convert)
    return model


class CachedSamples:
    """A dataset whose items are computed once and kept: for deterministic transforms of small
    datasets (``(tensor, label)`` pairs), so later epochs skip decoding and transforming.

    Items are cached in the process that reads them; use it with ``--workers 0`` (what ``auto``
    picks for small datasets), where that process is the trainer itself.
    """

    def __init__(self, dataset, budget: int = CACHE_BUDGET_BYTES):
        self.dataset = dataset
        self.classes = getattr(dataset, "classes", None)
        self.budget = budget
        self.used = 0
        self._items: dict[int, tuple] = {}

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, index):
        item = self._items.get(index)
        if item is None:
            item = self.dataset[index]
            size = _nbytes(item[0])
            if self.used + size <= self.budget:
                self._items[index] = item
                self.used += size
        return item


def cache_decoded_images(datasets, *, budget: int = CACHE_BUDGET_BYTES, workers: int = 0,
                         max_images: int = 50_000) -> dict | None:
    """Decode every image of ``datasets`` once, up front (in threads), and keep the pictures in
    memory, so each epoch only transforms them: for random augmentation, where the transformed
    samples cannot be kept. The datasets must read files the torchvision ``DatasetFolder`` way
    (``samples`` and ``loader``; a ``Subset`` of one is fine); their ``loader`` is replaced by one
    that hands out copies of the kept pictures.

    Skipped (returns None) when a dataset has no such attributes, the set has more than
    ``max_images`` images or would take more than ``budget`` bytes decoded (estimated from the file
    headers), caches are off (``CVKIT_NO_CACHE``), or DataLoader workers would not share the memory
    (a start method other than fork). Returns ``{"images", "bytes", "seconds"}``.
    """
    import multiprocessing
    import time
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    if not caches_enabled():
        return None
    if workers > 0 and multiprocessing.get_start_method() != "fork":
        return None  # each worker would get its own pickled copy
    t0 = time.perf_counter()
    wanted: dict[int, tuple] = {}  # id(base dataset) -> (base, set of paths)
    for dataset in datasets:
        base, indices = dataset, None
        if hasattr(base, "indices") and hasattr(base, "dataset"):  # torch.utils.data.Subset
            base, indices = base.dataset, base.indices
        samples, loader = getattr(base, "samples", None), getattr(base, "loader", None)
        if not isinstance(samples, list) or loader is None:
            return None
        paths = [samples[i][0] for i in (indices if indices is not None else range(len(samples)))]
        wanted.setdefault(id(base), (base, set()))[1].update(paths)
    count = sum(len(paths) for _, paths in wanted.values())
    if count > max_images:
        return None
    from PIL import Image

    estimate = 0
    with warnings.catch_warnings():  # a file's problems are the loader's to report, below
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for _, paths in wanted.values():
            for path in paths:
                try:
                    with Image.open(path) as img:
                        estimate += _picture_bytes(img)
                except Exception:  # noqa: BLE001 - the loader below names an unreadable file
                    pass
                if estimate > budget:
                    return None
    used = 0
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1), thread_name_prefix="cvkit-decode") as pool:
        for base, paths in wanted.values():
            order = sorted(paths)
            store = dict(zip(order, pool.map(base.loader, order)))
            used += sum(_picture_bytes(picture) for picture in store.values())
            base.loader = _KeptPictures(store, base.loader)
    return {"images": count, "bytes": used, "seconds": time.perf_counter() - t0}


class _KeptPictures:
    """A dataset loader that hands out copies of pictures decoded up front (transforms may change
    the picture they get); any other path goes to the dataset's own loader."""

    def __init__(self, store: dict, loader):
        self.store = store
        self.loader = loader

    def __call__(self, path):
        picture = self.store.get(path)
        return self.loader(path) if picture is None else picture.copy()


def _picture_bytes(picture) -> int:
    size = getattr(picture, "size", (0, 0))
    return size[0] * size[1] * max(1, len(picture.getbands())) if hasattr(picture, "getbands") else 0


def _nbytes(x) -> int:
    if hasattr(x, "element_size"):
        return x.element_size() * x.nelement()
    return 0


def frozen_head(model, head: str | None) -> str | None:
    """The model's head when everything else is a frozen backbone, else None.

    Frozen means: a registered ``head`` attribute holds every trainable parameter, and the model's
    own ``train()`` leaves every module outside the head in eval mode (as resnet18-frozen does), so
    the backbone computes the same function in training and in evaluation.
    """
    if not head or not has_layer(model, head):
        return None
    prefix = head + "."
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable or not all(n.startswith(prefix) for n in trainable):
        return None
    was_training = model.training
    model.train(True)
    try:
        backbone_trains = any(m.training for n, m in model.named_modules()
                              if n and n != head and not n.startswith(prefix))
    finally:
        model.train(was_training)
    return None if backbone_trains else head


def cacheable_head(model, head: str | None, deterministic: bool) -> str | None:
    """The head to train on cached backbone features, or None when caching would change results:
    it needs a frozen backbone (:func:`frozen_head`) and a deterministic training transform."""
    if not deterministic or not caches_enabled():
        return None
    return frozen_head(model, head)


@contextlib.contextmanager
def _headless(model, head: str):
    """``model`` with its ``head`` replaced by Identity (the backbone alone) inside the block;
    yields the head."""
    from torch import nn

    layer = model.get_submodule(head)
    set_layer(model, head, nn.Identity())
    try:
        yield layer
    finally:
        set_layer(model, head, layer)


def has_layer(model, path: str) -> bool:
    """Whether ``model`` has the submodule ``path`` (dotted: ``fc``, ``classifier.3``, ``heads.head``)."""
    try:
        model.get_submodule(path)
    except AttributeError:
        return False
    return True


def set_layer(model, path: str, layer) -> None:
    """Put ``layer`` at the dotted ``path`` of ``model``."""
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, layer)


def frozen_backbone_model(model, head: str):
    """A module that trains a frozen-backbone model faster: ``head(backbone(x))`` where the
    backbone is a copy of the model without its head made ready by :func:`for_inference`
    (BatchNorm folded into the convolution before it, exact in eval mode, where a frozen backbone
    stays) and run without autograd; the head is the model's own module, so the optimizer's
    parameters and the checkpoint's state dict stay the model's. For random augmentation, where
    features cannot be cached; the backbone must be frozen (:func:`frozen_head`)."""
    import copy

    import torch
    from torch import nn

    with _headless(model, head) as layer:
        backbone = for_inference(copy.deepcopy(model))
    for p in backbone.parameters():
        p.requires_grad_(False)

    class FrozenBackbone(nn.Module):
        def __init__(self):
            super().__init__()
            self.backbone = backbone
            self.head = layer

        def train(self, mode: bool = True):
            self.training = mode
            self.head.train(mode)
            self.backbone.eval()
            return self

        def forward(self, x):
            with torch.no_grad():
                features = self.backbone(x)
            return self.head(features)

    return FrozenBackbone()


def for_inference(model):
    """``model`` ready for inference only: eval mode, each BatchNorm folded into the convolution
    before it, channels_last where that pays (:func:`use_channels_last`)."""
    model.eval()
    fused = _fuse_conv_bn(model)
    if use_channels_last(fused):
        to_channels_last(fused)
    return fused.eval()


def _fuse_conv_bn(module):
    """``module`` (eval mode) with each Conv2d -> BatchNorm2d pair folded into one convolution, by
    tracing it with torch.fx; ``module`` itself when it cannot be traced (data-dependent control
    flow in a plugin's model, say): fusing is a speed-up, never a requirement."""
    try:
        from torch.fx.experimental.optimization import fuse

        return fuse(module, inplace=False)
    except Exception:  # noqa: BLE001 - any tracing failure means: run it unfused
        return module


def extract_features(model, head: str, loader, *, device, precision: str):
    """Run the backbone (the model with its head replaced by Identity) once over ``loader``, in
    eval mode without autograd; returns ``(features, labels)`` on the CPU in loader order."""
    import torch

    from cvkit.device import autocast

    was_training = model.training
    model.eval()
    features, labels = [], []
    try:
        with _headless(model, head), torch.inference_mode():
            for x, y in loader:
                with autocast(device, precision):
                    f = model(x.to(device, non_blocking=True))
                features.append(f.float().cpu())
                labels.append(y)
    finally:
        model.train(was_training)
    return torch.cat(features), torch.cat(labels)
