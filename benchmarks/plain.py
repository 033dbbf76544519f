"""The plain chapter code the benchmark compares cvkit with: no cvkit import, fp32, as written.

``python benchmarks/plain.py train DATA --model net|resnet18-frozen|resnet18-finetune ...`` is the
chapter's training: ImageFolder -> DataLoader(shuffle=True) -> model -> CrossEntropyLoss ->
SGD(lr, momentum=0.9) -> StepLR(step_size=7, gamma=0.1), and its ``train_model`` (a train phase then
a val phase per epoch, ``scheduler.step()`` after the train phase, the best validation accuracy's
weights kept). Models and transforms are the chapter's:

- ``net``: the "neural networks" chapter's Net (1x32x32 input), with
  ``Grayscale(), ToTensor(), Normalize((0.5,), (0.5,))``;
- ``resnet18-finetune``: ``torchvision.models.resnet18(weights=None)`` with a new ``fc``, every
  parameter in the optimizer (the chapter's ``model_ft``);
- ``resnet18-frozen``: the chapter's ``model_conv``: ``requires_grad = False`` for every backbone
  parameter, a new ``fc``, the optimizer over ``model_conv.fc.parameters()`` only. (As written in
  the chapter, ``model.train()`` puts the frozen backbone's BatchNorm layers in training mode too.)
- ``--backbone PATH`` (every model but ``net``): the backbone starts from a torchvision state dict of
  that architecture (with its own 1000-way head, e.g. the one of ``benchmarks/backbone.py``), loaded
  the way the chapter loads ImageNet weights: ``load_state_dict`` into the model, then the new head;
- ``--transforms chapter`` (resnets): train ``RandomResizedCrop(224), RandomHorizontalFlip()``,
  val ``Resize(256), CenterCrop(224)``, then ``ToTensor()`` and ImageNet ``Normalize``;
  ``--transforms plain``: ``Resize(224), CenterCrop(224)`` for both, deterministic, like cvkit's
  ``plain``.

It prints one JSON object: ``train_images_per_second`` (training images / seconds spent in train
phases; validation excluded), ``best_val_accuracy``, and per epoch the images and seconds of each
phase.

``python benchmarks/plain.py predict FOLDER --checkpoint CK --out PRED.json`` is a plain torchvision
predict script: it rebuilds the model from a cvkit checkpoint's state dict, then goes through the
JPEGs in the main process (no DataLoader), by default one at a time (``--batch-size 1``, as a typical
script: open, transform, ``unsqueeze(0)``, forward under ``torch.no_grad()`` in eval mode, argmax),
or ``--batch-size N`` at a time (the transformed images stacked into one fp32 batch), writes the
top-1 class per image to PRED.json and prints its timing as JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import sys
import time

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def make_net(num_classes: int):
    """The chapter's Net (a copy, so the baseline never changes with cvkit's code)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 6, 3)
            self.conv2 = nn.Conv2d(6, 16, 3)
            self.fc1 = nn.Linear(16 * 6 * 6, 120)
            self.fc2 = nn.Linear(120, 84)
            self.fc3 = nn.Linear(84, num_classes)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
            x = F.max_pool2d(F.relu(self.conv2(x)), 2)
            x = torch.flatten(x, 1)
            x = F.relu(self.fc1(x))
            x = F.relu(self.fc2(x))
            return self.fc3(x)

    return Net()


def make_resnet(num_classes: int, frozen: bool, backbone: str | None = None):
    import torch
    from torch import nn
    from torchvision import models

    model = models.resnet18(weights=None)
    if backbone:  # as the chapter's resnet18(weights=...): the whole net's weights, its fc replaced below
        model.load_state_dict(torch.load(backbone, map_location="cpu", weights_only=True))
    if frozen:
        for param in model.parameters():
            param.requires_grad = False
    num_ftrs = model.fc.in_features
    model.fc = nn.Linear(num_ftrs, num_classes)  # new layers have requires_grad=True
    return model


# two more torchvision families, written as a user of torchvision would: the model from
# torchvision.models, requires_grad=False for a frozen backbone, its last classifier layer replaced
ZOO = {"mobilenet_v3_small-frozen": ("mobilenet_v3_small", True), "convnext_tiny-finetune": ("convnext_tiny", False)}
RESIZE = {"mobilenet_v3_small-frozen": 256, "convnext_tiny-finetune": 236}  # their weights' eval presets


