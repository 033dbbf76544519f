"""A timm-recipe peer: the same training job written plainly with timm's library, no cvkit import.

``python benchmarks/peer_timm.py DATA --epochs 2 --batch-size 16 --json`` trains a timm model (default
``resnet18``, ``pretrained=False``) on an ImageFolder tree (``DATA/train``, ``DATA/val``) the way a
user of timm writes it from the library's parts, with the defaults of timm's ``train.py`` where it
has them:

- ``timm.create_model(MODEL, pretrained=False, num_classes=N)`` (timm's resnet zero-initialises the
  last BatchNorm of each residual block, ``zero_init_last=True``);
- ``timm.data.create_transform(224, is_training=True)`` for training (RandomResizedCrop with scale
  0.08-1, horizontal flip, colour jitter 0.4, ImageNet normalisation) and ``is_training=False`` for
  validation (Resize 256, CenterCrop 224);
- ``timm.loss.LabelSmoothingCrossEntropy(0.1)`` for training, plain cross-entropy for the
  validation loss (as train.py validates);
- ``timm.optim.create_optimizer_v2(model, "sgd", lr, weight_decay=2e-5, momentum=0.9)`` (train.py's
  defaults; no weight decay on biases and norm weights, timm's ``filter_bias_and_bn``); ``--lr``
  defaults to train.py's rule ``lr_base 0.1 x batch / 256`` (linear for SGD);
- ``timm.scheduler.create_scheduler_v2(optimizer, "cosine", num_epochs=EPOCHS, warmup_epochs=5,
  warmup_lr=1e-5, min_lr=0)`` (train.py's defaults), stepped once per epoch as train.py does
  (``--sched-on-updates``: every optimizer step instead, train.py's option of that name);
- a plain loop: per epoch a train phase, then a validation phase, the best validation accuracy
  kept. fp32, like train.py without ``--amp``.

It prints one JSON object (``--json``; a summary on stderr otherwise) with the same fields as
``benchmarks/plain.py train``: ``train_images_per_second`` (training images / seconds spent in train
phases, validation excluded; each train phase timed from its first batch request to the scheduler's
step after its last batch, as plain.py times it), ``best_val_accuracy``, ``best_epoch`` and the
per-epoch history (lr, losses, accuracies, images and seconds of each phase). The same ``--seed``
gives the same run: Python's, NumPy's and torch's generators are seeded, and the DataLoader's
shuffling and its workers' seeds come from a generator seeded with it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time

# timm train.py's defaults
LR_BASE, LR_BASE_SIZE = 0.1, 256
WEIGHT_DECAY = 2e-5
MOMENTUM = 0.9
WARMUP_EPOCHS = 5
WARMUP_LR = 1e-5
MIN_LR = 0.0
SMOOTHING = 0.1
IMAGE_SIZE = 224


def default_lr(batch_size: int) -> float:
    """train.py's learning rate when ``--lr`` is not given: lr_base x global batch / 256 (linear for SGD)."""
    return LR_BASE * batch_size / LR_BASE_SIZE


