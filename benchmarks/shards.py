"""Loading speed from WebDataset shards against the same pictures as an image-folder tree.

    python benchmarks/shards.py            # the benchmark's rgb JPEG tree (240 train pictures)
    python benchmarks/shards.py --quick    # the tiny tree of run.py --quick: checks the script

Both sides read the ``rgb`` tree's train split (``benchmarks/data.py``; drawn or reused under
``ROOT``) through cvkit's own pieces, as ``cvkit train`` would: the folder with ``--dataset
imagefolder`` (a shuffled DataLoader), the shards (written once by ``cvkit data shard`` beside the
tree, reused while their manifest is there) with ``--dataset webdataset``; the same transform (the
model's default, with the decode-size hint), batch size and DataLoader workers. Only loading is
timed, no model: the images/s of each epoch, the two sources alternating epoch by epoch. The first
epoch includes starting the workers. On a local disk both sides mostly decode JPEGs, so expect
similar figures; shards pay off where opening many small files is slow (network file systems,
object stores).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import data as bench_data  # noqa: E402


def make_loaders(tree: str, shards: str, *, model: str, batch_size: int, workers: int) -> dict:
    import torch

    from cvkit.build import build_dataset, build_transform, decode_min_side, model_spec
    from cvkit.data import make_loader

    spec = model_spec(model)
    transform = build_transform(spec, train=True)
    loaders = {}
    for name, root, dataset in (("folder", tree, "imagefolder"), ("shards", shards, "webdataset")):
        ds = build_dataset(dataset, root, split="train", transform=transform, min_side=decode_min_side(spec))
        loaders[name] = make_loader(ds, batch_size=batch_size, shuffle=dataset == "imagefolder", workers=workers,
                                    device=torch.device("cpu"))
    return loaders


def epoch_rate(loader, epoch: int) -> tuple[int, float]:
    """(images, images per second) of one pass over ``loader``."""
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)
    start, images = time.perf_counter(), 0
    for batch, _ in loader:
        images += len(batch)
    return images, images / (time.perf_counter() - start)


def shard_tree(tree: str, out: Path, shard_size: int) -> dict:
    """The tree's shards: reused when ``out`` has a manifest, else written (and timed)."""
    from cvkit.commands.shards import write_shards

    if (out / "manifest.json").is_file():
        return {"root": str(out), "created": False}
    start = time.perf_counter()
    manifest = write_shards(tree, str(out), shard_size=shard_size)
    return {"root": str(out), "created": True, "seconds": round(time.perf_counter() - start, 2),
            "train_shards": len(manifest["splits"]["train"]["shards"])}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=".bench-data", help="cache folder of the data [.bench-data]")
    parser.add_argument("--quick", action="store_true", help="the tiny tree of run.py --quick")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per source [3; --quick 2]")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers, both sides [2]")
    parser.add_argument("--batch-size", type=int, default=32, help="[32; --quick 8]")
    parser.add_argument("--shard-size", type=int, default=64, help="pictures per shard [64; --quick 8]")
    parser.add_argument("--model", default="resnet18-finetune", help="whose default transform [resnet18-finetune]")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    epochs = args.epochs or (2 if args.quick else 3)
    batch, shard_size = (8, 8) if args.quick else (args.batch_size, args.shard_size)
    tree = bench_data.build_all(args.root, quick=args.quick, which=("rgb",))["rgb"]["root"]
    shards = shard_tree(tree, Path(tree).parent / f"rgb-shards-{shard_size}", shard_size)
    loaders = make_loaders(tree, shards["root"], model=args.model, batch_size=batch, workers=args.workers)
    rates = {name: [] for name in loaders}
    for epoch in range(epochs):
        for name, loader in loaders.items():
            images, rate = epoch_rate(loader, epoch)
            rates[name].append(round(rate, 1))
    result = {"tree": tree, "shards": shards, "images": images, "workers": args.workers, "batch_size": batch,
              "images_per_second": rates,
              "best_ratio": round(max(rates["shards"]) / max(rates["folder"]), 3)}
    if args.json:
        print(json.dumps(result, indent=1))
        return 0
    print(f"{images} train pictures of {tree}, batch {batch}, {args.workers} workers, images/s per epoch:")
    for name, values in rates.items():
        print(f"  {name:7} " + "  ".join(f"{v:8.1f}" for v in values) + f"   best {max(values):.1f}")
    print(f"  shards / folder (best epochs): {result['best_ratio']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