def make_torchvision(model: str, num_classes: int, backbone: str | None = None):
    """(model, the parameters to optimise) for a ZOO name."""
    import torch
    from torch import nn
    from torchvision import models

    name, frozen = ZOO[model]
    net = models.get_model(name, weights=None)
    if backbone:  # as get_model(name, weights=...): the whole net's weights, its last layer replaced below
        net.load_state_dict(torch.load(backbone, map_location="cpu", weights_only=True))
    if frozen:
        for param in net.parameters():
            param.requires_grad = False
    net.classifier[-1] = nn.Linear(net.classifier[-1].in_features, num_classes)
    return net, (net.classifier[-1].parameters() if frozen else net.parameters())


def make_transforms(model: str, transforms: str):
    from torchvision import transforms as T

    if model == "net":
        tf = T.Compose([T.Grayscale(), T.ToTensor(), T.Normalize((0.5,), (0.5,))])
        return {"train": tf, "val": tf}
    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    if transforms == "plain":
        tf = T.Compose([T.Resize(224), T.CenterCrop(224), T.ToTensor(), normalize])
        return {"train": tf, "val": tf}
    return {
        "train": T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), normalize]),
        "val": T.Compose([T.Resize(RESIZE.get(model, 256)), T.CenterCrop(224), T.ToTensor(), normalize]),
    }


def train(args) -> dict:
    import torch
    from torch import nn, optim
    from torch.optim import lr_scheduler
    from torchvision import datasets

    started = time.perf_counter()
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    data_transforms = make_transforms(args.model, args.transforms)
    image_datasets = {x: datasets.ImageFolder(os.path.join(args.data, x), data_transforms[x])
                      for x in ["train", "val"]}
    dataloaders = {x: torch.utils.data.DataLoader(image_datasets[x], batch_size=args.batch_size,
                                                  shuffle=True, num_workers=args.workers)
                   for x in ["train", "val"]}
    dataset_sizes = {x: len(image_datasets[x]) for x in ["train", "val"]}
    class_names = image_datasets["train"].classes

    if args.model == "net":
        if args.backbone:
            raise SystemExit("--backbone: for the resnet models only")
        model = make_net(len(class_names))
        params = model.parameters()
    elif args.model == "resnet18-finetune":
        model = make_resnet(len(class_names), frozen=False, backbone=args.backbone)
        params = model.parameters()
    elif args.model == "resnet18-frozen":
        model = make_resnet(len(class_names), frozen=True, backbone=args.backbone)
        params = model.fc.parameters()  # only the final layer is optimized
    elif args.model in ZOO:
        model, params = make_torchvision(args.model, len(class_names), backbone=args.backbone)
    else:
        raise SystemExit(f"unknown model {args.model!r}")
    model = model.to(device)
    criterion = nn.CrossEntropyLoss()
    optimizer = optim.SGD(params, lr=args.lr, momentum=0.9)
    scheduler = lr_scheduler.StepLR(optimizer, step_size=7, gamma=0.1)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    # the chapter's train_model
    best_model_wts = copy.deepcopy(model.state_dict())
    best_acc, best_epoch = 0.0, 0
    history = []
    for epoch in range(args.epochs):
        row = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        epoch_start = time.perf_counter()
        for phase in ["train", "val"]:
            phase_start = time.perf_counter()
            if phase == "train":
                model.train()
            else:
                model.eval()
            running_loss = 0.0
            running_corrects = 0
            for inputs, labels in dataloaders[phase]:
                inputs = inputs.to(device)
                labels = labels.to(device)
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    outputs = model(inputs)
                    _, preds = torch.max(outputs, 1)
                    loss = criterion(outputs, labels)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                running_loss += loss.item() * inputs.size(0)
                running_corrects += torch.sum(preds == labels.data)
            if phase == "train":
                scheduler.step()
            sync()
            epoch_loss = running_loss / dataset_sizes[phase]
            epoch_acc = float(running_corrects.double() / dataset_sizes[phase])
            row.update({f"{phase}_loss": round(epoch_loss, 6), f"{phase}_accuracy": round(epoch_acc, 6),
                        f"{phase}_images": dataset_sizes[phase],
                        f"{phase}_seconds": round(time.perf_counter() - phase_start, 4)})
            if phase == "val" and epoch_acc > best_acc:
                best_acc, best_epoch = epoch_acc, epoch + 1
                best_model_wts = copy.deepcopy(model.state_dict())
        row["seconds"] = round(time.perf_counter() - epoch_start, 4)
        history.append(row)
        print(f"plain {args.model} epoch {epoch + 1}/{args.epochs}: train {row['train_seconds']:.1f}s "
              f"val {row['val_seconds']:.1f}s val acc {row['val_accuracy']:.3f}", file=sys.stderr)
    model.load_state_dict(best_model_wts)

    train_images = sum(r["train_images"] for r in history)
    train_seconds = sum(r["train_seconds"] for r in history)
    return {
        "kind": "plain-train", "model": args.model, "transforms": args.transforms if args.model != "net" else "chapter",
        "data": args.data, "classes": class_names, "epochs": args.epochs, "batch_size": args.batch_size,
        "lr": args.lr, "workers": args.workers, "seed": args.seed, "backbone": args.backbone,
        "device": str(device), "precision": "fp32",
        "threads": torch.get_num_threads(), "train_size": dataset_sizes["train"], "val_size": dataset_sizes["val"],
        "train_images_per_second": round(train_images / train_seconds, 3) if train_seconds else None,
        "best_val_accuracy": best_acc, "best_epoch": best_epoch,
        "last_val_accuracy": history[-1]["val_accuracy"] if history else None,
        "history": history, "seconds": round(time.perf_counter() - started, 3),
    }