def train(args) -> dict:
    import numpy as np
    import timm
    import torch
    from timm.data import create_transform
    from timm.loss import LabelSmoothingCrossEntropy
    from timm.optim import create_optimizer_v2
    from timm.scheduler import create_scheduler_v2
    from torch import nn
    from torchvision import datasets

    started = time.perf_counter()
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)

    train_set = datasets.ImageFolder(os.path.join(args.data, "train"),
                                     create_transform(IMAGE_SIZE, is_training=True))
    val_set = datasets.ImageFolder(os.path.join(args.data, "val"), create_transform(IMAGE_SIZE, is_training=False))
    classes = train_set.classes
    generator = torch.Generator().manual_seed(args.seed)
    train_loader = torch.utils.data.DataLoader(train_set, batch_size=args.batch_size, shuffle=True,
                                               num_workers=args.workers, generator=generator, drop_last=False)
    val_loader = torch.utils.data.DataLoader(val_set, batch_size=args.batch_size, shuffle=False,
                                             num_workers=args.workers)

    model = timm.create_model(args.model, pretrained=False, num_classes=len(classes)).to(device)
    lr = args.lr if args.lr is not None else default_lr(args.batch_size)
    optimizer = create_optimizer_v2(model, opt="sgd", lr=lr, weight_decay=args.weight_decay, momentum=MOMENTUM)
    updates_per_epoch = len(train_loader)
    scheduler, _ = create_scheduler_v2(optimizer, sched="cosine", num_epochs=args.epochs,
                                       warmup_epochs=args.warmup_epochs, warmup_lr=WARMUP_LR, min_lr=MIN_LR,
                                       step_on_epochs=not args.sched_on_updates,
                                       updates_per_epoch=updates_per_epoch)
    train_loss_fn = LabelSmoothingCrossEntropy(smoothing=args.smoothing).to(device)
    val_loss_fn = nn.CrossEntropyLoss().to(device)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    best_acc, best_epoch, history = 0.0, 0, []
    for epoch in range(args.epochs):
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        epoch_start = time.perf_counter()

        # train phase
        phase_start = time.perf_counter()
        model.train()
        running_loss, running_corrects, seen = 0.0, 0, 0
        num_updates = epoch * updates_per_epoch
        for inputs, labels in train_loader:
            inputs, labels = inputs.to(device), labels.to(device)
            outputs = model(inputs)
            loss = train_loss_fn(outputs, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            num_updates += 1
            if args.sched_on_updates:
                scheduler.step_update(num_updates=num_updates)
            running_loss += loss.item() * inputs.size(0)
            running_corrects += int((outputs.argmax(1) == labels).sum())
            seen += inputs.size(0)
        scheduler.step(epoch + 1)
        sync()
        row.update({"train_loss": round(running_loss / seen, 6), "train_accuracy": round(running_corrects / seen, 6),
                    "train_images": seen, "train_seconds": round(time.perf_counter() - phase_start, 4)})

        # validation phase
        phase_start = time.perf_counter()
        model.eval()
        running_loss, running_corrects, seen = 0.0, 0, 0
        with torch.no_grad():
            for inputs, labels in val_loader:
                inputs, labels = inputs.to(device), labels.to(device)
                outputs = model(inputs)
                running_loss += val_loss_fn(outputs, labels).item() * inputs.size(0)
                running_corrects += int((outputs.argmax(1) == labels).sum())
                seen += inputs.size(0)
        sync()
        acc = running_corrects / seen
        row.update({"val_loss": round(running_loss / seen, 6), "val_accuracy": round(acc, 6), "val_images": seen,
                    "val_seconds": round(time.perf_counter() - phase_start, 4),
                    "seconds": round(time.perf_counter() - epoch_start, 4)})
        if acc > best_acc:
            best_acc, best_epoch = acc, epoch + 1
        history.append(row)
        print(f"peer-timm {args.model} epoch {epoch + 1}/{args.epochs}: lr {row['lr']:.5f} train "
              f"{row['train_seconds']:.1f}s loss {row['train_loss']:.3f}, val {row['val_seconds']:.1f}s "
              f"loss {row['val_loss']:.3f} acc {acc:.3f}", file=sys.stderr)

    train_images = sum(r["train_images"] for r in history)
    train_seconds = sum(r["train_seconds"] for r in history)
    return {
        "kind": "peer-timm-train", "model": args.model, "timm": timm.__version__, "data": args.data,
        "classes": classes, "epochs": args.epochs, "batch_size": args.batch_size, "lr": lr,
        "lr_rule": "given" if args.lr is not None else f"{LR_BASE} x batch / {LR_BASE_SIZE}",
        "optimizer": "sgd", "momentum": MOMENTUM, "weight_decay": args.weight_decay, "scheduler": "cosine",
        "warmup_epochs": args.warmup_epochs, "warmup_lr": WARMUP_LR, "min_lr": MIN_LR,
        "sched_on_updates": args.sched_on_updates, "smoothing": args.smoothing,
        "transforms": "timm create_transform(224): train RandomResizedCrop+flip+ColorJitter(0.4), val Resize 256+CenterCrop",
        "workers": args.workers, "seed": args.seed, "device": str(device), "precision": "fp32",
        "threads": torch.get_num_threads(), "train_size": len(train_set), "val_size": len(val_set),
        "train_images_per_second": round(train_images / train_seconds, 3) if train_seconds else None,
        "best_val_accuracy": best_acc, "best_epoch": best_epoch,
        "last_val_accuracy": history[-1]["val_accuracy"] if history else None,
        "history": history, "seconds": round(time.perf_counter() - started, 3),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="ImageFolder tree with train/ and val/")
    parser.add_argument("--model", default="resnet18", help="timm model name [resnet18]")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, help=f"[train.py's rule: {LR_BASE} x batch / {LR_BASE_SIZE}]")
    parser.add_argument("--weight-decay", type=float, default=WEIGHT_DECAY, help=f"[{WEIGHT_DECAY}]")
    parser.add_argument("--warmup-epochs", type=int, default=WARMUP_EPOCHS,
                        help=f"linear warm-up from {WARMUP_LR} [{WARMUP_EPOCHS}, train.py's]")
    parser.add_argument("--sched-on-updates", action="store_true",
                        help="step the schedule every optimizer step instead of every epoch")
    parser.add_argument("--smoothing", type=float, default=SMOOTHING, help=f"label smoothing [{SMOOTHING}]")
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size: at least 1")
    result = train(args)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"best val accuracy {result['best_val_accuracy']:.3f} (epoch {result['best_epoch']}), "
              f"{result['train_images_per_second']} train images/s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
