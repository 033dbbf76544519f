"""Speed levers that keep results the same: memory layout, caches of decoded images and of frozen
backbone features. Each is measured in ``benchmarks/`` and documented in docs/performance.md.
"""

from __future__ import annotations

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


def _nbytes(x) -> int:
    if hasattr(x, "element_size"):
        return x.element_size() * x.nelement()
    return 0


def cacheable_head(model, head: str | None, deterministic: bool) -> str | None:
    """The head to train on cached backbone features, or None when caching would change results:
    it needs a registered ``head``, a deterministic training transform, and every trainable
    parameter inside the head (a frozen backbone)."""
    if not head or not deterministic or not hasattr(model, head) or not caches_enabled():
        return None
    prefix = head + "."
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    if not trainable or not all(n.startswith(prefix) for n in trainable):
        return None
    return head


def extract_features(model, head: str, loader, *, device, precision: str):
    """Run the backbone (the model with its head replaced by Identity) once over ``loader``, in
    eval mode without autograd; returns ``(features, labels)`` on the CPU in loader order."""
    import torch
    from torch import nn

    from cvkit.train import autocast

    layer = getattr(model, head)
    setattr(model, head, nn.Identity())
    was_training = model.training
    model.eval()
    features, labels = [], []
    try:
        with torch.inference_mode():
            for x, y in loader:
                with autocast(device, precision):
                    f = model(x.to(device, non_blocking=True))
                features.append(f.float().cpu())
                labels.append(y)
    finally:
        setattr(model, head, layer)
        model.train(was_training)
    return torch.cat(features), torch.cat(labels)