def predict(args) -> dict:
    import glob

    import torch
    from PIL import Image
    from torchvision import transforms as T

    started = time.perf_counter()
    device = torch.device(args.device)
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
    classes = list(ckpt["classes"])
    name = ckpt["model"]["name"]
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["model_state"].items()}
    if name == "net":
        model = make_net(len(classes))
        tf = T.Compose([T.Grayscale(), T.Resize(32), T.CenterCrop(32), T.ToTensor(), T.Normalize((0.5,), (0.5,))])
    else:
        model = make_resnet(len(classes), frozen=False)
        tf = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    model.load_state_dict(state)
    model = model.to(device)
    model.eval()
    paths = sorted(glob.glob(os.path.join(args.folder, "**", "*.jpg"), recursive=True))
    if not paths:
        raise SystemExit(f"{args.folder}: no .jpg files")
    loop_start = time.perf_counter()
    top1 = {}
    with torch.no_grad():
        for start in range(0, len(paths), args.batch_size):
            chunk = paths[start:start + args.batch_size]
            batch = torch.stack([tf(Image.open(p).convert("RGB")) for p in chunk]).to(device)
            outputs = model(batch)
            _, preds = torch.max(outputs, 1)
            for p, i in zip(chunk, preds.tolist()):
                top1[os.path.abspath(p)] = classes[i]
    loop_seconds = time.perf_counter() - loop_start
    if args.out:
        with open(args.out, "w") as f:
            json.dump(top1, f, indent=0)
    return {"kind": "plain-predict", "model": name, "images": len(paths), "batch_size": args.batch_size,
            "device": str(device), "precision": "fp32", "threads": torch.get_num_threads(),
            "loop_seconds": round(loop_seconds, 4),
            "loop_images_per_second": round(len(paths) / loop_seconds, 3),
            "seconds_in_process": round(time.perf_counter() - started, 4), "predictions": args.out}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="the chapter's training loop")
    t.add_argument("data")
    t.add_argument("--model", default="net", choices=["net", "resnet18-frozen", "resnet18-finetune", *ZOO])
    t.add_argument("--transforms", default="chapter", choices=["chapter", "plain"])
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=0.01)
    t.add_argument("--workers", type=int, default=0)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    t.add_argument("--backbone", metavar="PATH",
                   help="resnets: start from this resnet18 state dict (its fc is replaced) [random weights]")
    p = sub.add_parser("predict", help="a plain torchvision predict script")
    p.add_argument("folder")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", help="write {path: top-1 class} here")
    p.add_argument("--batch-size", type=int, default=1, help="images per forward pass [1: one at a time]")
    p.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    result = train(args) if args.command == "train" else predict(args)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
