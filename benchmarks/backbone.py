"""A backbone trained briefly on the benchmark's own RGB pictures: the frozen rows' starting weights.

The frozen rows train only ``fc`` on a frozen backbone. On random weights (``--weights none``)
that backbone's features say little about the pictures (in eval mode its BatchNorm layers normalise
with the running statistics of a net that never saw an image), so the accuracies of the two sides
could not be compared. Neither side may download ImageNet weights here, so this script makes a
stand-in: a plain PyTorch loop (no cvkit import) trains torchvision's ``ARCH(weights=None)`` (``resnet18``
by default; ``--arch mobilenet_v3_small`` for the mobilenet row) on
the ``rgb`` tree's ``train/`` pictures for two epochs (one in ``--quick``), seeded, fp32, no DataLoader workers, with
the chapter's augmentation (``RandomResizedCrop(224)``, ``RandomHorizontalFlip()``), SGD momentum
0.9. The model keeps torchvision's 1000-way head (the labels use its first three outputs), so the
saved state dict has the layout of torchvision's ImageNet weights and both sides load it as the
chapter loads those: the plain loop with ``load_state_dict`` then a new ``fc``
(``plain.py train --backbone PATH``); cvkit with ``--weights PATH``, which drops a head whose
shape differs from the model's (1000 outputs against 3 classes) and starts it fresh. Both heads
therefore start untrained, from the same backbone.

The state dict goes to ``FOLDER/ARCH-backbone.pt`` (``FOLDER`` is ``backbone/`` beside the data
trees under ``--data-root`` for resnet18, ``backbone-ARCH/`` for another), with ``summary.json``
(its accuracy on the ``val/`` pictures, seconds).
Like the data it is reused while its marker says it was trained with the same parameters (the ``rgb``
tree's, the seed, the sizes below, the torch and torchvision versions), else trained again.

``python benchmarks/backbone.py RGB_ROOT FOLDER [--arch ARCH] [--seed S] [--quick]`` trains (or reuses) it and
prints the summary as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import data as bench_data  # noqa: E402

VERSION = 1  # bump when the training changes, so cached backbones are trained again
ARCHS = ("resnet18", "mobilenet_v3_small")  # torchvision names, built with torchvision.models.get_model
SUMMARY = "summary.json"

# full: resnet18 2 epochs over the 240 training pictures (30 steps), about 2-4 minutes on 2 cores, once
# (its own val accuracy was 1.000 when this was chosen); mobilenet_v3_small learns slower from scratch
# (2 epochs at lr 0.01: val accuracy 0.333; 10 at 0.1: 0.378; 10 at 0.05: 0.856, about 45 s), so 10 at
# 0.05; --quick: one short epoch on the quick tree (it checks the plumbing, not the accuracies)
# mobilenet_v3's BatchNorm layers use momentum 0.01, so after 150 steps their running statistics are
# still far from the features' (a fresh head on its eval-mode features saw losses of 30-200), unlike
# those of a long ImageNet training: ``precise_bn`` recomputes them afterwards as exact averages over
# the training pictures (eval transform), as a fully trained backbone would have them.
FULL = {"resnet18": {"epochs": 2, "batch_size": 16, "lr": 0.01},
        "mobilenet_v3_small": {"epochs": 10, "batch_size": 16, "lr": 0.05, "precise_bn": True}}
QUICK = {"epochs": 1, "batch_size": 8, "lr": 0.01}

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


def file_name(arch: str) -> str:
    return f"{arch}-backbone.pt"


def folder_for(rgb_root, arch: str) -> Path:
    """Where run.py keeps ``arch``'s backbone: beside the rgb tree."""
    return Path(rgb_root).parent / ("backbone" if arch == "resnet18" else f"backbone-{arch}")


def sizes_for(arch: str, quick: bool) -> dict:
    return QUICK if quick else FULL.get(arch, FULL["resnet18"])


def params_for(rgb_root, *, seed: int, quick: bool, arch: str = "resnet18") -> dict:
    """What the cached backbone is keyed by (no torch import)."""
    marker = bench_data._read_marker(Path(rgb_root)) or {}
    return {"version": VERSION, "arch": arch, "seed": seed, **sizes_for(arch, quick), "rgb": marker.get("params"),
            "torch": _version("torch"), "torchvision": _version("torchvision")}


def cached(folder, params: dict) -> dict | None:
    """The summary of the backbone in ``folder`` when it is complete and was trained with ``params``."""
    folder = Path(folder)
    marker = bench_data._read_marker(folder)
    present = (folder / file_name(params["arch"])).exists()
    if not (marker and marker.get("complete") and marker.get("params") == params and present):
        return None
    try:
        return json.loads((folder / SUMMARY).read_text())
    except (OSError, ValueError):
        return None


def _loader(root: Path, split: str, batch_size: int, train: bool):
    import torch
    from torchvision import datasets
    from torchvision import transforms as T

    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if train:
        tf = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), normalize])
    else:
        tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize])
    folder = datasets.ImageFolder(str(root / split), tf)
    return torch.utils.data.DataLoader(folder, batch_size=batch_size, shuffle=train, num_workers=0)


def train_backbone(rgb_root, out_file, *, arch: str, seed: int, epochs: int, batch_size: int, lr: float,
                   precise_bn: bool = False) -> dict:
    """Train torchvision's ``arch`` (1000-way head) on ``rgb_root/train``; save its state dict."""
    import random

    import torch
    from torch import nn
    from torchvision import models

    started = time.perf_counter()
    random.seed(seed)
    torch.manual_seed(seed)
    rgb_root = Path(rgb_root)
    train_loader = _loader(rgb_root, "train", batch_size, train=True)
    model = models.get_model(arch, weights=None)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    losses = []
    for epoch in range(epochs):
        model.train()
        total, count = 0.0, 0
        for inputs, labels in train_loader:
            optimizer.zero_grad()
            loss = criterion(model(inputs), labels)
            loss.backward()
            optimizer.step()
            total += loss.item() * inputs.size(0)
            count += inputs.size(0)
        losses.append(round(total / count, 4))
        print(f"backbone epoch {epoch + 1}/{epochs}: train loss {losses[-1]}", file=sys.stderr, flush=True)
    if precise_bn:
        _precise_bn(model, _loader(rgb_root, "train", batch_size, train=False))
    torch.save(model.state_dict(), out_file)
    return {"file": str(Path(out_file).resolve()), "train_losses": losses,
            "val_accuracy": _accuracy(model, _loader(rgb_root, "val", batch_size, train=False)),
            "train_seconds": round(time.perf_counter() - started, 1)}


def _precise_bn(model, loader) -> None:
    """Every BatchNorm's running mean and variance recomputed as the plain average over ``loader``."""
    import torch
    from torch import nn

    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average
    model.train()
    with torch.no_grad():
        for inputs, _ in loader:
            model(inputs)


def _accuracy(model, loader) -> float:
    import torch

    model.eval()
    right = seen = 0
    with torch.no_grad():
        for inputs, labels in loader:
            right += int((model(inputs).argmax(1) == labels).sum())
            seen += len(labels)
    return round(right / seen, 4) if seen else 0.0


def build(rgb_root, folder, *, arch: str = "resnet18", seed: int = 0, quick: bool = False) -> dict:
    """Train the backbone into ``folder`` unless it is already there with the same parameters."""
    folder = Path(folder)
    params = params_for(rgb_root, seed=seed, quick=quick, arch=arch)
    summary = cached(folder, params)
    if summary is not None:
        return {**summary, "created": False}
    bench_data._fresh(folder, params)  # empties a stale backbone folder (never a foreign one)
    sizes = sizes_for(arch, quick)
    summary = {"params": params, **train_backbone(rgb_root, folder / file_name(arch), arch=arch, seed=seed, **sizes)}
    (folder / SUMMARY).write_text(json.dumps(summary, indent=1) + "\n")
    bench_data._write_marker(folder, params, complete=True)
    return {**summary, "created": True}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rgb_root", help="the benchmark's rgb tree (train/ and val/)")
    parser.add_argument("folder", help="where the state dict and its marker go")
    parser.add_argument("--arch", choices=ARCHS, default="resnet18", help="torchvision model [resnet18]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="the tiny training of run.py --quick")
    args = parser.parse_args(argv)
    print(json.dumps(build(args.rgb_root, args.folder, arch=args.arch, seed=args.seed, quick=args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
